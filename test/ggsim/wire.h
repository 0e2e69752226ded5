/*
 * The messages between ggsim.so (the libc geom-rowr loads) and the simulated
 * kernel's process (ggsim-kernel), over a Unix stream socket. Each ioctl is
 * one connection: a request, then one reply. A START's connection stays
 * open while the kernel sleeps; one more byte from the caller (WIRE_SIGNAL)
 * or the connection closing (the calling thread's process ended) ends the
 * sleep, as a signal or the process's exit ends msleep(PCATCH) in FreeBSD.
 *
 * A /dev/ggctl descriptor is a connection of its own (WIRE_SESSION) that
 * stays open until it is closed: the kernel's process lives while one is
 * open or a provider exists.
 */
#ifndef GGSIM_WIRE_H
#define GGSIM_WIRE_H

#include <stddef.h>
#include <stdint.h>

enum wire_op {
	/* arg: the ioctl's request; then the struct; for DONE of a READ, its data. */
	WIRE_IOCTL = 1,
	/* No arg; the reply's status is 0 while the kernel takes new sessions. */
	WIRE_SESSION = 2,
	/* The reply carries kern.geom.confxml. */
	WIRE_CONFXML = 3,
	/* A bio queued as a GEOM consumer would (tests): struct wire_submit, then WRITE data. */
	WIRE_SUBMIT = 4,
};

/* The one byte a caller sends while its START sleeps, when a signal interrupted it. */
#define WIRE_SIGNAL 0x53

struct wire_request {
	uint32_t op;
	uint32_t length; /* bytes that follow */
	uint64_t arg;
};

struct wire_reply {
	int32_t error; /* 0, or the errno the ioctl fails with */
	uint32_t length; /* bytes that follow */
};

struct wire_submit {
	int32_t unit;
	uint32_t cmd;
	int64_t offset;
	int64_t length;
};

/* wire.c: 0 once all n bytes went or came, -1 on an error or the end of the stream. */
int wire_read_full(int fd, void *buf, size_t n);
int wire_write_full(int fd, const void *buf, size_t n);

#endif

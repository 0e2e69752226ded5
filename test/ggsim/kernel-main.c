/*
 * The simulated kernel's process: ggsim-kernel SOCKET [MOUNTPOINT].
 * ggsim.so starts it on the first open of /dev/ggctl and talks to it over
 * SOCKET (wire.h); it shows each provider as MOUNTPOINT/NAME (fuse-export.c)
 * and lives, like FreeBSD's kernel, past the daemons that made its
 * providers: it ends once no provider exists and no /dev/ggctl descriptor
 * is open. SOCKET.pid holds its pid meanwhile.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "g_gate_abi.h"
#include "ggsim.h"
#include "wire.h"

static int listen_fd = -1;

static void
reply(int fd, int32_t error, const void *a, uint32_t alen, const void *b, uint32_t blen)
{
	struct wire_reply r = { .error = error, .length = alen + blen };

	if (wire_write_full(fd, &r, sizeof(r)) == 0 && wire_write_full(fd, a, alen) == 0)
		(void)wire_write_full(fd, b, blen);
}

/* A signal byte from the caller, or its end: what ends msleep(PCATCH). */
static int
caller_interrupted(void *ctx)
{
	struct pollfd p = { .fd = *(int *)ctx, .events = POLLIN };

	return poll(&p, 1, 0) > 0;
}

/* The struct a ggctl command takes, or 0 for a request that is not one. */
static size_t
struct_size(unsigned long request)
{
	if (request == G_GATE_CMD_CREATE)
		return sizeof(struct g_gate_ctl_create);
	if (request == G_GATE_CMD_DESTROY)
		return sizeof(struct g_gate_ctl_destroy);
	if (request == G_GATE_CMD_CANCEL)
		return sizeof(struct g_gate_ctl_cancel);
	if (request == G_GATE_CMD_MODIFY)
		return sizeof(struct g_gate_ctl_modify);
	if (request == G_GATE_CMD_START || request == G_GATE_CMD_DONE)
		return sizeof(struct g_gate_ctl_io);
	return 0;
}

static void
serve_ioctl(int fd, unsigned long request, char *payload, uint32_t length)
{
	struct g_gate_ctl_io *io = (struct g_gate_ctl_io *)payload;
	size_t size = struct_size(request);
	char *data = NULL;
	uint32_t out = 0;
	int error;

	if (length < size) {
		reply(fd, EFAULT, NULL, 0, NULL, 0);
		return;
	}
	if (request == G_GATE_CMD_START) {
		/* The caller's buffer is gctl_length bytes: a WRITE's data comes back in the reply. */
		data = malloc(io->gctl_length > 0 ? (size_t)io->gctl_length : 1);
		if (data == NULL) {
			reply(fd, ENOMEM, NULL, 0, NULL, 0);
			return;
		}
		io->gctl_data = data;
		error = ggsim_ctl_ioctl(request, io, caller_interrupted, &fd);
		if (error == 0 && io->gctl_error == 0 && io->gctl_cmd == BIO_WRITE)
			out = (uint32_t)io->gctl_length;
		reply(fd, error, io, sizeof(*io), data, out);
		free(data);
		return;
	}
	if (request == G_GATE_CMD_DONE) {
		/* A READ's data follows: at most what the caller sent reaches the bio. */
		if (io->gctl_length > (int64_t)(length - size))
			io->gctl_length = (int64_t)(length - size);
		io->gctl_data = payload + size;
	}
	error = ggsim_ctl_ioctl(request, payload, caller_interrupted, &fd);
	/* The struct goes back: CREATE and CANCEL write the unit into it. */
	reply(fd, error, payload, (uint32_t)size, NULL, 0);
}

static void
serve_submit(int fd, char *payload, uint32_t length)
{
	struct wire_submit s;
	char *data;
	int error;

	if (length < sizeof(s)) {
		reply(fd, EINVAL, NULL, 0, NULL, 0);
		return;
	}
	memcpy(&s, payload, sizeof(s));
	if (s.cmd == BIO_READ) {
		data = calloc(1, s.length > 0 ? (size_t)s.length : 1);
		error = data == NULL ? ENOMEM : ggsim_unit_io(s.unit, s.cmd, s.offset, s.length, data);
		reply(fd, error, data, error == 0 ? (uint32_t)s.length : 0, NULL, 0);
		free(data);
		return;
	}
	error = ggsim_unit_io(s.unit, s.cmd, s.offset, s.length, payload + sizeof(s));
	reply(fd, error, NULL, 0, NULL, 0);
}

static void *
serve_connection(void *arg)
{
	int fd = (int)(intptr_t)arg;
	struct wire_request r;
	char *payload = NULL;
	char byte;

	if (wire_read_full(fd, &r, sizeof(r)) != 0)
		goto out;
	payload = malloc(r.length > 0 ? r.length : 1);
	if (payload == NULL || wire_read_full(fd, payload, r.length) != 0)
		goto out;
	switch (r.op) {
	case WIRE_IOCTL:
		serve_ioctl(fd, (unsigned long)r.arg, payload, r.length);
		break;
	case WIRE_SESSION: {
		int error = ggsim_session_open();
		reply(fd, error, NULL, 0, NULL, 0);
		if (error != 0)
			break;
		/* Open until the descriptor is closed, by close(2) or the process's end. */
		for (;;) {
			ssize_t n = read(fd, &byte, 1);
			if (n == 0 || (n < 0 && errno != EINTR))
				break;
		}
		ggsim_session_close();
		break;
	}
	case WIRE_CONFXML: {
		char *xml = ggsim_confxml();
		reply(fd, xml == NULL ? ENOMEM : 0, xml, xml == NULL ? 0 : (uint32_t)strlen(xml), NULL, 0);
		free(xml);
		break;
	}
	case WIRE_SUBMIT:
		serve_submit(fd, payload, r.length);
		break;
	default:
		reply(fd, EINVAL, NULL, 0, NULL, 0);
	}
out:
	free(payload);
	close(fd);
	return NULL;
}

static void *
accept_loop(void *arg)
{
	pthread_attr_t detached;

	(void)arg;
	pthread_attr_init(&detached);
	pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
	for (;;) {
		pthread_t thread;
		int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return NULL;
		}
		if (pthread_create(&thread, &detached, serve_connection, (void *)(intptr_t)fd) != 0)
			close(fd);
	}
}

int
main(int argc, char **argv)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	const char *mountpoint = argc > 2 && argv[2][0] != '\0' ? argv[2] : NULL;
	char pidfile[sizeof(addr.sun_path) + 8];
	pthread_t acceptor;
	FILE *f;

	if (argc < 2 || strlen(argv[1]) >= sizeof(addr.sun_path)) {
		fprintf(stderr, "usage: ggsim-kernel SOCKET [MOUNTPOINT]\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (mountpoint != NULL && ggsim_fuse_start(mountpoint) != 0)
		return 1;
	strcpy(addr.sun_path, argv[1]);
	snprintf(pidfile, sizeof(pidfile), "%s.pid", argv[1]);
	/* The starter holds SOCKET.lock: a socket file here is a dead kernel's. */
	unlink(addr.sun_path);
	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 ||
	    listen(listen_fd, 128) != 0) {
		perror("ggsim-kernel: listen");
		ggsim_fuse_stop();
		return 1;
	}
	if ((f = fopen(pidfile, "w")) != NULL) {
		fprintf(f, "%d\n", (int)getpid());
		fclose(f);
	}
	if (pthread_create(&acceptor, NULL, accept_loop, NULL) != 0)
		return 1;
	ggsim_wait_until_idle();
	unlink(addr.sun_path);
	unlink(pidfile);
	shutdown(listen_fd, SHUT_RDWR);
	close(listen_fd);
	pthread_join(acceptor, NULL);
	ggsim_fuse_stop();
	return 0;
}

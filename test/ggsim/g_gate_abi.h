/*
 * GEOM Gate interface version 3 as userspace sees it, declared from the field
 * list in docs/ggate-abi.md with fixed-width types (LP64 layout), and
 * FreeBSD's _IOWR written out. Shared by the ggctl simulator and by the test
 * that checks koffi's layouts against the C compiler's.
 */
#ifndef GGSIM_G_GATE_ABI_H
#define GGSIM_G_GATE_ABI_H

#include <stdint.h>

#define G_GATE_VERSION 3
#define G_GATE_NAME_MAX 255
#define G_GATE_INFOSIZE 2048

#define G_GATE_FLAG_READONLY 0x0001
#define G_GATE_FLAG_WRITEONLY 0x0002

#define G_GATE_UNIT_AUTO (-1)
#define G_GATE_NAME_GIVEN (-2)

/* sys/bio.h */
#define BIO_READ 1
#define BIO_WRITE 2
#define BIO_DELETE 3
#define BIO_GETATTR 4
#define BIO_FLUSH 5
#define BIO_SPEEDUP 10

struct g_gate_ctl_create {
	uint32_t gctl_version;
	int64_t gctl_mediasize;
	uint32_t gctl_sectorsize;
	uint32_t gctl_flags;
	uint32_t gctl_maxcount;
	uint32_t gctl_timeout;
	char gctl_name[G_GATE_NAME_MAX];
	char gctl_info[G_GATE_INFOSIZE];
	char gctl_readprov[G_GATE_NAME_MAX];
	int64_t gctl_readoffset;
	int32_t gctl_unit;
};

/* What G_GATE_CMD_MODIFY changes (g_gate.h). */
#define GG_MODIFY_MEDIASIZE 0x01
#define GG_MODIFY_INFO 0x02
#define GG_MODIFY_READPROV 0x04
#define GG_MODIFY_READOFFSET 0x08

struct g_gate_ctl_modify {
	uint32_t gctl_version;
	int32_t gctl_unit;
	uint32_t gctl_modify;
	int64_t gctl_mediasize;
	char gctl_info[G_GATE_INFOSIZE];
	char gctl_readprov[G_GATE_NAME_MAX];
	int64_t gctl_readoffset;
};

struct g_gate_ctl_destroy {
	uint32_t gctl_version;
	int32_t gctl_unit;
	int32_t gctl_force;
	char gctl_name[G_GATE_NAME_MAX];
};

struct g_gate_ctl_cancel {
	uint32_t gctl_version;
	int32_t gctl_unit;
	uint64_t gctl_seq;
	char gctl_name[G_GATE_NAME_MAX];
};

struct g_gate_ctl_io {
	uint32_t gctl_version;
	int32_t gctl_unit;
	uint64_t gctl_seq;
	uint32_t gctl_cmd;
	int64_t gctl_offset;
	int64_t gctl_length;
	void *gctl_data;
	int32_t gctl_error;
};

/* sys/sys/ioccom.h: _IOWR with FreeBSD's direction bits. */
#define GG_IOCPARM_MASK 0x1fffUL
#define GG_IOC_INOUT 0xc0000000UL
#define GG_IOWR(g, n, t) \
	(GG_IOC_INOUT | ((sizeof(t) & GG_IOCPARM_MASK) << 16) | ((unsigned long)(g) << 8) | (n))

#define G_GATE_CMD_CREATE GG_IOWR('m', 0, struct g_gate_ctl_create)
#define G_GATE_CMD_MODIFY GG_IOWR('m', 1, struct g_gate_ctl_modify)
#define G_GATE_CMD_DESTROY GG_IOWR('m', 2, struct g_gate_ctl_destroy)
#define G_GATE_CMD_CANCEL GG_IOWR('m', 3, struct g_gate_ctl_cancel)
#define G_GATE_CMD_START GG_IOWR('m', 4, struct g_gate_ctl_io)
#define G_GATE_CMD_DONE GG_IOWR('m', 5, struct g_gate_ctl_io)

/* sys/sys/disk.h: _IOR with FreeBSD's IOC_OUT. */
#define DIOCGSECTORSIZE 0x40046480UL
#define DIOCGMEDIASIZE 0x40086481UL
/* _IO('d', 135) and _IOW('d', 136, off_t[2]), with IOC_VOID and IOC_IN. */
#define DIOCGFLUSH 0x20006487UL
#define DIOCGDELETE 0x80106488UL

/*
 * FreeBSD's errno values where they differ from Linux's (1..34 agree):
 * gctl_error and DONE's error carry FreeBSD numbers.
 */
#define FREEBSD_EAGAIN 35
#define FREEBSD_EOPNOTSUPP 45
#define FREEBSD_ECANCELED 85

#endif

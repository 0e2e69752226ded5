/*
 * The libc entry points geom-rowr loads through koffi when
 * GEOM_ROWR_LIBC names this library: open, ioctl and close. /dev/ggctl and
 * its descriptors go to the simulated kernel; everything else goes to the
 * real libc, with FreeBSD's disk ioctls answered from Linux's for block
 * devices, so that md-style sizing works on loop devices.
 *
 * No _FILE_OFFSET_BITS here: with it, glibc's headers would rename the
 * open defined below to open64.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "g_gate_abi.h"
#include "ggsim.h"

#define EXPORT __attribute__((visibility("default")))

/* <linux/fs.h> */
#define BLKSSZGET 0x1268UL
#define BLKGETSIZE64 0x80081272UL
#define BLKDISCARD 0x1277UL

/* How often each of FreeBSD's disk ioctls reached a block device, for tests. */
static unsigned long disk_flushes, disk_deletes;

static int (*real_open)(const char *, int, ...);
static int (*real_ioctl)(int, unsigned long, ...);
static int (*real_close)(int);

__attribute__((constructor)) static void
find_real_libc(void)
{
	real_open = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, "open");
	real_ioctl = (int (*)(int, unsigned long, ...))dlsym(RTLD_NEXT, "ioctl");
	real_close = (int (*)(int))dlsym(RTLD_NEXT, "close");
}

EXPORT int
open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	if (strcmp(path, "/dev/ggctl") == 0)
		return ggsim_ctl_open();
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return real_open(path, flags, mode);
}

/*
 * FreeBSD's disk ioctls on a Linux block device: the sizes from Linux's,
 * DIOCGFLUSH as fdatasync (which sends Linux's cache flush; with
 * GGSIM_DISK_NO_CACHE set it fails EOPNOTSUPP, as on a disk without a write
 * cache) and DIOCGDELETE as BLKDISCARD.
 */
static int
disk_ioctl(int fd, unsigned long request, void *arg)
{
	struct stat st;

	if (fstat(fd, &st) != 0)
		return -1;
	if (!S_ISBLK(st.st_mode)) {
		errno = ENOTTY;
		return -1;
	}
	if (request == DIOCGMEDIASIZE)
		return real_ioctl(fd, BLKGETSIZE64, arg);
	if (request == DIOCGFLUSH) {
		__atomic_add_fetch(&disk_flushes, 1, __ATOMIC_SEQ_CST);
		if (getenv("GGSIM_DISK_NO_CACHE") != NULL) {
			errno = EOPNOTSUPP;
			return -1;
		}
		return fdatasync(fd);
	}
	if (request == DIOCGDELETE) {
		const int64_t *range = arg;
		uint64_t linux_range[2] = { (uint64_t)range[0], (uint64_t)range[1] };
		__atomic_add_fetch(&disk_deletes, 1, __ATOMIC_SEQ_CST);
		return real_ioctl(fd, BLKDISCARD, linux_range);
	}
	int sectorsize;
	if (real_ioctl(fd, BLKSSZGET, &sectorsize) != 0)
		return -1;
	*(uint32_t *)arg = (uint32_t)sectorsize;
	return 0;
}

/* For tests: how many DIOCGFLUSH (0) or DIOCGDELETE (1) calls a block device got. */
EXPORT unsigned long
ggsim_disk_calls(int which)
{
	return __atomic_load_n(which == 0 ? &disk_flushes : &disk_deletes, __ATOMIC_SEQ_CST);
}

EXPORT int
ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, request);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (ggsim_ctl_is(fd))
		return ggsim_ctl_ioctl(fd, request, arg);
	if (request == DIOCGMEDIASIZE || request == DIOCGSECTORSIZE || request == DIOCGFLUSH ||
	    request == DIOCGDELETE)
		return disk_ioctl(fd, request, arg);
	return real_ioctl(fd, request, arg);
}

EXPORT int
close(int fd)
{
	if (ggsim_ctl_is(fd))
		ggsim_ctl_close(fd);
	return real_close(fd);
}

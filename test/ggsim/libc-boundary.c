/*
 * The libc entry points geom-rowr loads through koffi when GEOM_ROWR_LIBC
 * names this library: open, ioctl, close and sysctlbyname. /dev/ggctl and
 * kern.geom.confxml go to the simulated kernel, a process of its own
 * (kernel-main.c, started here on the first open of /dev/ggctl) reached
 * over $GGSIM_SOCKET, or $GGSIM_MOUNT.sock (wire.h). Everything else goes to
 * the real libc, with FreeBSD's disk ioctls answered from Linux's for block
 * devices, so that md-style sizing works on loop devices.
 *
 * No _FILE_OFFSET_BITS here: with it, glibc's headers would rename the
 * open defined below to open64.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "g_gate_abi.h"
#include "wire.h"

#define EXPORT __attribute__((visibility("default")))

/* <linux/fs.h> */
#define BLKSSZGET 0x1268UL
#define BLKGETSIZE64 0x80081272UL
#define BLKDISCARD 0x1277UL

/* How long a kernel just started gets to take connections. */
#define KERNEL_START_SECONDS 10
/* An empty mesh, for when no simulated kernel runs: it has no providers. */
#define EMPTY_MESH "<mesh>\n</mesh>\n"

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

/* The open /dev/ggctl descriptors: each a session with the kernel. */
#define MAX_CTL_FDS 64
static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static int ctl_fds[MAX_CTL_FDS];
static int ctl_fd_count;

static int
ctl_is(int fd)
{
	int found = 0;

	pthread_mutex_lock(&ctl_lock);
	for (int i = 0; i < ctl_fd_count && !found; i++)
		found = ctl_fds[i] == fd;
	pthread_mutex_unlock(&ctl_lock);
	return found;
}

static int
ctl_forget(int fd)
{
	int found = 0;

	pthread_mutex_lock(&ctl_lock);
	for (int i = 0; i < ctl_fd_count; i++) {
		if (ctl_fds[i] == fd) {
			ctl_fds[i] = ctl_fds[--ctl_fd_count];
			found = 1;
			break;
		}
	}
	pthread_mutex_unlock(&ctl_lock);
	return found;
}

/* $GGSIM_SOCKET, else $GGSIM_MOUNT.sock; 0, or -1 when neither is set. */
static int
kernel_socket(struct sockaddr_un *addr)
{
	const char *explicit = getenv("GGSIM_SOCKET");
	const char *mount = getenv("GGSIM_MOUNT");
	int n;

	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	if (explicit != NULL && explicit[0] != '\0')
		n = snprintf(addr->sun_path, sizeof(addr->sun_path), "%s", explicit);
	else if (mount != NULL && mount[0] != '\0')
		n = snprintf(addr->sun_path, sizeof(addr->sun_path), "%s.sock", mount);
	else
		return -1;
	return n > 0 && (size_t)n < sizeof(addr->sun_path) ? 0 : -1;
}

static int
connect_kernel(void)
{
	struct sockaddr_un addr;
	int fd;

	if (kernel_socket(&addr) != 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		real_close(fd);
		return -1;
	}
	return fd;
}

/* ggsim-kernel, next to this library; started in a session of its own, its output to /dev/null. */
static int
spawn_kernel(const char *socket_path)
{
	Dl_info self;
	char library[PATH_MAX], kernel[PATH_MAX];
	const char *mount = getenv("GGSIM_MOUNT");
	const char *log = getenv("GGSIM_LOG");
	pid_t child;

	if (dladdr((void *)spawn_kernel, &self) == 0 || self.dli_fname == NULL)
		return -1;
	snprintf(library, sizeof(library), "%s", self.dli_fname);
	snprintf(kernel, sizeof(kernel), "%s/ggsim-kernel", dirname(library));
	child = fork();
	if (child < 0)
		return -1;
	if (child == 0) {
		/* Only async-signal-safe calls from here: this process has other threads. */
		if (fork() == 0) {
			int null = real_open("/dev/null", O_RDWR);
			int err = log != NULL ? real_open(log, O_WRONLY | O_APPEND | O_CREAT, 0600) : null;
			setsid();
			dup2(null, 0);
			dup2(null, 1);
			dup2(err >= 0 ? err : null, 2);
			close_range(3, ~0U, 0);
			execl(kernel, kernel, socket_path, mount != NULL ? mount : "", (char *)NULL);
			_exit(127);
		}
		_exit(0);
	}
	waitpid(child, NULL, 0);
	return 0;
}

/* A connection to the kernel, started first if none runs (one starter at a time). */
static int
connect_or_start_kernel(void)
{
	struct sockaddr_un addr;
	char lock_path[sizeof(addr.sun_path) + 8];
	int fd = connect_kernel(), lock_fd;

	if (fd >= 0 || kernel_socket(&addr) != 0)
		return fd;
	snprintf(lock_path, sizeof(lock_path), "%s.lock", addr.sun_path);
	lock_fd = real_open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lock_fd < 0)
		return -1;
	flock(lock_fd, LOCK_EX);
	fd = connect_kernel();
	if (fd < 0 && spawn_kernel(addr.sun_path) == 0) {
		for (int i = 0; i < KERNEL_START_SECONDS * 100 && fd < 0; i++) {
			usleep(10000);
			fd = connect_kernel();
		}
	}
	real_close(lock_fd);
	return fd;
}

static int
send_request(int fd, uint32_t op, uint64_t arg, const void *a, size_t alen, const void *b, size_t blen)
{
	struct wire_request r = { .op = op, .length = (uint32_t)(alen + blen), .arg = arg };

	if (wire_write_full(fd, &r, sizeof(r)) != 0 || wire_write_full(fd, a, alen) != 0)
		return -1;
	return wire_write_full(fd, b, blen);
}

/*
 * Waits for the reply to a request that may sleep (START): a signal for
 * this thread interrupts poll(2) whatever SA_RESTART says, and is passed
 * on, as it would interrupt the kernel's msleep(PCATCH).
 */
static int
await_reply(int fd, struct wire_reply *r)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char signal_byte = WIRE_SIGNAL;

	while (poll(&p, 1, -1) < 0) {
		if (errno != EINTR)
			return -1;
		(void)wire_write_full(fd, &signal_byte, 1);
	}
	return wire_read_full(fd, r, sizeof(*r));
}

/* A ggctl ioctl, forwarded: the struct out, the struct (and a WRITE's data) back. */
static int
ctl_ioctl(unsigned long request, void *arg)
{
	size_t size = request == G_GATE_CMD_CREATE ? sizeof(struct g_gate_ctl_create)
	    : request == G_GATE_CMD_DESTROY        ? sizeof(struct g_gate_ctl_destroy)
	    : request == G_GATE_CMD_CANCEL         ? sizeof(struct g_gate_ctl_cancel)
	    : request == G_GATE_CMD_MODIFY         ? sizeof(struct g_gate_ctl_modify)
	    : request == G_GATE_CMD_START || request == G_GATE_CMD_DONE ? sizeof(struct g_gate_ctl_io)
	                                           : 0;
	struct g_gate_ctl_io *io = arg;
	int is_io = request == G_GATE_CMD_START || request == G_GATE_CMD_DONE;
	void *user_data = is_io ? io->gctl_data : NULL;
	size_t data_out = request == G_GATE_CMD_DONE && io->gctl_cmd == BIO_READ && io->gctl_error == 0 ? (size_t)io->gctl_length : 0;
	struct wire_reply r;
	int fd = connect_kernel(), error = EIO;

	if (fd < 0) {
		errno = ENXIO;
		return -1;
	}
	if (send_request(fd, WIRE_IOCTL, request, arg, size, user_data, data_out) != 0 || await_reply(fd, &r) != 0 ||
	    r.length < (r.error == 0 ? size : 0) || wire_read_full(fd, arg, r.length < size ? r.length : size) != 0)
		goto out;
	if (is_io)
		io->gctl_data = user_data;
	if (r.length > size && wire_read_full(fd, user_data, r.length - size) != 0)
		goto out;
	error = r.error;
out:
	real_close(fd);
	if (error != 0) {
		errno = error;
		return -1;
	}
	return 0;
}

EXPORT int
open(const char *path, int flags, ...)
{
	mode_t mode = 0;

	if (strcmp(path, "/dev/ggctl") == 0) {
		/* /dev/ggctl is mode 0600 root. */
		if (geteuid() != 0) {
			errno = EACCES;
			return -1;
		}
		/* A kernel on its way out refuses a session: wait for it to go, then start another. */
		for (int attempt = 0; attempt < 100; attempt++) {
			struct wire_reply r;
			int fd = connect_or_start_kernel();
			if (fd < 0)
				break;
			if (send_request(fd, WIRE_SESSION, 0, NULL, 0, NULL, 0) == 0 && wire_read_full(fd, &r, sizeof(r)) == 0 && r.error == 0) {
				pthread_mutex_lock(&ctl_lock);
				if (ctl_fd_count < MAX_CTL_FDS) {
					ctl_fds[ctl_fd_count++] = fd;
					pthread_mutex_unlock(&ctl_lock);
					return fd;
				}
				pthread_mutex_unlock(&ctl_lock);
				real_close(fd);
				errno = EMFILE;
				return -1;
			}
			real_close(fd);
			usleep(20000);
		}
		/* No kernel: like /dev/ggctl without the geom_gate module. */
		errno = ENOENT;
		return -1;
	}
	if (flags & (O_CREAT | O_TMPFILE)) {
		va_list ap;
		va_start(ap, flags);
		mode = va_arg(ap, mode_t);
		va_end(ap);
	}
	return real_open(path, flags, mode);
}

/*
 * sysctlbyname(3) for kern.geom.confxml, from the simulated kernel (an
 * empty mesh when none runs); with FreeBSD's conventions: without oldp the
 * size is reported, a short buffer gets what fits and ENOMEM. Other names
 * do not exist here.
 */
EXPORT int
sysctlbyname(const char *name, void *oldp, size_t *oldlenp, const void *newp, size_t newlen)
{
	struct wire_reply r;
	char *xml = NULL;
	size_t size;
	int fd, error = 0;

	if (strcmp(name, "kern.geom.confxml") != 0) {
		errno = ENOENT;
		return -1;
	}
	if (newp != NULL || newlen != 0) {
		errno = EPERM;
		return -1;
	}
	fd = connect_kernel();
	if (fd >= 0 && send_request(fd, WIRE_CONFXML, 0, NULL, 0, NULL, 0) == 0 && wire_read_full(fd, &r, sizeof(r)) == 0 &&
	    r.error == 0 && (xml = calloc(1, r.length + 1)) != NULL && wire_read_full(fd, xml, r.length) != 0) {
		free(xml);
		xml = NULL;
	}
	if (fd >= 0)
		real_close(fd);
	/* The string and its NUL, as SYSCTL_OUT hands out an sbuf. */
	size = (xml != NULL ? strlen(xml) : strlen(EMPTY_MESH)) + 1;
	if (oldp != NULL) {
		if (*oldlenp < size)
			error = ENOMEM;
		memcpy(oldp, xml != NULL ? xml : EMPTY_MESH, error != 0 ? *oldlenp : size);
	}
	if (error == 0)
		*oldlenp = size;
	free(xml);
	if (error != 0) {
		errno = error;
		return -1;
	}
	return 0;
}

/*
 * For tests of the simulator itself: queue a bio on a unit as the kernel
 * would, and wait for userspace to finish it. Returns a FreeBSD errno.
 */
EXPORT int
ggsim_submit(int unit, uint32_t cmd, int64_t offset, int64_t length, void *data)
{
	struct wire_submit s = { .unit = unit, .cmd = cmd, .offset = offset, .length = length };
	struct wire_reply r;
	int fd = connect_kernel(), error = ENXIO;

	if (fd < 0)
		return ENXIO;
	if (send_request(fd, WIRE_SUBMIT, 0, &s, sizeof(s), data, cmd == BIO_WRITE ? (size_t)length : 0) == 0 &&
	    wire_read_full(fd, &r, sizeof(r)) == 0 && (r.length == 0 || wire_read_full(fd, data, r.length) == 0))
		error = r.error;
	real_close(fd);
	return error;
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
	if (ctl_is(fd))
		return ctl_ioctl(request, arg);
	if (request == DIOCGMEDIASIZE || request == DIOCGSECTORSIZE || request == DIOCGFLUSH ||
	    request == DIOCGDELETE)
		return disk_ioctl(fd, request, arg);
	return real_ioctl(fd, request, arg);
}

EXPORT int
close(int fd)
{
	/* Closing a session's connection closes /dev/ggctl for the kernel. */
	ctl_forget(fd);
	return real_close(fd);
}

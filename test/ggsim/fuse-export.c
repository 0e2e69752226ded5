/*
 * Shows each simulated provider NAME as the file $GGSIM_MOUNT/NAME, so that
 * a loop device and a real file system can sit on it. Every read, write,
 * fsync and hole punch of that file becomes a bio on the provider's queue;
 * while the file is open the provider counts as open (DESTROY fails EBUSY).
 *
 * libfuse's high-level API on a thread of its own, in the simulated
 * kernel's process (kernel-main.c).
 */
#define FUSE_USE_VERSION 312
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "g_gate_abi.h"
#include "ggsim.h"

/* kern.maxphys on 64-bit FreeBSD: GEOM hands no larger READ or WRITE. */
#define MAXPHYS (1 << 20)

static struct fuse *fuse;
static pthread_t loop_thread;
static char connection_abort[64];

/* FreeBSD errno values to Linux's, for the FUSE reply. */
static int
linux_errno(int freebsd_error)
{
	switch (freebsd_error) {
	case 0:
		return 0;
	case FREEBSD_EAGAIN:
		return EAGAIN;
	case FREEBSD_EOPNOTSUPP:
		return EOPNOTSUPP;
	case FREEBSD_ECANCELED:
		return ECANCELED;
	default:
		/* 1..34 agree between the two; anything else is an I/O error. */
		return freebsd_error > 0 && freebsd_error < FREEBSD_EAGAIN ? freebsd_error : EIO;
	}
}

static void *
sim_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	conn->max_write = MAXPHYS;
	cfg->direct_io = 1;
	cfg->entry_timeout = 0;
	cfg->attr_timeout = 0;
	cfg->negative_timeout = 0;
	return NULL;
}

static int
sim_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	int64_t mediasize;
	uint32_t sectorsize;

	(void)fi;
	memset(st, 0, sizeof(*st));
	if (strcmp(path, "/") == 0) {
		st->st_mode = S_IFDIR | 0755;
		st->st_nlink = 2;
		return 0;
	}
	if (ggsim_provider_stat(path + 1, &mediasize, &sectorsize) != 0)
		return -ENOENT;
	st->st_mode = S_IFREG | 0600;
	st->st_nlink = 1;
	st->st_size = mediasize;
	st->st_blksize = sectorsize;
	st->st_blocks = mediasize / 512;
	return 0;
}

struct readdir_ctx {
	void *buf;
	fuse_fill_dir_t filler;
};

static void
add_entry(void *ctx, const char *name, int64_t mediasize)
{
	struct readdir_ctx *r = ctx;

	(void)mediasize;
	r->filler(r->buf, name, NULL, 0, 0);
}

static int
sim_readdir(const char *path, void *buf, fuse_fill_dir_t filler, off_t offset,
    struct fuse_file_info *fi, enum fuse_readdir_flags flags)
{
	struct readdir_ctx ctx = { buf, filler };

	(void)offset;
	(void)fi;
	(void)flags;
	if (strcmp(path, "/") != 0)
		return -ENOTDIR;
	filler(buf, ".", NULL, 0, 0);
	filler(buf, "..", NULL, 0, 0);
	ggsim_provider_each(add_entry, &ctx);
	return 0;
}

/* An open file of a provider: what it holds of the DEV consumer's access counts. */
struct open_file {
	struct ggsim_provider *provider;
	int readable;
	int writable;
};

static struct ggsim_provider *
provider_of(struct fuse_file_info *fi)
{
	return ((struct open_file *)(uintptr_t)fi->fh)->provider;
}

static int
sim_open(const char *path, struct fuse_file_info *fi)
{
	int error;
	struct open_file *f = calloc(1, sizeof(*f));

	if (f == NULL)
		return -ENOMEM;
	f->readable = (fi->flags & O_ACCMODE) != O_WRONLY;
	f->writable = (fi->flags & O_ACCMODE) != O_RDONLY;
	f->provider = ggsim_provider_open(path + 1, f->readable, f->writable, &error);
	if (f->provider == NULL) {
		free(f);
		return -linux_errno(error);
	}
	fi->fh = (uintptr_t)f;
	fi->direct_io = 1;
	return 0;
}

static int
sim_release(const char *path, struct fuse_file_info *fi)
{
	struct open_file *f = (struct open_file *)(uintptr_t)fi->fh;

	(void)path;
	ggsim_provider_close(f->provider, f->readable, f->writable);
	free(f);
	return 0;
}

/* One READ or WRITE request, cut into bios no larger than MAXPHYS. */
static int
transfer(struct fuse_file_info *fi, uint32_t cmd, char *buf, size_t size, off_t offset)
{
	struct ggsim_provider *p = provider_of(fi);
	int64_t mediasize = ggsim_provider_mediasize(p);
	uint32_t sectorsize = ggsim_provider_sectorsize(p);

	if (offset % sectorsize != 0 || size % sectorsize != 0)
		return -EINVAL;
	if (offset >= mediasize)
		return cmd == BIO_READ ? 0 : -ENOSPC;
	if ((int64_t)size > mediasize - offset)
		size = (size_t)(mediasize - offset);
	for (size_t done = 0; done < size;) {
		size_t chunk = size - done < MAXPHYS ? size - done : MAXPHYS;
		int error = ggsim_provider_io(p, cmd, offset + (off_t)done, (int64_t)chunk, buf + done);
		if (error != 0)
			return -linux_errno(error);
		done += chunk;
	}
	return (int)size;
}

static int
sim_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi)
{
	(void)path;
	return transfer(fi, BIO_READ, buf, size, offset);
}

static int
sim_write(const char *path, const char *buf, size_t size, off_t offset, struct fuse_file_info *fi)
{
	(void)path;
	return transfer(fi, BIO_WRITE, (char *)buf, size, offset);
}

static int
sim_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)path;
	(void)datasync;
	int error = ggsim_provider_io(provider_of(fi), BIO_FLUSH, 0, 0, NULL);
	return -linux_errno(error);
}

static int
sim_fallocate(const char *path, int mode, off_t offset, off_t length, struct fuse_file_info *fi)
{
	struct ggsim_provider *p = provider_of(fi);
	uint32_t sectorsize = ggsim_provider_sectorsize(p);

	(void)path;
	/* A hole punch is the file's way of saying BIO_DELETE. */
	if (mode != (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
		return -EOPNOTSUPP;
	if (offset % sectorsize != 0 || length % sectorsize != 0)
		return -EINVAL;
	if (offset + length > ggsim_provider_mediasize(p))
		return -EINVAL;
	int error = ggsim_provider_io(p, BIO_DELETE, offset, length, NULL);
	return -linux_errno(error);
}

static const struct fuse_operations sim_operations = {
	.init = sim_init,
	.getattr = sim_getattr,
	.readdir = sim_readdir,
	.open = sim_open,
	.release = sim_release,
	.read = sim_read,
	.write = sim_write,
	.fsync = sim_fsync,
	.fallocate = sim_fallocate,
};

static void *
run_loop(void *arg)
{
	struct fuse_loop_config *config = fuse_loop_cfg_create();

	(void)arg;
	fuse_loop_cfg_set_max_threads(config, 16);
	fuse_loop_mt(fuse, config);
	fuse_loop_cfg_destroy(config);
	return NULL;
}

int
ggsim_fuse_start(const char *mountpoint)
{
	char *argv[] = { "ggsim", "-o", "fsname=ggsim,subtype=ggsim", NULL };
	struct fuse_args args = FUSE_ARGS_INIT(3, argv);
	struct stat st;

	mkdir(mountpoint, 0755);
	fuse = fuse_new(&args, &sim_operations, sizeof(sim_operations), NULL);
	if (fuse == NULL) {
		fprintf(stderr, "ggsim: fuse_new failed\n");
		return -1;
	}
	if (fuse_mount(fuse, mountpoint) != 0) {
		fprintf(stderr, "ggsim: cannot mount FUSE on %s\n", mountpoint);
		fuse_destroy(fuse);
		fuse = NULL;
		return -1;
	}
	if (pthread_create(&loop_thread, NULL, run_loop, NULL) != 0) {
		fuse_unmount(fuse);
		fuse_destroy(fuse);
		fuse = NULL;
		return -1;
	}
	/* The connection's number, to abort it should a user still hold a file at the end. */
	connection_abort[0] = '\0';
	if (stat(mountpoint, &st) == 0)
		snprintf(connection_abort, sizeof(connection_abort), "/sys/fs/fuse/connections/%u/abort",
		    minor(st.st_dev));
	return 0;
}

void
ggsim_fuse_stop(void)
{
	FILE *abort_file;

	if (fuse == NULL)
		return;
	fuse_exit(fuse);
	fuse_unmount(fuse);
	/*
	 * A lazy unmount leaves the connection up while a loop device still
	 * holds a file; aborting it ends the loop threads' reads either way.
	 */
	abort_file = connection_abort[0] != '\0' ? fopen(connection_abort, "w") : NULL;
	if (abort_file != NULL) {
		fputs("1", abort_file);
		fclose(abort_file);
		pthread_join(loop_thread, NULL);
		fuse_destroy(fuse);
	} else {
		/* Without fusectl the threads end when the last user lets go. */
		pthread_detach(loop_thread);
	}
	fuse = NULL;
}

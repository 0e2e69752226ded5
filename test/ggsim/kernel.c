/*
 * The kernel side of GEOM Gate, simulated in process: the semantics of
 * /dev/ggctl's ioctls as docs/ggate-abi.md describes FreeBSD's
 * sys/geom/gate/g_gate.c (interface version 3). Providers live in this
 * process; their bios come from fuse-export.c (or ggsim_submit in tests).
 *
 * One mutex guards everything: units, queues and bios. A bio is owned by
 * the thread that submitted it and lives on its stack until it is done.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "g_gate_abi.h"
#include "ggsim.h"

#define EXPORT __attribute__((visibility("default")))

/* kern.geom.gate.maxunits' default. */
#define MAX_UNITS 256
/* g_gate.c caps gctl_maxcount at this; 0 means no limit. */
#define MAX_QUEUE 4096
#define MAX_CTL_FDS 64

struct bio {
	uint64_t seq;
	uint32_t cmd;
	int64_t offset;
	int64_t length;
	void *data;
	int error;
	int done;
	pthread_cond_t cv;
	struct bio *next;
	struct bio *prev;
};

struct bioq {
	struct bio *head;
	struct bio *tail;
};

struct ggsim_provider {
	int unit;
	char name[G_GATE_NAME_MAX + 1];
	int64_t mediasize;
	uint32_t sectorsize;
	uint32_t flags;
	uint32_t maxcount;
	struct bioq inqueue;
	struct bioq outqueue;
	uint32_t queue_count;
	uint64_t next_seq;
	int destroying;
	/* Open FUSE files: the provider is "open" (acr/acw > 0) while any is. */
	int opens;
	/* The unit table, open files and sleeping STARTs each hold one. */
	int refs;
	pthread_cond_t start_cv;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct ggsim_provider *units[MAX_UNITS];
static int ctl_fds[MAX_CTL_FDS];
static int ctl_fd_count;
static int fuse_running;

static void
bioq_insert_tail(struct bioq *q, struct bio *bp)
{
	bp->next = NULL;
	bp->prev = q->tail;
	if (q->tail != NULL)
		q->tail->next = bp;
	else
		q->head = bp;
	q->tail = bp;
}

static void
bioq_insert_head(struct bioq *q, struct bio *bp)
{
	bp->prev = NULL;
	bp->next = q->head;
	if (q->head != NULL)
		q->head->prev = bp;
	else
		q->tail = bp;
	q->head = bp;
}

static void
bioq_remove(struct bioq *q, struct bio *bp)
{
	if (bp->prev != NULL)
		bp->prev->next = bp->next;
	else
		q->head = bp->next;
	if (bp->next != NULL)
		bp->next->prev = bp->prev;
	else
		q->tail = bp->prev;
	bp->next = bp->prev = NULL;
}

static void
bio_finish(struct bio *bp, int error)
{
	bp->error = error;
	bp->done = 1;
	pthread_cond_signal(&bp->cv);
}

static void
provider_release(struct ggsim_provider *p)
{
	if (--p->refs > 0)
		return;
	pthread_cond_destroy(&p->start_cv);
	free(p);
}

static struct ggsim_provider *
find_by_name(const char *name)
{
	for (int unit = 0; unit < MAX_UNITS; unit++) {
		if (units[unit] != NULL && strcmp(units[unit]->name, name) == 0)
			return units[unit];
	}
	return NULL;
}

/* g_gate_hold(): by unit, or by name when unit is G_GATE_NAME_GIVEN. */
static struct ggsim_provider *
hold(int unit, const char *name)
{
	if (unit >= 0 && unit < MAX_UNITS)
		return units[unit];
	if (unit == G_GATE_NAME_GIVEN && name != NULL)
		return find_by_name(name);
	return NULL;
}

static int
is_power_of_two(uint32_t n)
{
	return n != 0 && (n & (n - 1)) == 0;
}

/* The FUSE mount goes away once nothing can use it any more. */
static void
maybe_stop_fuse(void)
{
	if (!fuse_running || ctl_fd_count > 0)
		return;
	for (int unit = 0; unit < MAX_UNITS; unit++) {
		if (units[unit] != NULL)
			return;
	}
	fuse_running = 0;
	pthread_mutex_unlock(&lock);
	ggsim_fuse_stop();
	pthread_mutex_lock(&lock);
}

static int
ctl_create(struct g_gate_ctl_create *c)
{
	char name[G_GATE_NAME_MAX + 1];
	int unit;

	if (c->gctl_mediasize <= 0 || !is_power_of_two(c->gctl_sectorsize) ||
	    c->gctl_mediasize % c->gctl_sectorsize != 0)
		return EINVAL;
	if ((c->gctl_flags & G_GATE_FLAG_READONLY) && (c->gctl_flags & G_GATE_FLAG_WRITEONLY))
		return EINVAL;
	if (c->gctl_unit < G_GATE_NAME_GIVEN)
		return EINVAL;
	memcpy(name, c->gctl_name, G_GATE_NAME_MAX);
	name[G_GATE_NAME_MAX] = '\0';
	if (c->gctl_unit == G_GATE_NAME_GIVEN && name[0] == '\0')
		return EINVAL;
	/* The readprov fast path needs a second provider; not simulated. */
	if (c->gctl_readprov[0] != '\0')
		return EINVAL;

	if (c->gctl_unit >= 0) {
		if (c->gctl_unit >= MAX_UNITS)
			return EINVAL;
		if (units[c->gctl_unit] != NULL)
			return EEXIST;
		unit = c->gctl_unit;
	} else {
		for (unit = 0; unit < MAX_UNITS && units[unit] != NULL; unit++)
			;
		if (unit == MAX_UNITS)
			return ENFILE;
	}
	if (c->gctl_unit != G_GATE_NAME_GIVEN)
		snprintf(name, sizeof(name), "ggate%d", unit);
	if (find_by_name(name) != NULL)
		return EEXIST;

	struct ggsim_provider *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return ENOMEM;
	p->unit = unit;
	strcpy(p->name, name);
	p->mediasize = c->gctl_mediasize;
	p->sectorsize = c->gctl_sectorsize;
	p->flags = c->gctl_flags;
	p->maxcount = c->gctl_maxcount > MAX_QUEUE ? MAX_QUEUE : c->gctl_maxcount;
	p->refs = 1;
	pthread_cond_init(&p->start_cv, NULL);
	units[unit] = p;
	c->gctl_unit = unit;
	return 0;
}

static void
fail_queue(struct ggsim_provider *p, struct bioq *q, int error)
{
	struct bio *bp;

	while ((bp = q->head) != NULL) {
		bioq_remove(q, bp);
		p->queue_count--;
		bio_finish(bp, error);
	}
}

static int
ctl_destroy(struct g_gate_ctl_destroy *d)
{
	char name[G_GATE_NAME_MAX + 1];

	memcpy(name, d->gctl_name, G_GATE_NAME_MAX);
	name[G_GATE_NAME_MAX] = '\0';
	struct ggsim_provider *p = hold(d->gctl_unit, name);
	if (p == NULL)
		return ENXIO;
	if (!d->gctl_force && p->opens > 0)
		return EBUSY;
	p->destroying = 1;
	fail_queue(p, &p->inqueue, ENXIO);
	fail_queue(p, &p->outqueue, ENXIO);
	pthread_cond_broadcast(&p->start_cv);
	units[p->unit] = NULL;
	provider_release(p);
	maybe_stop_fuse();
	return 0;
}

static int
ctl_cancel(struct g_gate_ctl_cancel *c)
{
	char name[G_GATE_NAME_MAX + 1];
	struct bio *bp, *prev;

	memcpy(name, c->gctl_name, G_GATE_NAME_MAX);
	name[G_GATE_NAME_MAX] = '\0';
	struct ggsim_provider *p = hold(c->gctl_unit, name);
	if (p == NULL)
		return ENXIO;
	/* Back to the head of the input queue, in their original order. */
	for (bp = p->outqueue.tail; bp != NULL; bp = prev) {
		prev = bp->prev;
		if (c->gctl_seq == 0 || c->gctl_seq == bp->seq) {
			bioq_remove(&p->outqueue, bp);
			bioq_insert_head(&p->inqueue, bp);
		}
	}
	pthread_cond_broadcast(&p->start_cv);
	return 0;
}

static int
ctl_start(struct g_gate_ctl_io *io)
{
	struct ggsim_provider *p = hold(io->gctl_unit, NULL);
	struct bio *bp;

	if (p == NULL)
		return ENXIO;
	p->refs++;
	while ((bp = p->inqueue.head) == NULL && !p->destroying)
		pthread_cond_wait(&p->start_cv, &lock);
	if (bp == NULL) {
		io->gctl_error = FREEBSD_ECANCELED;
		provider_release(p);
		return 0;
	}
	io->gctl_cmd = bp->cmd;
	if (bp->cmd == BIO_WRITE && bp->length > io->gctl_length) {
		/* The bio stays queued for a START with a buffer large enough. */
		io->gctl_length = bp->length;
		io->gctl_error = ENOMEM;
		provider_release(p);
		return 0;
	}
	bioq_remove(&p->inqueue, bp);
	bioq_insert_tail(&p->outqueue, bp);
	io->gctl_seq = bp->seq;
	io->gctl_offset = bp->offset;
	io->gctl_length = bp->length;
	if (bp->cmd == BIO_WRITE)
		memcpy(io->gctl_data, bp->data, (size_t)bp->length);
	provider_release(p);
	return 0;
}

static int
ctl_done(struct g_gate_ctl_io *io)
{
	struct ggsim_provider *p = hold(io->gctl_unit, NULL);
	struct bio *bp;

	if (p == NULL)
		return ENOENT;
	for (bp = p->outqueue.head; bp != NULL && bp->seq != io->gctl_seq; bp = bp->next)
		;
	if (bp == NULL)
		return 0; /* probably cancelled */
	bioq_remove(&p->outqueue, bp);
	if (io->gctl_error == FREEBSD_EAGAIN) {
		bioq_insert_head(&p->inqueue, bp);
		pthread_cond_signal(&p->start_cv);
		return 0;
	}
	p->queue_count--;
	if (io->gctl_error == 0 && bp->cmd == BIO_READ)
		memcpy(bp->data, io->gctl_data, (size_t)bp->length);
	bio_finish(bp, io->gctl_error);
	return 0;
}

int
ggsim_ctl_open(void)
{
	const char *mountpoint = getenv("GGSIM_MOUNT");
	int fd;

	/* /dev/ggctl is mode 0600 root. */
	if (geteuid() != 0) {
		errno = EACCES;
		return -1;
	}
	/* A real descriptor, so that the number is unique and close works. */
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -1;
	pthread_mutex_lock(&lock);
	if (ctl_fd_count == MAX_CTL_FDS) {
		pthread_mutex_unlock(&lock);
		close(fd);
		errno = EMFILE;
		return -1;
	}
	if (!fuse_running && mountpoint != NULL && mountpoint[0] != '\0') {
		if (ggsim_fuse_start(mountpoint) != 0) {
			pthread_mutex_unlock(&lock);
			close(fd);
			errno = ENXIO;
			return -1;
		}
		fuse_running = 1;
	}
	ctl_fds[ctl_fd_count++] = fd;
	pthread_mutex_unlock(&lock);
	return fd;
}

int
ggsim_ctl_is(int fd)
{
	int found = 0;

	pthread_mutex_lock(&lock);
	for (int i = 0; i < ctl_fd_count && !found; i++)
		found = ctl_fds[i] == fd;
	pthread_mutex_unlock(&lock);
	return found;
}

void
ggsim_ctl_close(int fd)
{
	pthread_mutex_lock(&lock);
	for (int i = 0; i < ctl_fd_count; i++) {
		if (ctl_fds[i] == fd) {
			ctl_fds[i] = ctl_fds[--ctl_fd_count];
			break;
		}
	}
	maybe_stop_fuse();
	pthread_mutex_unlock(&lock);
}

int
ggsim_ctl_ioctl(int fd, unsigned long request, void *arg)
{
	int error;

	(void)fd;
	/* Every struct starts with gctl_version. */
	if (request != G_GATE_CMD_CREATE && request != G_GATE_CMD_DESTROY &&
	    request != G_GATE_CMD_CANCEL && request != G_GATE_CMD_START &&
	    request != G_GATE_CMD_DONE) {
		errno = ENOTTY;
		return -1;
	}
	if (*(uint32_t *)arg != G_GATE_VERSION) {
		fprintf(stderr, "ggsim: Version mismatch %u != %d.\n", *(uint32_t *)arg, G_GATE_VERSION);
		errno = EINVAL;
		return -1;
	}
	pthread_mutex_lock(&lock);
	if (request == G_GATE_CMD_CREATE)
		error = ctl_create(arg);
	else if (request == G_GATE_CMD_DESTROY)
		error = ctl_destroy(arg);
	else if (request == G_GATE_CMD_CANCEL)
		error = ctl_cancel(arg);
	else if (request == G_GATE_CMD_START)
		error = ctl_start(arg);
	else
		error = ctl_done(arg);
	pthread_mutex_unlock(&lock);
	if (error != 0) {
		errno = error;
		return -1;
	}
	return 0;
}

struct ggsim_provider *
ggsim_provider_open(const char *name, int writable, int *error)
{
	struct ggsim_provider *p;

	pthread_mutex_lock(&lock);
	p = find_by_name(name);
	if (p == NULL)
		*error = ENOENT;
	else if (writable && (p->flags & G_GATE_FLAG_READONLY))
		*error = EPERM;
	else {
		p->opens++;
		p->refs++;
		*error = 0;
	}
	pthread_mutex_unlock(&lock);
	return *error == 0 ? p : NULL;
}

void
ggsim_provider_close(struct ggsim_provider *p)
{
	pthread_mutex_lock(&lock);
	p->opens--;
	provider_release(p);
	pthread_mutex_unlock(&lock);
}

int64_t
ggsim_provider_mediasize(const struct ggsim_provider *p)
{
	return p->mediasize;
}

uint32_t
ggsim_provider_sectorsize(const struct ggsim_provider *p)
{
	return p->sectorsize;
}

int
ggsim_provider_io(struct ggsim_provider *p, uint32_t cmd, int64_t offset, int64_t length, void *data)
{
	struct bio bp = { .cmd = cmd, .offset = offset, .length = length, .data = data };
	int error;

	pthread_mutex_lock(&lock);
	if (p->destroying)
		error = ENXIO;
	else if ((p->flags & G_GATE_FLAG_READONLY) && cmd != BIO_READ)
		error = EPERM;
	else if ((p->flags & G_GATE_FLAG_WRITEONLY) && cmd == BIO_READ)
		error = EPERM;
	else if (p->maxcount != 0 && p->queue_count >= p->maxcount)
		error = ENOMEM;
	else {
		pthread_cond_init(&bp.cv, NULL);
		bp.seq = ++p->next_seq;
		p->queue_count++;
		bioq_insert_tail(&p->inqueue, &bp);
		pthread_cond_signal(&p->start_cv);
		while (!bp.done)
			pthread_cond_wait(&bp.cv, &lock);
		pthread_cond_destroy(&bp.cv);
		error = bp.error;
	}
	pthread_mutex_unlock(&lock);
	return error;
}

void
ggsim_provider_each(void (*fn)(void *ctx, const char *name, int64_t mediasize), void *ctx)
{
	pthread_mutex_lock(&lock);
	for (int unit = 0; unit < MAX_UNITS; unit++) {
		if (units[unit] != NULL)
			fn(ctx, units[unit]->name, units[unit]->mediasize);
	}
	pthread_mutex_unlock(&lock);
}

int
ggsim_provider_stat(const char *name, int64_t *mediasize, uint32_t *sectorsize)
{
	struct ggsim_provider *p;

	pthread_mutex_lock(&lock);
	p = find_by_name(name);
	if (p != NULL) {
		*mediasize = p->mediasize;
		*sectorsize = p->sectorsize;
	}
	pthread_mutex_unlock(&lock);
	return p != NULL ? 0 : ENOENT;
}

/*
 * For tests of the simulator itself: queue a bio on a unit as the kernel
 * would, and wait for userspace to finish it. Returns a FreeBSD errno.
 */
EXPORT int
ggsim_submit(int unit, uint32_t cmd, int64_t offset, int64_t length, void *data)
{
	struct ggsim_provider *p;
	int error;

	pthread_mutex_lock(&lock);
	p = unit >= 0 && unit < MAX_UNITS ? units[unit] : NULL;
	if (p != NULL)
		p->refs++;
	pthread_mutex_unlock(&lock);
	if (p == NULL)
		return ENXIO;
	error = ggsim_provider_io(p, cmd, offset, length, data);
	pthread_mutex_lock(&lock);
	provider_release(p);
	pthread_mutex_unlock(&lock);
	return error;
}

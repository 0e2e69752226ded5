/*
 * The kernel side of GEOM Gate, simulated: the semantics of /dev/ggctl's
 * ioctls as FreeBSD's sys/geom/gate/g_gate.c has them (interface version 3;
 * docs/ggate-abi.md), and kern.geom.confxml for the providers as
 * sys/geom/geom_dump.c writes it. This runs in the simulated kernel's
 * process (kernel-main.c); bios come from fuse-export.c, or from
 * ggsim_unit_io in tests.
 *
 * One mutex guards everything: units, queues, bios and sessions. A bio is
 * owned by the thread that submitted it and lives on its stack until it is
 * done.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include "g_gate_abi.h"
#include "ggsim.h"

/* kern.geom.gate.maxunits' default. */
#define MAX_UNITS 256
/* g_gate.c caps gctl_maxcount at this; 0 means no limit. */
#define MAX_QUEUE 4096
/* How often a sleeping START looks for a signal or its caller's exit. */
#define START_POLL_NS (20 * 1000 * 1000L)
/* How long a kernel nobody has opened yet waits for its first session. */
#define FIRST_SESSION_SECONDS 10

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
	char info[G_GATE_INFOSIZE];
	int64_t mediasize;
	uint32_t sectorsize;
	uint32_t flags;
	uint32_t maxcount;
	uint32_t timeout;
	struct bioq inqueue;
	struct bioq outqueue;
	uint32_t queue_count;
	uint64_t next_seq;
	int destroying;
	/*
	 * The access counts of its DEV consumer (geom_dev.c: one per
	 * provider; an open takes r and w, never e): the open FUSE files.
	 * The provider is open (DESTROY fails EBUSY) while either is not 0.
	 */
	int acr;
	int acw;
	/* The unit table, open files and ioctls in progress each hold one. */
	int refs;
	/*
	 * The read provider MODIFY's READPROV names (g_gate.c's sc_readcons):
	 * a disk, /dev/NAME of the Linux host standing in for a GEOM provider
	 * (an md), open read-only; -1: none. READs go straight to it at
	 * readoffset, and to the queue when that fails (g_gate_done).
	 */
	int readfd;
	char readprov[G_GATE_NAME_MAX + 1];
	int64_t readoffset;
	int64_t readsize;
	pthread_cond_t start_cv;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t lifecycle_cv = PTHREAD_COND_INITIALIZER;
static struct ggsim_provider *units[MAX_UNITS];
static int sessions;
static int session_seen;
static int shutting_down;

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

/* After `after`, or at the head when it is NULL. */
static void
bioq_insert_after(struct bioq *q, struct bio *after, struct bio *bp)
{
	bp->prev = after;
	bp->next = after != NULL ? after->next : q->head;
	if (bp->next != NULL)
		bp->next->prev = bp;
	else
		q->tail = bp;
	if (after != NULL)
		after->next = bp;
	else
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
	if (p->readfd >= 0)
		close(p->readfd);
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

static int
unit_count(void)
{
	int n = 0;

	for (int unit = 0; unit < MAX_UNITS; unit++)
		n += units[unit] != NULL;
	return n;
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

static void
copy_name(char *to, const char *from)
{
	memcpy(to, from, G_GATE_NAME_MAX);
	to[G_GATE_NAME_MAX] = '\0';
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
	copy_name(name, c->gctl_name);
	if (c->gctl_unit == G_GATE_NAME_GIVEN && name[0] == '\0')
		return EINVAL;
	/* A read provider at CREATE: rowr never gives one (MODIFY does, after hydration); not simulated. */
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
	/* strlcpy into sc_info: cut at the field's end. */
	memcpy(p->info, c->gctl_info, G_GATE_INFOSIZE);
	p->info[G_GATE_INFOSIZE - 1] = '\0';
	p->mediasize = c->gctl_mediasize;
	p->sectorsize = c->gctl_sectorsize;
	p->flags = c->gctl_flags;
	p->maxcount = c->gctl_maxcount > MAX_QUEUE ? MAX_QUEUE : c->gctl_maxcount;
	p->timeout = c->gctl_timeout;
	p->next_seq = 1;
	p->refs = 1;
	p->readfd = -1;
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

/*
 * g_provider_by_name() and g_access(cp, 1, 0, 0) for a read provider: the
 * host's /dev/NAME, which must be a disk (a file is no GEOM provider).
 */
static int
open_read_provider(const char *name, int64_t *size)
{
	char path[G_GATE_NAME_MAX + 6];
	struct stat st;
	int fd;

	snprintf(path, sizeof(path), "/dev/%s", name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) != 0 || !S_ISBLK(st.st_mode) || (*size = lseek(fd, 0, SEEK_END)) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * g_gate_modify(): a new media size alone; else the info, then the read
 * provider (the old one let go first) and its offset, checked against the
 * provider's sector size and both media sizes. Where g_gate.c fails READOFFSET
 * with the topology lock still held, this just fails: rowr checks the
 * offset before it asks (docs/ggate-abi.md).
 */
static int
ctl_modify(struct g_gate_ctl_modify *m)
{
	char name[G_GATE_NAME_MAX + 1];
	struct ggsim_provider *p = hold(m->gctl_unit, NULL);
	int64_t size = 0;
	int fd;

	if (p == NULL)
		return ENXIO;
	if (m->gctl_modify & GG_MODIFY_MEDIASIZE) {
		if (m->gctl_mediasize <= 0 || m->gctl_mediasize % p->sectorsize != 0)
			return EINVAL;
		p->mediasize = m->gctl_mediasize;
		return 0;
	}
	if (m->gctl_modify & GG_MODIFY_INFO) {
		memcpy(p->info, m->gctl_info, G_GATE_INFOSIZE);
		p->info[G_GATE_INFOSIZE - 1] = '\0';
	}
	fd = p->readfd;
	size = p->readsize;
	copy_name(name, m->gctl_readprov);
	if (m->gctl_modify & GG_MODIFY_READPROV) {
		if (p->readfd >= 0)
			close(p->readfd);
		p->readfd = fd = -1;
		p->readprov[0] = '\0';
		if (name[0] != '\0' && (fd = open_read_provider(name, &size)) < 0)
			return EINVAL;
	}
	if (m->gctl_modify & GG_MODIFY_READOFFSET) {
		if (fd < 0 || m->gctl_readoffset % p->sectorsize != 0 || p->mediasize + m->gctl_readoffset > size) {
			if ((m->gctl_modify & GG_MODIFY_READPROV) && fd >= 0)
				close(fd);
			return EINVAL;
		}
		p->readoffset = m->gctl_readoffset;
	}
	if (m->gctl_modify & GG_MODIFY_READPROV) {
		p->readfd = fd;
		p->readsize = size;
		strcpy(p->readprov, name);
	}
	return 0;
}

static int
ctl_destroy(struct g_gate_ctl_destroy *d)
{
	char name[G_GATE_NAME_MAX + 1];

	copy_name(name, d->gctl_name);
	struct ggsim_provider *p = hold(d->gctl_unit, name);
	if (p == NULL)
		return ENXIO;
	if (!d->gctl_force && (p->acr != 0 || p->acw != 0))
		return EBUSY;
	p->destroying = 1;
	fail_queue(p, &p->inqueue, ENXIO);
	fail_queue(p, &p->outqueue, ENXIO);
	pthread_cond_broadcast(&p->start_cv);
	units[p->unit] = NULL;
	provider_release(p);
	pthread_cond_broadcast(&lifecycle_cv);
	return 0;
}

/*
 * Bios userspace took and did not finish go back to the head of the input
 * queue in their order, for the next START (a daemon that takes a provider
 * over). Like g_gate.c, no sleeping START is woken: a new daemon's STARTs
 * find them queued.
 */
static int
ctl_cancel(struct g_gate_ctl_cancel *c)
{
	char name[G_GATE_NAME_MAX + 1];
	struct bio *bp, *next, *last = NULL;

	copy_name(name, c->gctl_name);
	struct ggsim_provider *p = hold(c->gctl_unit, name);
	if (p == NULL)
		return ENXIO;
	for (bp = p->outqueue.head; bp != NULL; bp = next) {
		next = bp->next;
		if (c->gctl_seq != 0 && c->gctl_seq != bp->seq)
			continue;
		bioq_remove(&p->outqueue, bp);
		bioq_insert_after(&p->inqueue, last, bp);
		last = bp;
		if (c->gctl_seq != 0)
			break;
	}
	if (c->gctl_unit == G_GATE_NAME_GIVEN)
		c->gctl_unit = p->unit;
	return 0;
}

static int
ctl_start(struct g_gate_ctl_io *io, int (*interrupted)(void *), void *ctx)
{
	struct ggsim_provider *p = hold(io->gctl_unit, NULL);
	struct bio *bp;
	struct timespec until;

	if (p == NULL)
		return ENXIO;
	p->refs++;
	for (;;) {
		if ((bp = p->inqueue.head) != NULL)
			break;
		if (p->destroying || interrupted(ctx)) {
			/* msleep(PCATCH) interrupted: ECANCELED, like a destroy. */
			io->gctl_error = FREEBSD_ECANCELED;
			provider_release(p);
			return 0;
		}
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += START_POLL_NS;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&p->start_cv, &lock, &until);
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
		bioq_insert_after(&p->inqueue, NULL, bp);
		pthread_cond_signal(&p->start_cv);
		return 0;
	}
	p->queue_count--;
	if (io->gctl_error == 0 && bp->cmd == BIO_READ) {
		/* copyin() of a buffer shorter than the bio would fault. */
		if (io->gctl_length < bp->length) {
			bio_finish(bp, EFAULT);
			return 0;
		}
		memcpy(bp->data, io->gctl_data, (size_t)bp->length);
	}
	bio_finish(bp, io->gctl_error);
	return 0;
}

int
ggsim_ctl_ioctl(unsigned long request, void *arg, int (*interrupted)(void *), void *ctx)
{
	int error;

	/* Every struct starts with gctl_version. */
	if (request != G_GATE_CMD_CREATE && request != G_GATE_CMD_DESTROY &&
	    request != G_GATE_CMD_CANCEL && request != G_GATE_CMD_START &&
	    request != G_GATE_CMD_DONE && request != G_GATE_CMD_MODIFY)
		return ENOTTY;
	if (*(uint32_t *)arg != G_GATE_VERSION) {
		fprintf(stderr, "ggsim: Version mismatch %u != %d.\n", *(uint32_t *)arg, G_GATE_VERSION);
		return EINVAL;
	}
	pthread_mutex_lock(&lock);
	if (request == G_GATE_CMD_CREATE)
		error = ctl_create(arg);
	else if (request == G_GATE_CMD_DESTROY)
		error = ctl_destroy(arg);
	else if (request == G_GATE_CMD_CANCEL)
		error = ctl_cancel(arg);
	else if (request == G_GATE_CMD_MODIFY)
		error = ctl_modify(arg);
	else if (request == G_GATE_CMD_START)
		error = ctl_start(arg, interrupted, ctx);
	else
		error = ctl_done(arg);
	pthread_mutex_unlock(&lock);
	return error;
}

int
ggsim_session_open(void)
{
	int error = 0;

	pthread_mutex_lock(&lock);
	if (shutting_down) {
		error = ESHUTDOWN;
	} else {
		sessions++;
		session_seen = 1;
	}
	pthread_mutex_unlock(&lock);
	return error;
}

void
ggsim_session_close(void)
{
	pthread_mutex_lock(&lock);
	sessions--;
	pthread_cond_broadcast(&lifecycle_cv);
	pthread_mutex_unlock(&lock);
}

void
ggsim_wait_until_idle(void)
{
	time_t started = time(NULL);
	struct timespec until;

	pthread_mutex_lock(&lock);
	while (sessions > 0 || unit_count() > 0 ||
	    (!session_seen && time(NULL) - started < FIRST_SESSION_SECONDS)) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec++;
		pthread_cond_timedwait(&lifecycle_cv, &lock, &until);
	}
	shutting_down = 1;
	pthread_mutex_unlock(&lock);
}

/* g_conf_cat_escaped(): markup characters and bytes past 0x7e as &#xNN;. */
static void
put_escaped(FILE *out, const char *s)
{
	for (const unsigned char *c = (const unsigned char *)s; *c != '\0'; c++) {
		if (*c == '&' || *c == '<' || *c == '>' || *c == '\'' || *c == '"' || *c > 0x7e)
			fprintf(out, "&#x%X;", *c);
		else if (*c == '\t' || *c == '\n' || *c == '\r' || *c > 0x1f)
			fputc(*c, out);
		else
			fputc('?', out);
	}
}

/*
 * The GATE class with a geom and provider per unit (g_gate_dumpconf's
 * config, its info unescaped as g_gate.c prints it), and the DEV class
 * with the geom and consumer geom_dev.c tastes onto every provider; the
 * layout and indentation of geom_dump.c's g_conf_class, g_conf_geom,
 * g_conf_consumer and g_conf_provider. A provider's mode is the sum of its
 * consumers': here its DEV consumer's.
 */
char *
ggsim_confxml(void)
{
	static const char gate_class, dev_class;
	char *text = NULL;
	size_t length = 0;
	FILE *out = open_memstream(&text, &length);

	if (out == NULL)
		return NULL;
	pthread_mutex_lock(&lock);
	fputs("<mesh>\n", out);
	fprintf(out, "  <class id=\"%p\">\n    <name>GATE</name>\n", (const void *)&gate_class);
	for (int unit = 0; unit < MAX_UNITS; unit++) {
		struct ggsim_provider *p = units[unit];
		if (p == NULL)
			continue;
		fprintf(out, "    <geom id=\"%p\">\n      <class ref=\"%p\"/>\n      <name>", (void *)&p->inqueue, (const void *)&gate_class);
		put_escaped(out, p->name);
		fputs("</name>\n      <rank>1</rank>\n      <config>\n", out);
		fprintf(out, "\t<access>%s</access>\n", (p->flags & G_GATE_FLAG_READONLY) ? "read-only" :
		    (p->flags & G_GATE_FLAG_WRITEONLY) ? "write-only" : "read-write");
		if (p->readfd >= 0) {
			fprintf(out, "\t<read_offset>%jd</read_offset>\n\t<read_provider>", (intmax_t)p->readoffset);
			put_escaped(out, p->readprov);
			fputs("</read_provider>\n", out);
		}
		fprintf(out, "\t<timeout>%u</timeout>\n\t<info>%s</info>\n", p->timeout, p->info);
		fprintf(out, "\t<queue_count>%u</queue_count>\n\t<queue_size>%u</queue_size>\n", p->queue_count, p->maxcount);
		fprintf(out, "\t<ref>%d</ref>\n\t<unit>%d</unit>\n      </config>\n", p->refs, p->unit);
		fprintf(out, "\t<provider id=\"%p\">\n\t  <geom ref=\"%p\"/>\n", (void *)p, (void *)&p->inqueue);
		fprintf(out, "\t  <mode>r%dw%de0</mode>\n\t  <name>", p->acr, p->acw);
		put_escaped(out, p->name);
		fprintf(out, "</name>\n\t  <mediasize>%jd</mediasize>\n\t  <sectorsize>%u</sectorsize>\n", (intmax_t)p->mediasize, p->sectorsize);
		fputs("\t  <stripesize>0</stripesize>\n\t  <stripeoffset>0</stripeoffset>\n\t  <config>\n\t  </config>\n\t</provider>\n", out);
		fputs("    </geom>\n", out);
	}
	fputs("  </class>\n", out);
	fprintf(out, "  <class id=\"%p\">\n    <name>DEV</name>\n", (const void *)&dev_class);
	for (int unit = 0; unit < MAX_UNITS; unit++) {
		struct ggsim_provider *p = units[unit];
		if (p == NULL)
			continue;
		fprintf(out, "    <geom id=\"%p\">\n      <class ref=\"%p\"/>\n      <name>", (void *)&p->outqueue, (const void *)&dev_class);
		put_escaped(out, p->name);
		fputs("</name>\n      <rank>2</rank>\n", out);
		fprintf(out, "\t<consumer id=\"%p\">\n\t  <geom ref=\"%p\"/>\n\t  <provider ref=\"%p\"/>\n", (void *)&p->start_cv, (void *)&p->outqueue, (void *)p);
		fprintf(out, "\t  <mode>r%dw%de0</mode>\n\t</consumer>\n    </geom>\n", p->acr, p->acw);
	}
	fputs("  </class>\n</mesh>\n", out);
	pthread_mutex_unlock(&lock);
	fclose(out);
	return text;
}

struct ggsim_provider *
ggsim_provider_open(const char *name, int readable, int writable, int *error)
{
	struct ggsim_provider *p;

	pthread_mutex_lock(&lock);
	p = find_by_name(name);
	if (p == NULL)
		*error = ENOENT;
	else if (writable && (p->flags & G_GATE_FLAG_READONLY))
		*error = EPERM;
	else {
		p->acr += readable;
		p->acw += writable;
		p->refs++;
		*error = 0;
	}
	pthread_mutex_unlock(&lock);
	return *error == 0 ? p : NULL;
}

void
ggsim_provider_close(struct ggsim_provider *p, int readable, int writable)
{
	pthread_mutex_lock(&lock);
	p->acr -= readable;
	p->acw -= writable;
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
	if (cmd == BIO_READ && p->readfd >= 0 && !p->destroying) {
		/* g_gate_start's direct read, on a descriptor of its own: MODIFY may close the provider's meanwhile. */
		int fd = dup(p->readfd);
		int64_t at = offset + p->readoffset;

		pthread_mutex_unlock(&lock);
		ssize_t n = fd >= 0 ? pread(fd, data, (size_t)length, at) : -1;
		if (fd >= 0)
			close(fd);
		if (n == length)
			return 0;
		/* g_gate_done: a direct read that failed goes through the daemon. */
		pthread_mutex_lock(&lock);
	}
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
		bp.seq = p->next_seq++;
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

int
ggsim_unit_io(int unit, uint32_t cmd, int64_t offset, int64_t length, void *data)
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

/*
 * The ggctl simulator's internal interfaces. The simulated kernel side of
 * GEOM Gate (kernel.c) and the FUSE mount that shows each provider as a
 * file (fuse-export.c) run in a process of their own (kernel-main.c), so
 * that providers outlive the daemon that made them, as in FreeBSD; the
 * libc geom-rowr loads (libc-boundary.c) talks to it over wire.h.
 */
#ifndef GGSIM_H
#define GGSIM_H

#include <stddef.h>
#include <stdint.h>

struct ggsim_provider;

/*
 * kernel.c: an ioctl on /dev/ggctl; returns 0 or the errno it fails with.
 * A START sleeps until a bio is queued or the provider is destroyed, or
 * until interrupted(ctx) is true: a signal for the calling thread, or its
 * process gone.
 */
int ggsim_ctl_ioctl(unsigned long request, void *arg, int (*interrupted)(void *ctx), void *ctx);

/* kernel.c: open /dev/ggctl descriptors; 0, or ESHUTDOWN once the kernel is going away. */
int ggsim_session_open(void);
void ggsim_session_close(void);
/* Returns once no provider exists and no descriptor is open; no session opens after it. */
void ggsim_wait_until_idle(void);

/* kernel.c: kern.geom.confxml for the simulated providers (malloc'd, NUL-terminated). */
char *ggsim_confxml(void);

/* kernel.c: the provider side, for the FUSE file of each provider. */
struct ggsim_provider *ggsim_provider_open(const char *name, int readable, int writable, int *error);
void ggsim_provider_close(struct ggsim_provider *p, int readable, int writable);
int64_t ggsim_provider_mediasize(const struct ggsim_provider *p);
uint32_t ggsim_provider_sectorsize(const struct ggsim_provider *p);
/* Queues one bio and waits for it; returns a FreeBSD errno (0: done). */
int ggsim_provider_io(struct ggsim_provider *p, uint32_t cmd, int64_t offset, int64_t length, void *data);
/* A bio on a unit, as a GEOM consumer would queue it (tests); a FreeBSD errno. */
int ggsim_unit_io(int unit, uint32_t cmd, int64_t offset, int64_t length, void *data);
/* Calls fn for each live provider's name and size, under the lock. */
void ggsim_provider_each(void (*fn)(void *ctx, const char *name, int64_t mediasize), void *ctx);
int ggsim_provider_stat(const char *name, int64_t *mediasize, uint32_t *sectorsize);

/* fuse-export.c */
int ggsim_fuse_start(const char *mountpoint);
void ggsim_fuse_stop(void);

#endif

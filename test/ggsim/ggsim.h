/*
 * The ggctl simulator's internal interfaces: the simulated kernel side of
 * GEOM Gate (kernel.c), the libc entry points (libc-boundary.c) and the FUSE
 * mount that shows each provider as a file (fuse-export.c).
 */
#ifndef GGSIM_H
#define GGSIM_H

#include <stdint.h>

struct ggsim_provider;

/* kernel.c: /dev/ggctl. Each returns 0 or sets errno and returns -1. */
int ggsim_ctl_open(void);
int ggsim_ctl_is(int fd);
int ggsim_ctl_ioctl(int fd, unsigned long request, void *arg);
void ggsim_ctl_close(int fd);

/* kernel.c: the provider side, for the FUSE file of each provider. */
struct ggsim_provider *ggsim_provider_open(const char *name, int writable, int *error);
void ggsim_provider_close(struct ggsim_provider *p);
int64_t ggsim_provider_mediasize(const struct ggsim_provider *p);
uint32_t ggsim_provider_sectorsize(const struct ggsim_provider *p);
/* Queues one bio and waits for it; returns a FreeBSD errno (0: done). */
int ggsim_provider_io(struct ggsim_provider *p, uint32_t cmd, int64_t offset, int64_t length, void *data);
/* Calls fn for each live provider's name and size, under the lock. */
void ggsim_provider_each(void (*fn)(void *ctx, const char *name, int64_t mediasize), void *ctx);
int ggsim_provider_stat(const char *name, int64_t *mediasize, uint32_t *sectorsize);

/* fuse-export.c */
int ggsim_fuse_start(const char *mountpoint);
void ggsim_fuse_stop(void);

#endif

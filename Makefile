# geom-rowr: make (build), make test, make demo, make vmtest.
SHELL := /bin/sh

.PHONY: all setup system-deps build install uninstall ggsim vmguest typecheck lint test vmtest demo bench soak clean

all: build

system-deps:
	scripts/install-system-deps.sh

node_modules: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

build: node_modules
	npx tsc -p tsconfig.build.json
	chmod +x dist/bin/geom-rowr.js

setup: system-deps build ggsim

# geom-rowr on PATH: the compiled program and its runtime dependencies in
# $(LIBDIR), the command a link in $(BINDIR), the man page in $(MANDIR).
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib/geom-rowr
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man/man8

install: build
	rm -rf $(DESTDIR)$(LIBDIR)
	mkdir -p $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)
	cp -R dist boot docs package.json package-lock.json $(DESTDIR)$(LIBDIR)/
	cd $(DESTDIR)$(LIBDIR) && npm ci --omit=dev --no-audit --no-fund --ignore-scripts
	ln -sf $(LIBDIR)/dist/bin/geom-rowr.js $(DESTDIR)$(BINDIR)/geom-rowr
	cp geom-rowr.8 $(DESTDIR)$(MANDIR)/geom-rowr.8

uninstall:
	rm -rf $(DESTDIR)$(LIBDIR) $(DESTDIR)$(BINDIR)/geom-rowr $(DESTDIR)$(MANDIR)/geom-rowr.8

# The ggctl simulator (test-only): GEOM Gate's kernel side in a process of
# its own (build/ggsim-kernel), and the shared library that geom-rowr loads
# in place of libc (GEOM_ROWR_LIBC) to reach it.
GGSIM_HEADERS := $(wildcard test/ggsim/*.h)
GGSIM_CFLAGS := -std=gnu11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden
GGSIM_KERNEL_SOURCES := test/ggsim/kernel.c test/ggsim/kernel-main.c test/ggsim/fuse-export.c test/ggsim/wire.c

ggsim: build/ggsim.so build/ggsim-kernel

build/ggsim/%.o: test/ggsim/%.c $(GGSIM_HEADERS)
	@mkdir -p build/ggsim
	cc $(GGSIM_CFLAGS) $(if $(filter fuse-export,$*),$$(pkg-config --cflags fuse3)) -c -o $@ $<

build/ggsim.so: build/ggsim/libc-boundary.o build/ggsim/wire.o
	cc -shared -o $@ $^ -ldl -lpthread

build/ggsim-kernel: $(patsubst test/ggsim/%.c,build/ggsim/%.o,$(GGSIM_KERNEL_SOURCES))
	cc -o $@ $^ $$(pkg-config --libs fuse3) -lpthread

typecheck: node_modules
	npx tsc -p tsconfig.json --noEmit

# Shell scripts, then the TypeScript: Biome's formatting and lint rules
# (import cycles included, biome.jsonc) and no export that nothing imports.
# `npx biome format --write .` formats.
lint: system-deps node_modules
	shellcheck scripts/*.sh .ci/run
	shellcheck -s sh boot/*.sh boot/linux/*.sh boot/rc.d/* test/vm/guest/*.sh
	npx biome ci .
	npx tsc -p scripts/tsconfig.json
	node build/scripts/unused-exports.js .

# The guests test/vm boots under qemu, from Debian's packages and dist/
# (cached in build/vm/; rebuilt when an input changes).
vmguest: build
	scripts/build-vm-guest.sh

test: setup typecheck lint vmguest
	npx tap

# Only the virtual-machine tests: Linux's nbd driver and the live boot.
vmtest: setup vmguest
	npx tap test/vm

demo: setup install
	scripts/demo.sh

clean:
	rm -rf dist build .tap

# The crash test for longer than the suite runs it: SOAK_ROUNDS SIGKILLs.
SOAK_ROUNDS ?= 2000
soak: setup
	GEOM_ROWR_CRASH_ROUNDS=$(SOAK_ROUNDS) npx tap --disable-coverage --timeout=0 test/crash.ts

# Side by side with nbdkit's cow filter and qemu-nbd, and hydration against dd
# and under client load (bench/hydration.ts); not part of the tests.
bench: setup
	node dist/bench/bench.js $(BENCH_ARGS)
	node dist/bench/hydration.js $(HYDRATION_BENCH_ARGS)

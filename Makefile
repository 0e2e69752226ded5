# geom-rowr: make (build), make test, make demo.
SHELL := /bin/bash

.PHONY: all setup system-deps build typecheck lint test demo bench clean

all: build

system-deps:
	scripts/install-system-deps.sh

node_modules: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

build: node_modules
	npx tsc -p tsconfig.build.json
	chmod +x dist/bin/geom-rowr.js

setup: system-deps build

typecheck: node_modules
	npx tsc -p tsconfig.json --noEmit

lint: system-deps
	shellcheck scripts/*.sh .ci/run
	shellcheck -s sh boot/*.sh

test: setup typecheck lint
	npx tap

demo: setup
	scripts/demo.sh

clean:
	rm -rf dist .tap

# Side by side with nbdkit's cow filter and qemu-nbd; not part of the tests.
bench: setup
	node dist/bench/bench.js $(BENCH_ARGS)

# blockvol — see README.md.
GO      ?= go
PREFIX  ?= /usr/local
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: build install plugin test setup unit bench fuzz vet clean e2e-vm e2e-multihost e2e-systemd

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/blockvol ./cmd/blockvol

# Installs the binary, and the example config only where none exists (it
# may hold passwords: 0600). Never overwrites an operator's config.
install: build
	install -D -m 0755 bin/blockvol $(DESTDIR)$(PREFIX)/bin/blockvol
	install -d -m 0755 $(DESTDIR)/etc/blockvol
	[ -e $(DESTDIR)/etc/blockvol/config.toml ] || install -m 0600 config.example.toml $(DESTDIR)/etc/blockvol/config.toml

# The Docker managed (v2) plugin $(PLUGIN):$(VERSION), assembled from this
# machine's files (docker-plugin/build.sh; no image pulled) and created in
# the Docker daemon $(DOCKER) talks to. docs/managed-plugin.md.
PLUGIN ?= blockvol
DOCKER ?= docker
plugin:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/plugin/blockvol ./cmd/blockvol
	docker-plugin/build.sh bin/plugin/blockvol bin/plugin/dir
	$(DOCKER) plugin create $(PLUGIN):$(VERSION) bin/plugin/dir

# The whole suite. As root it first installs what is missing (test/setup.sh:
# Debian packages, the VM kernel, the OpenStack services), so nothing is
# skipped: real loop devices, mkfs, mounts, a private dockerd, qemu guests.
test: setup vet
	$(GO) test -count=1 -timeout 30m ./...

# The real-kernel tests alone: a qemu VM (software emulation, no network
# device) boots Debian's cloud kernel with the real blockvol, tgtd, iscsid
# and mkfs inside; `make test` runs them too. test/vm/setup.sh installs
# qemu and fetches the kernel.
e2e-vm:
	$(GO) test -count=1 -v -timeout 15m -run 'TestVM' ./test/vm/

# install.sh and the units on a real systemd: a qemu guest boots Debian
# with systemd as PID 1 and Docker (the disk test/systemd/setup.sh builds
# and caches), installs, reboots with a volume in use, stops, restarts,
# uninstalls and purges; `make test` runs it too (TestSystemdGuest).
e2e-systemd:
	test/systemd/setup.sh
	$(GO) test -count=1 -v -timeout 30m ./test/systemd/

# Idempotent and quick when everything is there; as non-root it only says
# that `sudo make test` installs the tools.
setup:
	test/setup.sh

# SOAK_ROUNDS rounds of Create/Mount/Unmount/Remove against the real
# binary, killed with SIGKILL at random moments (slowed losetup/mkfs in one
# round of four); prints rounds, leaks and inconsistencies, which must be 0.
# `make test` runs 20 rounds. Needs root.
SOAK_ROUNDS ?= 200
soak:
	$(GO) test -count=1 -v -timeout 60m -run '^TestSoak$$' ./test/soak/ -soak.rounds=$(SOAK_ROUNDS)

# Two agent guests and a target host (tgtd and sshd in a network namespace
# the test makes): move, refusal, failover with fencing, parallel mounts,
# with real kernels; `make test` runs them too (TestMultiHost).
e2e-multihost:
	$(GO) test -count=1 -v -timeout 20m -run 'TestMultiHost' ./test/vm/

# Only what needs neither root nor external tools.
unit:
	$(GO) test -count=1 -short ./...

vet:
	$(GO) vet ./...

# Benchmarks print figures and ratios; they never pass or fail on time.
# BenchmarkMultiHost runs with -v: without it go test cuts a benchmark's
# log to 10 lines, and its ratios are in the log.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 20x ./fs/
	$(GO) test -run '^$$' -bench 'List' ./backends/loop/
	$(GO) test -run '^$$' -bench 'RootSnapshot10G' -benchtime 3x -timeout 20m ./backends/loop/
	$(GO) test -run '^$$' -bench 'RootGrowOnline' -benchtime 5x ./plugin/
	$(GO) test -run '^$$' -bench 'CreateMount|Parallel' -benchtime 10x ./plugin/
	$(GO) test -run '^$$' -bench 'Queries10k' -benchtime 2000x ./plugin/
	$(GO) test -run '^$$' -bench 'CSIvsDocker' -benchtime 20x ./csi/
	$(GO) test -run '^$$' -bench 'CreateRun' -benchtime 10x -timeout 20m ./test/e2e/
	$(GO) test -run '^$$' -bench 'PluginLoad10k' -benchtime 2000x -timeout 20m ./test/e2e/
	$(GO) test -run '^$$' -bench 'VM' -benchtime 1x -timeout 15m ./test/vm/
	$(GO) test -run '^$$' -v -bench 'MultiHost' -benchtime 1x -timeout 35m ./test/vm/
	$(GO) test -run '^$$' -bench 'CloudCycle' -benchtime 5x -timeout 15m ./backends/cinder/
	$(GO) test -run '^$$' -bench 'CloudCreateRemoveFloor' -benchtime 10x -timeout 15m ./backends/cinder/

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseOptions -fuzztime 30s ./volumes/
	$(GO) test -run '^$$' -fuzz FuzzParseMountOptions -fuzztime 30s ./fs/

clean:
	rm -rf bin

# nodeinfra: node-level infrastructure for Kubernetes.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.tools
# Debian's promtool (bookworm's prometheus 2.42), unpacked from its package.
PROMTOOL := $(TOOLS)/bin/promtool-2.42
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/nodeinfra/nodeinfra/pkg/version.Version=$(VERSION)

# Pinned code generators (go.mod pins the runtime libraries).
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
# csi-sanity, run by `make test` against csi-ceph.
CSI_SANITY_VERSION := v5.6.0
# The peer measured by `make bench`.
HOST_DEVICE_VERSION := v1.9.1

.PHONY: all build test bench soak demo proto lint prereqs tools guest-kernel clean

all: build

# The sandbox guest: the agent (/init, static), its initramfs (with
# Debian's busybox-static) and the tailored kernel (cached by build.sh).
GUEST_BIN := $(BIN)/nodeagent-guest

build:
	@mkdir -p $(BIN) $(GUEST_BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/cni-eni ./cni-eni
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/nodeagent ./nodeagent
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/csi-ceph ./csi-ceph
	CGO_ENABLED=0 $(GO) build -ldflags "-s -w $(LDFLAGS)" -o $(GUEST_BIN)/init ./nodeagent/guest/agent
	@dpkg-query -W -f='$${Status}' busybox-static 2>/dev/null | grep -q "install ok installed" || \
		./e2e/setup/apt-install.sh "guest initramfs" busybox-static
	$(GO) run ./nodeagent/guest/mkinitramfs -init $(GUEST_BIN)/init -busybox /bin/busybox -o $(GUEST_BIN)/initramfs.cpio
	@kernel=$$(./nodeagent/guest/kernel/build.sh) && \
		{ ln -f "$$kernel" $(GUEST_BIN)/vmlinux 2>/dev/null || cp -f "$$kernel" $(GUEST_BIN)/vmlinux; }

# Debian packages: network tools, and Ceph (daemons for the test cluster,
# the -dev libraries go-ceph links against, rbd-fuse).
prereqs:
	@./e2e/setup/prereqs.sh
	@./e2e/setup/ceph-install.sh

# go-ceph needs the tag of the Ceph release Debian ships (Pacific).
GOFLAGS += -tags=pacific
export GOFLAGS

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Unit tests and the e2e tests on real namespaces, a real Ceph cluster
# (one for the whole run) and the built binaries.
test: prereqs lint build tools
	NODEINFRA_CSI_SANITY=$(TOOLS)/bin/csi-sanity-$(CSI_SANITY_VERSION) NODEINFRA_PROMTOOL=$(PROMTOOL) ./e2e/run-tests.sh $(BIN)

# The sandbox guest kernel (tinyconfig + nodeagent/guest/kernel/guest.config,
# from Debian's linux-source-6.1), cached under /var/cache/nodeinfra/kernel.
guest-kernel:
	@./nodeagent/guest/kernel/build.sh

# Test tools built from their Go modules at pinned versions.
tools:
	@mkdir -p $(TOOLS)/bin
	@./e2e/setup/promtool.sh $(PROMTOOL)
	@test -x $(TOOLS)/bin/csi-sanity-$(CSI_SANITY_VERSION) || { \
		GOBIN=$(TOOLS)/cs $(GO) install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$(CSI_SANITY_VERSION) && \
		mv $(TOOLS)/cs/csi-sanity $(TOOLS)/bin/csi-sanity-$(CSI_SANITY_VERSION); }

bench: prereqs build
	@mkdir -p $(TOOLS)/bin
	@test -x $(TOOLS)/bin/host-device-$(HOST_DEVICE_VERSION) || { \
		GOBIN=$(TOOLS)/hd $(GO) install github.com/containernetworking/plugins/plugins/main/host-device@$(HOST_DEVICE_VERSION) && \
		mv $(TOOLS)/hd/host-device $(TOOLS)/bin/host-device-$(HOST_DEVICE_VERSION); }
	@test -x $(TOOLS)/bin/static-$(HOST_DEVICE_VERSION) || { \
		GOBIN=$(TOOLS)/hd $(GO) install github.com/containernetworking/plugins/plugins/ipam/static@$(HOST_DEVICE_VERSION) && \
		mv $(TOOLS)/hd/static $(TOOLS)/bin/static-$(HOST_DEVICE_VERSION); }
	$(GO) run ./e2e/bench/cni --bin $(BIN) \
		--host-device $(TOOLS)/bin/host-device-$(HOST_DEVICE_VERSION) \
		--static $(TOOLS)/bin/static-$(HOST_DEVICE_VERSION) --peer-version $(HOST_DEVICE_VERSION)
	$(GO) run ./e2e/bench/csi --bin $(BIN)
	$(GO) run ./e2e/bench/sandbox --bin $(BIN)
	$(GO) run ./e2e/bench/resources --bin $(BIN)

# Soak (not part of `make test`; about 10 minutes): 1000 CNI ADD/DEL, 200
# sandbox create/exec/delete and 200 CSI stage/unstage cycles on one node,
# failing if links, taps, qdiscs, cgroups, fds, threads, goroutines, loop
# devices, mounts, state files or QEMU processes grew. Smaller:
# make soak SOAK_FLAGS="--cni 50 --sandboxes 6 --csi 6"
soak: prereqs build
	$(GO) run ./e2e/soak --bin $(BIN) $(SOAK_FLAGS)

demo: prereqs build
	./e2e/demo/demo.sh $(BIN)

proto:
	@./e2e/setup/prereqs.sh --proto
	@mkdir -p $(TOOLS)/bin
	GOBIN=$(TOOLS)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(TOOLS)/bin:$$PATH protoc -I nodeagent/api/v1 \
		--go_out=paths=source_relative:nodeagent/api/v1 \
		--go-grpc_out=paths=source_relative:nodeagent/api/v1 \
		nodeagent/api/v1/*.proto

clean:
	rm -rf $(BIN)

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

# The Kubernetes binaries of the single-node test cluster (e2e/k8s: up.sh,
# smoke.sh, down.sh), v1.34.4 from the Go module proxy (e2e/k8s/tools),
# cached under /var/cache/nodeinfra/k8s: about 1050 CPU seconds once (10-18
# minutes here), then a no-op.
.PHONY: k8s-bins
k8s-bins:
	@GOFLAGS= ./e2e/k8s/build.sh

# Container images, as archives for `ctr -n k8s.io images import` (no
# daemon, no registry): bin/images/NAME-TAG.tar. The root file systems are
# Debian packages (mmdebstrap, e2e/images/NAME.packages), cached under
# IMAGE_CACHE; our binaries are built static where they can be (cni-eni
# runs on the host, whatever its libc) and stripped. Check them with
# NODEINFRA_IMAGES=$(IMAGES) go test ./e2e/images (root).
IMAGES = $(BIN)/images
IMAGE_BIN = $(BIN)/image-bin
IMAGE_REPO ?= ghcr.io/nodeinfra
IMAGE_TAG ?= $(VERSION)
IMAGE_CACHE ?= /var/cache/nodeinfra/images
# The pause image under the name Kubernetes 1.31+ (kubeadm) expects and
# under containerd 1.6's default sandbox_image (Debian 12's containerd).
PAUSE_VERSION := 3.10
PAUSE_TAGS := registry.k8s.io/pause:$(PAUSE_VERSION) registry.k8s.io/pause:3.6

.PHONY: images k8s-images

# nodeagent: the manifests' init container copies /usr/local/bin/cni-eni;
# the agent boots the guest from nodeagent-guest/ beside its binary.
images: build
	@./e2e/setup/images-prereqs.sh
	@mkdir -p $(IMAGES) $(IMAGE_BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o $(IMAGE_BIN)/nodeagent ./nodeagent
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o $(IMAGE_BIN)/cni-eni ./cni-eni
	$(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o $(IMAGE_BIN)/csi-ceph ./csi-ceph
	$(GO) build -o $(IMAGE_BIN)/mkimage ./e2e/images/mkimage
	rootfs=$$(NODEINFRA_IMAGE_CACHE=$(IMAGE_CACHE) ./e2e/images/rootfs.sh e2e/images/nodeagent.packages) && \
	$(IMAGE_BIN)/mkimage -o $(IMAGES)/nodeagent-$(IMAGE_TAG).tar -tag $(IMAGE_REPO)/nodeagent:$(IMAGE_TAG) \
		-rootfs "$$rootfs" \
		-file $(IMAGE_BIN)/nodeagent=/usr/local/bin/nodeagent \
		-file $(IMAGE_BIN)/cni-eni=/usr/local/bin/cni-eni \
		-file $(GUEST_BIN)/vmlinux=/usr/local/bin/nodeagent-guest/vmlinux \
		-file $(GUEST_BIN)/initramfs.cpio=/usr/local/bin/nodeagent-guest/initramfs.cpio \
		-entrypoint /usr/local/bin/nodeagent -cmd version \
		-label org.opencontainers.image.version=$(VERSION)
	rootfs=$$(NODEINFRA_IMAGE_CACHE=$(IMAGE_CACHE) ./e2e/images/rootfs.sh e2e/images/csi-ceph.packages) && \
	$(IMAGE_BIN)/mkimage -o $(IMAGES)/csi-ceph-$(IMAGE_TAG).tar -tag $(IMAGE_REPO)/csi-ceph:$(IMAGE_TAG) \
		-rootfs "$$rootfs" \
		-file $(IMAGE_BIN)/csi-ceph=/usr/local/bin/csi-ceph \
		-entrypoint /usr/local/bin/csi-ceph -cmd --help \
		-label org.opencontainers.image.version=$(VERSION)
	@ls -l $(IMAGES)/nodeagent-$(IMAGE_TAG).tar $(IMAGES)/csi-ceph-$(IMAGE_TAG).tar

# What a cluster without a registry needs besides our images: the pause
# image (e2e/images/pause) and the CSI sidecars that manifests/csi-ceph
# names, each built from its Go module at the named version (binaries
# cached under IMAGE_CACHE/sidecars).
k8s-images:
	@mkdir -p $(IMAGES) $(IMAGE_BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(PAUSE_VERSION)" -o $(IMAGE_BIN)/pause ./e2e/images/pause
	$(GO) build -o $(IMAGE_BIN)/mkimage ./e2e/images/mkimage
	$(IMAGE_BIN)/mkimage -o $(IMAGES)/pause-$(PAUSE_VERSION).tar $(foreach t,$(PAUSE_TAGS),-tag $(t)) \
		-file $(IMAGE_BIN)/pause=/pause -entrypoint /pause -label org.opencontainers.image.version=$(PAUSE_VERSION)
	$(GO) run ./e2e/images/sidecars -manifests manifests/csi-ceph -cache $(IMAGE_CACHE)/sidecars -o $(IMAGES)

# The suite as it ships, run by Kubernetes itself (e2e/k8s): images
# (tagged as the manifests name them), the sidecars, the Kubernetes
# binaries, then e2e/k8s/e2e.sh: a Ceph cluster and a single-node
# Kubernetes on this machine, the suite installed with kustomize, the
# scenarios, everything torn down. As root.
.PHONY: e2e-k8s
e2e-k8s: prereqs build tools
	$(MAKE) images IMAGE_TAG=v0.1.0
	$(MAKE) k8s-images
	$(MAKE) k8s-bins
	./e2e/k8s/e2e.sh $(BIN)

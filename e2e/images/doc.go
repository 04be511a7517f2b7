// Package images builds the project's container images without a
// container daemon or a registry, as archives for `ctr -n k8s.io images
// import`: `make images` (nodeagent, csi-ceph: Debian root file systems
// from rootfs.sh and NAME.packages, our binaries on top, written by
// mkimage through package oci) and `make k8s-images` (the pause image
// from pause/, the CSI sidecars from their Go modules by sidecars/).
//
// Its test unpacks every archive of $NODEINFRA_IMAGES and runs the
// images' binaries in a chroot; it skips when the variable is unset.
package images

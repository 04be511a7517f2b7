// Package version carries the suite's version, set at link time with
// -ldflags "-X github.com/nodeinfra/nodeinfra/pkg/version.Version=...".
package version

// Version of the binaries.
var Version = "dev"

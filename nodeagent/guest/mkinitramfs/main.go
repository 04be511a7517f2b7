// Command mkinitramfs writes the sandbox guest's initramfs: the guest agent
// as /init and a static busybox with its applets linked in /bin.
//
//	mkinitramfs -init bin/nodeagent-guest/init -busybox /bin/busybox -o initramfs.cpio
package main

import (
	"context"
	"flag"
	"fmt"
	"os"

	"github.com/nodeinfra/nodeinfra/nodeagent/guest/initramfs"
)

func main() {
	var spec initramfs.Spec
	var out string
	flag.StringVar(&spec.Init, "init", "", "the guest agent binary (static), installed as /init")
	flag.StringVar(&spec.Busybox, "busybox", "/bin/busybox", "a static busybox (Debian: busybox-static)")
	flag.StringVar(&out, "o", "", "the initramfs to write (newc cpio, uncompressed)")
	flag.Parse()
	if spec.Init == "" || out == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: mkinitramfs -init PATH [-busybox PATH] -o PATH")
		os.Exit(2)
	}
	if err := initramfs.WriteFile(context.Background(), out, spec); err != nil {
		fmt.Fprintln(os.Stderr, "mkinitramfs:", err)
		os.Exit(1)
	}
}

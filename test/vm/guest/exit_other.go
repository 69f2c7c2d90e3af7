//go:build !amd64

package main

import (
	"fmt"
	"os"
)

// debugExit needs x86 port I/O; the test VM is amd64 only.
func debugExit(n int) int {
	fmt.Fprintln(os.Stderr, "vmguest: isa-debug-exit needs amd64")
	return 1
}

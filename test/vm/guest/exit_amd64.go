package main

import (
	"fmt"
	"os"
	"runtime"
	"syscall"
)

func outb(port uint16, val uint8) // outb_amd64.s

// debugExitPort is qemu's isa-debug-exit device (-device
// isa-debug-exit,iobase=0xf4): writing v makes qemu exit with (v<<1)|1.
const debugExitPort = 0xf4

// debugExit reports the verdict n (0 pass, 1 fail) to the host. It
// returns only when there is no such device.
func debugExit(n int) int {
	// ioperm grants port access to the calling OS thread only: stay on it
	// until the outb, or the write faults on another thread.
	runtime.LockOSThread()
	if _, _, e := syscall.Syscall(syscall.SYS_IOPERM, debugExitPort, 1, 1); e != 0 {
		fmt.Fprintln(os.Stderr, "ioperm:", e)
		return 1
	}
	outb(debugExitPort, uint8(n))
	fmt.Fprintln(os.Stderr, "vmguest: still running after isa-debug-exit: no such device?")
	return 1
}

package iscsitarget

import (
	"context"

	"github.com/blockvol/blockvol/hostexec"
)

// Host runs programs on the iSCSI target host: this host (LocalHost) or
// another one reached over SSH (package sshhost). Programs get their
// arguments verbatim, never through a shell built from them.
type Host interface {
	// Run runs a program to completion, as hostexec.Runner does: a
	// non-zero exit is an *hostexec.ExitError carrying the code and the
	// standard error text.
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
	// Hold starts a program that holds something (the backend's lock)
	// for as long as its standard input stays open. It returns the first
	// line the program prints on standard output, once printed, and
	// release, which closes the program's standard input and waits for it
	// to exit. A program that exits before printing a line yields its
	// error as Run would. When ctx ends before the line arrives the
	// program is stopped and ctx's error returned; once the line is there
	// ctx no longer matters.
	Hold(ctx context.Context, name string, args ...string) (line string, release func() error, err error)
}

// LocalHost is the target host when it is this host: Run goes through a
// hostexec.Runner, Hold through hostexec.OS.
type LocalHost struct {
	hostexec.Runner
}

// Hold implements Host with hostexec.OS.
func (h LocalHost) Hold(ctx context.Context, name string, args ...string) (string, func() error, error) {
	return hostexec.OS{}.Hold(ctx, name, args...)
}

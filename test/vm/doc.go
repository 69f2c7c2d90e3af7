// Package vm runs blockvol against a real Linux kernel: a qemu virtual
// machine (software emulation, no KVM needed) boots Debian's cloud kernel
// with an initramfs that holds the real, statically linked blockvol binary,
// tgtd, iscsid/iscsiadm, mkfs, udev and a guest driver program
// (test/vm/guest). The guest driver runs scenarios through the plugin
// socket, against tgtd on the guest's own 127.0.0.1 — the VM has no network
// device — and reports every step on the serial console as "VMTEST ..."
// lines, and pass or fail through qemu's isa-debug-exit port.
//
// This host's kernel has no SCSI/iSCSI initiator, so this is the only place
// where `iscsiadm --login` really runs.
//
// The harness, in the order a test uses it:
//
//	k, err := vm.FindKernel()     // extracted by test/vm/setup.sh, cached under /var/tmp
//	q, err := vm.FindQEMU()
//	img, err := vm.BuildGuest(ctx, vm.GuestOptions{Kernel: k, Dir: dir})  // go build + initramfs
//	res, err := vm.Boot(ctx, vm.BootConfig{QEMU: q, Kernel: k, Initrd: img, LogPath: ...})
//	for _, sc := range res.Scenarios() { ... }   // parsed VMTEST lines
//
// FindKernel and FindQEMU return errors wrapping ErrMissing when the kernel
// or qemu is absent: the tests skip only then. Everything else that goes
// wrong is a failure.
//
// The console protocol (one line each, written by the guest driver):
//
//	VMTEST INIT <uptime-seconds> <kernel release>
//	VMTEST PLAN <scenario> <scenario> ...
//	VMTEST BEGIN <scenario>
//	VMTEST STEP <scenario> <seconds> <description>
//	VMTEST TIME <scenario> <metric> <seconds>
//	VMTEST ERROR <scenario> <message>            a failed check; the scenario goes on
//	VMTEST PASS <scenario> <seconds>
//	VMTEST FAIL <scenario> <seconds> <message>
//	VMTEST SKIP <scenario> <reason>
//	VMTEST DONE <pass> <fail> <skip> <seconds>
//	VMTEST READY <name>                          an agent guest serves its control port
//
// Other console lines (kernel messages, indented diagnostics) are kept in
// the console log and attached to the scenario they appear in.
package vm

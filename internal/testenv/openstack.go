package testenv

import (
	"os"
	"syscall"
)

// openStackUsers is held by every test package that uses the OpenStack
// test services (test/openstack) while it uses them: shared while in use,
// exclusively to stop them. So when `go test ./...` runs two such
// packages at once, the one that started the services does not stop them
// under the other's tests.
const openStackUsers = "/run/lock/blockvol-openstack-users.lock"

// OpenStackUse is a package's hold on the OpenStack test services.
type OpenStackUse struct{ f *os.File }

// UseOpenStack takes a shared hold (waiting while another package stops
// the services).
func UseOpenStack() (*OpenStackUse, error) {
	if err := os.MkdirAll("/run/lock", 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(openStackUsers, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		f.Close()
		return nil, err
	}
	return &OpenStackUse{f: f}, nil
}

// Done gives the hold up. With stop (the services were started by this
// package), it first waits until no other package uses them and runs stop
// under the exclusive hold.
// A nil hold only runs stop.
func (u *OpenStackUse) Done(stop func() error) error {
	if u == nil {
		if stop == nil {
			return nil
		}
		return stop()
	}
	defer u.f.Close()
	if stop == nil {
		return nil
	}
	if err := syscall.Flock(int(u.f.Fd()), syscall.LOCK_EX); err != nil {
		return err
	}
	return stop()
}

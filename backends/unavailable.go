package backends

import (
	"context"
	"fmt"
)

// Unavailable returns a Backend that answers every call with err: the
// stand-in for a backend that could not be built at start (a missing SSH
// key, say). The plugin keeps serving its socket, so Docker does not
// disable it, and every call on that backend says why it cannot work.
// Its errors are never sentinel.ErrNotFound: Docker forgets volumes whose Get says
// "not found".
func Unavailable(name, scope string, err error) Backend {
	return &unavailable{scope: scope, err: fmt.Errorf("backend %s is unavailable: %w", name, err)}
}

type unavailable struct {
	scope string
	err   error
}

func (u *unavailable) Scope() string { return u.scope }
func (u *unavailable) Create(context.Context, CreateRequest) (Volume, error) {
	return Volume{}, u.err
}
func (u *unavailable) Get(context.Context, string) (Volume, error)              { return Volume{}, u.err }
func (u *unavailable) List(context.Context) ([]Volume, error)                   { return nil, u.err }
func (u *unavailable) SetMeta(context.Context, string, map[string]string) error { return u.err }
func (u *unavailable) Remove(context.Context, string) error                     { return u.err }
func (u *unavailable) Attach(context.Context, string, AttachOptions) (string, error) {
	return "", u.err
}
func (u *unavailable) Detach(context.Context, string) error { return u.err }

// Check implements Checker.
func (u *unavailable) Check(context.Context) error { return u.err }

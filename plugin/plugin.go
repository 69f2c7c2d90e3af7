// Package plugin is the Docker VolumeDriver front door of blockvol: a thin
// adapter that turns Docker's (and dvdcli's) requests into operations of
// the protocol-free core (package volumes) and its answers into Docker's.
//
// Contract with Docker and dvdcli:
//   - Create carries the options; the core parses and stores them, because
//     Mount never carries them.
//   - Mount/Unmount with an ID are counted by ID (each ID is one user of the
//     core): the volume is mounted at the first and unmounted and detached
//     at the last. An ID-less Mount (dvdcli, Mesos) is one idempotent use;
//     an ID-less Unmount releases it.
//   - A failed Mount undoes its own work: Docker sends no Unmount after it.
//   - Get never fails for a volume this host knows while its backend is
//     unreachable: Docker forgets volumes whose Get fails.
package plugin

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"github.com/blockvol/blockvol/internal/quote"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/volumes"
	"github.com/docker/go-plugins-helpers/volume"
)

// anonymousUser stands for the ID-less use of dvdcli and Mesos. No valid
// mount ID can be it (see userOf).
const anonymousUser = "<no-id>"

// maxIDLen bounds mount IDs, which are stored with the volume and written
// at each of its operations. Docker's are 64 hex digits.
const maxIDLen = 128

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)

// Driver implements volume.Driver over a volumes.Core.
type Driver struct {
	core *volumes.Core
}

var _ volume.Driver = (*Driver)(nil)

// New returns the Docker door of core.
func New(core *volumes.Core) *Driver { return &Driver{core: core} }

// Wait blocks until every operation in flight has returned, or ctx ends.
func (d *Driver) Wait(ctx context.Context) error { return d.core.Wait(ctx) }

// userOf returns the core's user of a Mount or Unmount: its ID, or the
// ID-less user. It refuses reserved, malformed and oversized IDs.
func userOf(id string) (string, error) {
	switch {
	case id == "":
		return anonymousUser, nil
	case id == anonymousUser:
		return "", invalidRequest("mount ID " + quote.Short(id) + " is reserved for mounts without an ID; send no ID instead")
	case len(id) > maxIDLen:
		return "", invalidRequest(fmt.Sprintf("mount ID is %d bytes long; the limit is %d (Docker's are 64 hex digits)", len(id), maxIDLen))
	case !idRE.MatchString(id):
		return "", invalidRequest("mount ID " + quote.Short(id) + " is not valid: use letters, digits, '_', '.', ':' and '-', starting with a letter or digit (Docker's are 64 hex digits)")
	}
	return id, nil
}

// invalidRequest is a refused request; its text is the whole sentence.
type invalidRequest string

func (e invalidRequest) Error() string { return string(e) }

func (e invalidRequest) Is(target error) bool { return target == sentinel.ErrInvalid }

// Create makes a volume with the given options. Creating a name that exists
// already returns it unchanged (its stored options win).
func (d *Driver) Create(req *volume.CreateRequest) error {
	return d.core.Create(context.Background(), req.Name, req.Options)
}

// Remove deletes a volume and its data; it refuses a volume in use.
func (d *Driver) Remove(req *volume.RemoveRequest) error {
	return d.core.Remove(context.Background(), req.Name)
}

// Mount gives the volume to one more container (or the ID-less user) and
// returns its mountpoint.
func (d *Driver) Mount(req *volume.MountRequest) (*volume.MountResponse, error) {
	user, err := userOf(req.ID)
	if err != nil {
		return nil, err
	}
	mp, err := d.core.Use(context.Background(), req.Name, user)
	if err != nil {
		return nil, err
	}
	return &volume.MountResponse{Mountpoint: mp}, nil
}

// Unmount releases one container's use.
func (d *Driver) Unmount(req *volume.UnmountRequest) error {
	user, err := userOf(req.ID)
	if err != nil {
		return err
	}
	return d.core.Release(context.Background(), req.Name, user)
}

// Get describes one volume; see the package comment for an unreachable
// backend.
func (d *Driver) Get(req *volume.GetRequest) (*volume.GetResponse, error) {
	info, err := d.core.Get(context.Background(), req.Name)
	if err != nil {
		return nil, err
	}
	v := &volume.Volume{Name: info.Name, Mountpoint: info.Local.MountedAt()}
	switch {
	case info.Unreachable != nil && info.Local != nil:
		v.Status = map[string]any{"backend": info.Backend, "state": info.Local.Phase, "mounts": info.Local.Users, "error": info.Unreachable.Error()}
	case info.Unreachable != nil:
		v.Status = map[string]any{"backend": info.Backend, "error": info.Unreachable.Error()}
	default:
		v.Status = describe(info)
		if !info.CreatedAt.IsZero() {
			v.CreatedAt = info.CreatedAt.UTC().Format(time.RFC3339)
		}
		if info.Local != nil {
			v.Status["state"] = info.Local.Phase
			v.Status["mounts"] = info.Local.Users
			v.Status["device"] = info.Local.Device
			describeLost(v.Status, info.Local)
		}
	}
	if info.Damage != "" {
		v.Status["damage"] = info.Damage
	}
	return &volume.GetResponse{Volume: v}, nil
}

// describe lists a volume's facts for `docker volume inspect`.
func describe(info volumes.Info) map[string]any {
	status := map[string]any{}
	for k, v := range info.Status {
		status[k] = v
	}
	status["backend"] = info.Backend
	status["size"] = volumes.FormatSize(info.SizeBytes)
	if info.OptionsKnown {
		status["fstype"] = info.Options.FSType
		if len(info.Options.MountOpts) > 0 {
			status["mountopts"] = info.Options.MountOpts
		}
		if info.Options.VolumeType != "" {
			status["volumetype"] = info.Options.VolumeType
		}
		if info.Options.From != "" {
			status["from"] = info.Options.From // a clone's source
		}
	}
	return status
}

// describeLost says, for a volume another host took over while it was
// mounted here, that this host's mount is stale and whose it is now.
func describeLost(status map[string]any, l *volumes.Local) {
	if !l.Lost {
		return
	}
	status["state"] = "lost"
	who := "another host"
	if l.HeldBy != "" {
		who = "host " + l.HeldBy
		status["held_by"] = l.HeldBy
	}
	status["lost"] = who + " took the volume over while it was mounted here; this host is fenced off from it and its mount here is stale: unmount it here"
}

// List returns the volumes of every backend.
func (d *Driver) List() (*volume.ListResponse, error) {
	infos, err := d.core.List(context.Background())
	if err != nil {
		return nil, err
	}
	out := make([]*volume.Volume, 0, len(infos)) // "[]", never null, on the wire
	for _, info := range infos {
		out = append(out, &volume.Volume{Name: info.Name, Mountpoint: info.Local.MountedAt()})
	}
	return &volume.ListResponse{Volumes: out}, nil
}

// Path returns the mountpoint of a volume mounted on this host, "" when it
// is not mounted.
func (d *Driver) Path(req *volume.PathRequest) (*volume.PathResponse, error) {
	mp, err := d.core.Path(context.Background(), req.Name)
	if err != nil {
		return nil, err
	}
	return &volume.PathResponse{Mountpoint: mp}, nil
}

// Capabilities reports global scope when any backend is shared by hosts.
func (d *Driver) Capabilities() *volume.CapabilitiesResponse {
	return &volume.CapabilitiesResponse{Capabilities: volume.Capability{Scope: d.core.Scope()}}
}

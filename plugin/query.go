package plugin

import (
	"errors"
	"sort"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/docker/go-plugins-helpers/volume"
)

// Get describes one volume. Queries take no volume lock: Docker calls Get
// right before Mount and must not wait behind another container's slow
// mount of the same volume.
//
// Docker forgets a volume whose Get fails (it calls Get for every volume it
// knows when it restarts), so a backend that cannot be reached is answered
// from what this host knows — its record of a volume in use, or a volume
// seen since the plugin started — with the failure in Status, rather than
// with an error.
func (d *Driver) Get(req *volume.GetRequest) (_ *volume.GetResponse, err error) {
	c := d.begin("get", req.Name, d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	if err := ValidateName(req.Name); err != nil {
		return nil, err
	}
	vol, bn, err := d.lookup(ctx, req.Name)
	c.backend = bn
	r, mounted := d.recs.get(req.Name)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if mounted {
			log.Warn("backend unreachable; answering from this host's record", "err", err)
			return &volume.GetResponse{Volume: &volume.Volume{
				Name:       req.Name,
				Mountpoint: mountpointIf(r),
				Status:     map[string]any{"backend": r.Backend, "state": r.Phase, "mounts": len(r.Users), "error": err.Error()},
			}}, nil
		}
		if bn := d.knownBackend(req.Name); bn != "" {
			log.Warn("backend unreachable; answering with the volume as last seen", "err", err)
			return &volume.GetResponse{Volume: &volume.Volume{
				Name:   req.Name,
				Status: map[string]any{"backend": bn, "error": err.Error()},
			}}, nil
		}
		return nil, err
	}
	v := d.describe(vol, bn)
	if mounted {
		v.Mountpoint = mountpointIf(r)
		v.Status["state"] = r.Phase
		v.Status["mounts"] = len(r.Users)
		v.Status["device"] = r.Device
	}
	return &volume.GetResponse{Volume: v}, nil
}

// List returns the volumes of every backend. A backend that fails is left
// out (and logged) so that one outage does not hide the others' volumes.
func (d *Driver) List() (_ *volume.ListResponse, err error) {
	c := d.begin("list", "", d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	ctx, log := c.ctx, c.log
	mps := d.recs.mountpoints()
	out := []*volume.Volume{} // "[]", never null, on the wire
	var failures []error
	for _, bn := range d.cfg.Defaults.Backends {
		vols, err := d.cfg.Backends[bn].List(ctx)
		if err != nil {
			log.Error("backend list failed", "backend", bn, "err", err)
			failures = append(failures, err)
			continue
		}
		for _, v := range vols {
			d.remember(v.Name, bn)
			out = append(out, &volume.Volume{Name: v.Name, Mountpoint: mps[v.Name]})
		}
	}
	if len(failures) == len(d.cfg.Backends) {
		return nil, errors.Join(failures...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return &volume.ListResponse{Volumes: out}, nil
}

// Path returns the mountpoint of a volume mounted on this host, "" when it
// is not mounted.
func (d *Driver) Path(req *volume.PathRequest) (_ *volume.PathResponse, err error) {
	c := d.begin("path", req.Name, d.cfg.OtherTimeout)
	defer func() { c.end(err) }()
	ctx := c.ctx
	if err := ValidateName(req.Name); err != nil {
		return nil, err
	}
	if r, ok := d.recs.get(req.Name); ok {
		return &volume.PathResponse{Mountpoint: mountpointIf(r)}, nil
	}
	if _, _, err := d.lookup(ctx, req.Name); err != nil {
		return nil, err
	}
	return &volume.PathResponse{}, nil
}

func (d *Driver) describe(vol backends.Volume, bn string) *volume.Volume {
	status := map[string]any{}
	for k, v := range vol.Status {
		status[k] = v
	}
	status["backend"] = bn
	status["size"] = formatSize(vol.SizeBytes)
	if opts, err := decodeMeta(vol.Meta, d.defaults); err == nil {
		status["fstype"] = opts.FSType
		if len(opts.MountOpts) > 0 {
			status["mountopts"] = opts.MountOpts
		}
		if opts.VolumeType != "" {
			status["volumetype"] = opts.VolumeType
		}
	}
	v := &volume.Volume{Name: vol.Name, Status: status}
	if !vol.CreatedAt.IsZero() {
		v.CreatedAt = vol.CreatedAt.UTC().Format(time.RFC3339)
	}
	return v
}

func mountpointIf(r record) string {
	if r.Phase == phaseMounted {
		return r.Mountpoint
	}
	return ""
}

package cinder

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/snapshots"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// Snapshots are Cinder's own, named as blockvol's and tagged like its
// volumes (blockvol=1), with the name of the volume they were taken of in
// snapVolumeKey (a name survives what an ID does not explain to a user).
// Clones are Cinder's create from a snapshot (snapshot_id) or from a
// volume (source_volid); Expand is Cinder's extend (os-extend), of an
// in-use volume with microversion 3.42.
const snapVolumeKey = "blockvol.volume"

// inUseExtendMinor is the microversion that lets Cinder extend an
// attached volume.
const inUseExtendMinor = 42

var (
	_ backends.Snapshotter = (*Backend)(nil)
	_ backends.Cloner      = (*Backend)(nil)
	_ backends.Expander    = (*Backend)(nil)
)

// CreateSnapshot implements backends.Snapshotter. An attached volume is
// snapshotted with force (Cinder refuses otherwise); the caller has its
// filesystem frozen meanwhile when it is mounted on this host.
func (b *Backend) CreateSnapshot(ctx context.Context, volume, name string) (backends.Snapshot, error) {
	const op = "snapshot"
	if err := errors.Join(checkName(volume), checkName(name)); err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	c, err := b.client(ctx)
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	if _, err := b.findSnapshot(ctx, c, name); err == nil {
		return backends.Snapshot{}, opErrf(op, volume, "snapshot %q exists already: %w", name, sentinel.ErrExists)
	} else if !errors.Is(err, sentinel.ErrNotFound) {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	v, err := b.find(ctx, c, volume)
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	s, err := snapshots.Create(ctx, c.base(), snapshots.CreateOpts{
		VolumeID: v.ID, Force: busy(v), Name: name, Description: "blockvol snapshot",
		Metadata: map[string]string{tagKey: tagValue, snapVolumeKey: volume},
	}).Extract()
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, b.cinderError(c.sc, "create the snapshot", err))
	}
	log := b.log.With("volume", volume, "snapshot", name, "id", s.ID, "op", op)
	id := s.ID
	s, err = created(ctx, b, c, log, "snapshot", fmt.Sprintf("%q", name), id,
		func() (*snapshots.Snapshot, error) {
			return b.waitSnapshot(ctx, c, id, func(s *snapshots.Snapshot) bool { return s.Status != "creating" })
		},
		func(s *snapshots.Snapshot) string { return s.Status },
		func(ctx context.Context) error { return b.deleteSnapshot(ctx, c, id) })
	if err != nil {
		return backends.Snapshot{}, opErr(op, volume, err)
	}
	log.Info("snapshot taken", "size_gib", s.Size)
	return toSnapshot(s), nil
}

// GetSnapshot implements backends.Snapshotter.
func (b *Backend) GetSnapshot(ctx context.Context, name string) (backends.Snapshot, error) {
	if err := checkName(name); err != nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	c, err := b.client(ctx)
	if err != nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	s, err := b.findSnapshot(ctx, c, name)
	if err != nil {
		return backends.Snapshot{}, snapErr("get", name, err)
	}
	return toSnapshot(s), nil
}

// ListSnapshots implements backends.Snapshotter: blockvol's snapshots (of
// volume, when given), sorted by name.
func (b *Backend) ListSnapshots(ctx context.Context, volume string) ([]backends.Snapshot, error) {
	c, err := b.client(ctx)
	if err != nil {
		return nil, fmt.Errorf("cinder: list snapshots: %w", err)
	}
	all, err := b.listSnapshots(ctx, c, snapshots.ListOpts{})
	if err != nil {
		return nil, fmt.Errorf("cinder: list snapshots: %w", err)
	}
	out := make([]backends.Snapshot, len(all))
	for i := range all {
		out[i] = toSnapshot(&all[i])
	}
	return backends.SnapshotsOf(out, volume), nil
}

// RemoveSnapshot implements backends.Snapshotter; it returns once Cinder
// has deleted the snapshot.
func (b *Backend) RemoveSnapshot(ctx context.Context, name string) error {
	const op = "remove"
	if err := checkName(name); err != nil {
		return snapErr(op, name, err)
	}
	c, err := b.client(ctx)
	if err != nil {
		return snapErr(op, name, err)
	}
	s, err := b.findSnapshot(ctx, c, name)
	if err != nil {
		return snapErr(op, name, err)
	}
	if err := b.deleteSnapshot(ctx, c, s.ID); err != nil {
		return snapErr(op, name, err)
	}
	b.log.Info("snapshot removed", "snapshot", name, "id", s.ID)
	return nil
}

// CreateFrom implements backends.Cloner with Cinder's create from a
// snapshot or a volume.
func (b *Backend) CreateFrom(ctx context.Context, req backends.CreateRequest, src backends.Source) (backends.Volume, error) {
	if (src.Snapshot == "") == (src.Volume == "") {
		return backends.Volume{}, opErrf("create", req.Name, "a clone needs one source, a snapshot or a volume: %w", sentinel.ErrInvalid)
	}
	return b.create(ctx, req, src)
}

// sourceIDs returns the Cinder IDs of src's snapshot or volume ("" for
// none).
func (b *Backend) sourceIDs(ctx context.Context, c *conn, src backends.Source) (snapshotID, volumeID string, err error) {
	switch {
	case src.Snapshot != "":
		s, err := b.findSnapshot(ctx, c, src.Snapshot)
		if err != nil {
			return "", "", fmt.Errorf("snapshot %q: %w", src.Snapshot, err)
		}
		return s.ID, "", nil
	case src.Volume != "":
		v, err := b.find(ctx, c, src.Volume)
		if err != nil {
			return "", "", fmt.Errorf("volume %q: %w", src.Volume, err)
		}
		return "", v.ID, nil
	}
	return "", "", nil
}

// Expand implements backends.Expander with Cinder's extend: of an
// attached volume with microversion 3.42 (Cinder then grows the volume
// in place; only a volume attached to a Nova server gets Nova told, and
// blockvol's attachments name no server). Cinder's tgt helper re-creates
// the target of an attached volume for it (tgt-admin --update --force:
// sessions drop and the initiator logs in again by itself); then the LUN
// is rescanned on this host when the volume is attached here, so that
// its device shows the new size.
func (b *Backend) Expand(ctx context.Context, name string, sizeBytes int64) (backends.Volume, error) {
	const op = "expand"
	c, v, err := b.openVolume(ctx, op, name, b.find)
	if err != nil {
		return backends.Volume{}, err
	}
	gib := int((sizeBytes + 1<<30 - 1) >> 30)
	switch {
	case gib < v.Size:
		return backends.Volume{}, opErrf(op, name, "volumes only grow: %d GiB is smaller than its %d GiB: %w", gib, v.Size, sentinel.ErrInvalid)
	case gib == v.Size:
		return b.toVolume(v)
	}
	sc := c.base()
	if v.Status != "available" {
		if c.maxMinor < inUseExtendMinor {
			return backends.Volume{}, opErrf(op, name, "Cinder extends a volume in use only from API microversion 3.%d, and this Cinder offers 3.%d: detach it (stop its containers) and resize again: %w", inUseExtendMinor, c.maxMinor, sentinel.ErrInUse)
		}
		sc = c.at(inUseExtendMinor)
	}
	if err := volumes.ExtendSize(ctx, sc, v.ID, volumes.ExtendSizeOpts{NewSize: gib}).ExtractErr(); err != nil {
		return backends.Volume{}, opErr(op, name, b.cinderError(c.sc, "extend the volume", err))
	}
	b.recent.forget(name)
	v, err = b.waitVolume(ctx, c, v.ID, func(v *volumes.Volume) bool { return v.Status != "extending" })
	switch {
	case err != nil:
		return backends.Volume{}, opErrf(op, name, "waiting for Cinder to extend the volume: %w", err)
	case v == nil:
		return backends.Volume{}, opErrf(op, name, "the Cinder volume disappeared while being extended")
	case v.Size < gib:
		return backends.Volume{}, opErrf(op, name, "Cinder left the volume at %d GiB, status %q%s", v.Size, v.Status, b.userMessage(ctx, c, v.ID))
	}
	b.log.Info("volume extended", "volume", name, "id", v.ID, "size_gib", v.Size, "status", v.Status)
	if b.claimedHere(v) {
		if err := b.rescan(ctx, c, v); err != nil {
			return backends.Volume{}, opErrf(op, name, "Cinder grew the volume to %d GiB, but this host did not re-read its size: %w", v.Size, err)
		}
	}
	return b.toVolume(v)
}

// rescan makes this host re-read the size of v's LUN (attached here).
func (b *Backend) rescan(ctx context.Context, c *conn, v *volumes.Volume) error {
	rs, ok := b.ini.(backends.Rescanner)
	if !ok {
		return errors.New("the initiator cannot rescan a LUN")
	}
	t, err := b.currentTarget(ctx, c, v, false)
	if err != nil {
		return err
	}
	return rs.Rescan(ctx, t)
}

// findSnapshot returns blockvol's snapshot named name (the earliest of
// several), or ErrNotFound.
func (b *Backend) findSnapshot(ctx context.Context, c *conn, name string) (*snapshots.Snapshot, error) {
	all, err := b.listSnapshots(ctx, c, snapshots.ListOpts{Name: name})
	if err != nil {
		return nil, err
	}
	all = slices.DeleteFunc(all, func(s snapshots.Snapshot) bool { return s.Name != name })
	if len(all) == 0 {
		return nil, sentinel.ErrNotFound
	}
	s := slices.MinFunc(all, func(a, b snapshots.Snapshot) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return &s, nil
}

// listSnapshots lists blockvol's snapshots, leaving out those being
// deleted.
func (b *Backend) listSnapshots(ctx context.Context, c *conn, opts snapshots.ListOpts) ([]snapshots.Snapshot, error) {
	return listAll(ctx, b, c, "snapshot", snapshots.List(c.base(), opts), snapshots.ExtractSnapshots,
		func(s snapshots.Snapshot) bool { return s.Status == "deleting" || !isOurs(s.Metadata) })
}

// deleteSnapshot deletes snapshot id and waits until it is gone.
func (b *Backend) deleteSnapshot(ctx context.Context, c *conn, id string) error {
	err := snapshots.Delete(ctx, c.base(), id).ExtractErr()
	if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		return nil
	}
	if err != nil {
		return b.cinderError(c.sc, "delete Cinder snapshot "+id, err)
	}
	s, err := b.waitSnapshot(ctx, c, id, func(s *snapshots.Snapshot) bool { return s.Status != "deleting" })
	switch {
	case err != nil:
		return fmt.Errorf("Cinder had not finished deleting snapshot %s: %w", id, err)
	case s != nil:
		return fmt.Errorf("Cinder could not delete snapshot %s: it is %s", id, s.Status)
	}
	return nil
}

// waitSnapshot is waitVolume for a snapshot.
func (b *Backend) waitSnapshot(ctx context.Context, c *conn, id string, done func(*snapshots.Snapshot) bool) (*snapshots.Snapshot, error) {
	return await(ctx, b, c, "snapshot "+id, func(ctx context.Context) (*snapshots.Snapshot, error) {
		return snapshots.Get(ctx, c.base(), id).Extract()
	}, done, func(s *snapshots.Snapshot) string { return s.Status })
}

func toSnapshot(s *snapshots.Snapshot) backends.Snapshot {
	return backends.Snapshot{
		Name:      s.Name,
		Volume:    s.Metadata[snapVolumeKey],
		SizeBytes: int64(s.Size) << 30,
		CreatedAt: s.CreatedAt,
		Status:    map[string]any{"id": s.ID, "status": s.Status, "volume_id": s.VolumeID},
	}
}

// snapErr names the backend, the operation and the snapshot in an error.
var snapErr = backends.KindErrors("cinder", "snapshot")

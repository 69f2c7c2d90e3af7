package cinder

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/attachments"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

// Microversions of the attachments API: create/update/delete (3.27),
// filtering the list by volume (3.31), os-complete (3.44).
const (
	mvAttachments = 27
	mvListFilter  = 31
	mvComplete    = 44
)

// othersDetachWait bounds how long Attach waits for another host's detach
// in progress to finish before refusing.
const othersDetachWait = 15 * time.Second

// attachAPI is the API used for new attachments.
func (b *Backend) attachAPI(c *conn) string {
	switch b.cfg.AttachAPI {
	case AttachAttachments, AttachLegacy:
		return b.cfg.AttachAPI
	}
	if c.maxMinor >= mvComplete {
		return AttachAttachments
	}
	return AttachLegacy
}

// claimedHere reports whether the volume's claim names this host.
func (b *Backend) claimedHere(v *volumes.Volume) bool {
	return v.Metadata[claimUUIDKey] == b.hostUUID
}

// Attach implements backends.Backend.
func (b *Backend) Attach(ctx context.Context, name string, opts backends.AttachOptions) (string, error) {
	const op = "attach"
	defer b.recent.forget(name) // what it changes is not what was seen
	c, v, err := b.openVolume(ctx, op, name, b.find)
	if err != nil {
		return "", err
	}
	log := b.log.With("volume", name, "op", op)
	log = log.With("id", v.ID)
	if v, err = b.settle(ctx, c, v); err != nil {
		return "", opErr(op, name, err)
	}

	if b.claimedHere(v) && v.Status != "in-use" && busy(v) {
		// An attach or detach of ours that was interrupted (a crash).
		if v, err = b.recover(ctx, c, v, log); err != nil {
			return "", opErr(op, name, err)
		}
	}
	if b.claimedHere(v) && v.Status == "in-use" {
		dev, err := b.reattach(ctx, c, v, log)
		if err != nil {
			return "", opErr(op, name, err)
		}
		return dev, nil
	}
	tookOver := false
	if busy(v) {
		if !opts.Preempt && !b.cfg.Preempt {
			return "", opErrf(op, name, "Cinder volume %s is %s %s; to take it over (that host loses it), create the volume with -o preempt=true or set preempt = true for this backend: %w",
				v.ID, v.Status, b.holderPhrase(v), sentinel.ErrInUse)
		}
		if v, err = b.takeOver(ctx, c, v, log); err != nil {
			return "", opErr(op, name, err)
		}
		tookOver = true
	}
	if v.Status != "available" {
		return "", opErrf(op, name, "Cinder volume %s is %s; only an available volume can be attached", v.ID, v.Status)
	}
	connector, err := b.connector(c)
	if err != nil {
		return "", opErr(op, name, err)
	}
	var dev string
	if b.attachAPI(c) == AttachAttachments {
		dev, err = b.attachNew(ctx, c, v, connector, tookOver, log)
	} else {
		dev, err = b.attachLegacy(ctx, c, v, connector, tookOver, log)
	}
	if err != nil {
		return "", opErr(op, name, err)
	}
	log.Info("volume attached", "device", dev)
	return dev, nil
}

// settle waits while the volume is being created (until ctx ends), or
// while another host detaches it (up to othersDetachWait).
func (b *Backend) settle(ctx context.Context, c *conn, v *volumes.Volume) (*volumes.Volume, error) {
	wait := func(ctx context.Context, status string) (*volumes.Volume, error) {
		w, err := b.waitVolume(ctx, c, v.ID, func(w *volumes.Volume) bool { return w.Status != status })
		if w == nil && err == nil {
			return nil, fmt.Errorf("Cinder volume %s was deleted: %w", v.ID, sentinel.ErrNotFound)
		}
		return w, err
	}
	switch {
	case v.Status == "creating":
		w, err := wait(ctx, "creating")
		if err != nil {
			return nil, fmt.Errorf("waiting for Cinder volume %s to be created: %w", v.ID, err)
		}
		return w, nil
	case v.Status == "detaching" && !b.claimedHere(v):
		wctx, cancel := context.WithTimeout(ctx, othersDetachWait)
		defer cancel()
		w, err := wait(wctx, "detaching")
		switch {
		case err == nil:
			return w, nil
		case ctx.Err() != nil, errors.Is(err, sentinel.ErrNotFound):
			return nil, err
		}
		return v, nil // still detaching: the caller finds it busy
	}
	return v, nil
}

// refetch reads a volume again.
func (b *Backend) refetch(ctx context.Context, c *conn, id string) (*volumes.Volume, error) {
	v, err := volumes.Get(ctx, c.base(), id).Extract()
	if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		return nil, fmt.Errorf("Cinder volume %s was deleted: %w", id, sentinel.ErrNotFound)
	}
	if err != nil {
		return nil, b.cinderError(c.sc, "read Cinder volume "+id, err)
	}
	return v, nil
}

// connector describes this host to Cinder (os-brick's keys).
func (b *Backend) connector(c *conn) (map[string]any, error) {
	iqn, err := b.ini.InitiatorName()
	if err != nil {
		return nil, fmt.Errorf("this host's iSCSI initiator name: %w", err)
	}
	ip := b.cfg.InitiatorIP
	if ip == "" {
		if ip, err = localIP(c.sc.Endpoint); err != nil {
			return nil, fmt.Errorf("no initiator_ip configured and %w", err)
		}
	}
	return map[string]any{
		"initiator":       iqn,
		"ip":              ip,
		"host":            b.cfg.HostName,
		"multipath":       b.cfg.Multipath,
		"platform":        platform(),
		"os_type":         "linux2",
		"do_local_attach": false,
		"system uuid":     b.hostUUID,
	}, nil
}

// localIP returns this host's address on the route to endpoint's host. A
// UDP "connection" sends nothing; it only asks the kernel for the route.
func localIP(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", err
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	conn, err := net.Dial("udp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return "", fmt.Errorf("cannot find this host's address towards Cinder: %w", err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

func platform() string {
	switch runtime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return runtime.GOARCH
}

// hostAttachment is the body of POST /attachments without instance_uuid
// (gophercloud's CreateOpts always sends one, and "" is refused): the
// volume is attached to a host, named in the connector.
type hostAttachment struct {
	VolumeUUID string         `json:"volume_uuid"`
	Connector  map[string]any `json:"connector,omitempty"`
}

func (o hostAttachment) ToAttachmentCreateMap() (map[string]any, error) {
	return gophercloud.BuildRequestBody(o, "attachment")
}

// attachment is the part of an attachment record we read.
type attachment struct {
	ID             string          `json:"id"`
	Status         string          `json:"status"`
	ConnectionInfo json.RawMessage `json:"connection_info"`
}

// attachNew attaches with the attachments API: create (with connector:
// reserved and exported in one call), claim, login, os-complete. fenced:
// the volume was taken over (fence.go).
func (b *Backend) attachNew(ctx context.Context, c *conn, v *volumes.Volume, connector map[string]any, fenced bool, log *slog.Logger) (string, error) {
	connector["mode"] = "rw" // read by Cinder before 3.54
	var a attachment         // ExtractInto unwraps {"attachment": ...}
	err := attachments.Create(ctx, c.at(mvAttachments), hostAttachment{VolumeUUID: v.ID, Connector: connector}).ExtractInto(&a)
	if err != nil {
		return "", b.reserveError(ctx, c, v, "create an attachment", err)
	}
	if a.ID == "" {
		return "", fmt.Errorf("Cinder created an attachment but returned no ID (volume %s needs a force-detach)", v.ID)
	}
	log = log.With("attachment", a.ID)
	log.Debug("attachment created", "status", a.Status)
	rec := &record{Name: v.Name, VolumeID: v.ID, API: AttachAttachments, AttachmentID: a.ID, Fenced: fenced}
	undo := func(ctx context.Context) error {
		err := attachments.Delete(ctx, c.at(mvAttachments), a.ID).ExtractErr()
		if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return b.cinderError(c.sc, "delete attachment "+a.ID, err)
		}
		return nil
	}
	return b.connect(ctx, c, v, rec, a.ConnectionInfo, undo, func(ctx context.Context, _ string) error {
		err := attachments.Complete(ctx, c.at(mvComplete), a.ID).ExtractErr()
		if err != nil {
			return b.cinderError(c.sc, "complete attachment "+a.ID, err)
		}
		return nil
	}, log)
}

// attachLegacy attaches with the volume actions: os-reserve, claim,
// os-initialize_connection, login, os-attach by host name.
func (b *Backend) attachLegacy(ctx context.Context, c *conn, v *volumes.Volume, connector map[string]any, fenced bool, log *slog.Logger) (string, error) {
	if err := volumes.Reserve(ctx, c.base(), v.ID).ExtractErr(); err != nil {
		return "", b.reserveError(ctx, c, v, "reserve the volume", err)
	}
	unreserve := func(ctx context.Context) error {
		if err := volumes.Unreserve(ctx, c.base(), v.ID).ExtractErr(); err != nil {
			return b.cinderError(c.sc, "unreserve the volume", err)
		}
		return nil
	}
	var res struct {
		ConnectionInfo json.RawMessage `json:"connection_info"`
	}
	err := b.action(ctx, c, v.ID, map[string]any{"os-initialize_connection": map[string]any{"connector": connector}}, &res)
	if err != nil {
		b.cleanup(ctx, unreserve, log, "unreserve the volume")
		return "", b.cinderError(c.sc, "initialize the connection", err)
	}
	rec := &record{Name: v.Name, VolumeID: v.ID, API: AttachLegacy, Fenced: fenced}
	undo := func(ctx context.Context) error {
		if err := b.terminate(ctx, c, v.ID, connector); err != nil {
			return err
		}
		return unreserve(ctx)
	}
	return b.connect(ctx, c, v, rec, res.ConnectionInfo, undo, func(ctx context.Context, dev string) error {
		err := volumes.Attach(ctx, c.base(), v.ID, volumes.AttachOpts{HostName: b.cfg.HostName, MountPoint: dev, Mode: volumes.ReadWrite}).ExtractErr()
		if err != nil {
			return b.cinderError(c.sc, "mark the volume attached (os-attach)", err)
		}
		return nil
	}, log)
}

// connect is the part both APIs share once Cinder has reserved the volume
// and returned the connection: claim the volume, record the target, log
// in, then finish (os-complete or os-attach). On any failure it undoes all
// of it — logout, undo (delete the attachment, or terminate and
// unreserve), unclaim — with a deadline of its own.
func (b *Backend) connect(ctx context.Context, c *conn, v *volumes.Volume, rec *record, info json.RawMessage,
	undo func(context.Context) error, finish func(ctx context.Context, dev string) error, log *slog.Logger) (dev string, err error) {
	var t iscsi.Target
	loggedIn, recorded := false, false
	defer func() {
		if err == nil {
			return
		}
		log.Warn("attach failed; rolling back", "error", err.Error())
		if loggedIn {
			b.cleanup(ctx, func(ctx context.Context) error { return b.ini.Detach(ctx, t) }, log, "log out of the target")
		}
		b.cleanup(ctx, undo, log, "release the volume in Cinder")
		b.cleanup(ctx, func(ctx context.Context) error { return b.unclaim(ctx, c, v.ID) }, log, "remove this host's claim")
		if recorded {
			if rerr := b.removeRecord(v.ID); rerr != nil {
				log.Warn("cannot remove attachment record", "error", rerr.Error())
			}
		}
	}()
	if err := b.claim(ctx, c, v.ID); err != nil {
		return "", err
	}
	if t, err = b.parseTarget(info); err != nil {
		return "", err
	}
	rec.IQN, rec.Portals, rec.LUN = t.IQN, t.Portals, t.LUN
	recorded = true // a failed write may leave it half done: always remove
	if err := b.writeRecord(rec); err != nil {
		return "", fmt.Errorf("write attachment record: %w", err)
	}
	loggedIn = true // a failed login may leave a session behind: always log out
	if dev, err = b.ini.Attach(ctx, t); err != nil {
		return "", fmt.Errorf("log in to iSCSI target %s: %w", t.IQN, err)
	}
	if rec.Fenced {
		if err := b.fence(ctx, dev, log); err != nil {
			return "", err
		}
	}
	if err := finish(ctx, dev); err != nil {
		return "", err
	}
	return dev, nil
}

// reattach returns the device of a volume attached to this host, logging
// in again when needed (after a reboot, say) with credentials Cinder gives
// afresh.
func (b *Backend) reattach(ctx context.Context, c *conn, v *volumes.Volume, log *slog.Logger) (string, error) {
	t, err := b.currentTarget(ctx, c, v, true)
	if err != nil {
		return "", err
	}
	dev, err := b.ini.Attach(ctx, t)
	if err != nil {
		return "", fmt.Errorf("log in to iSCSI target %s: %w", t.IQN, err)
	}
	// A volume this host took over is reserved again: a session logged in
	// anew (after a reboot or an outage) is not registered.
	if rec, err := b.readRecord(v.ID); err == nil && rec != nil && rec.Fenced {
		if err := b.fence(ctx, dev, log); err != nil {
			return "", err
		}
	}
	log.Debug("volume already attached to this host", "device", dev)
	return dev, nil
}

// currentTarget returns the target of a volume attached to this host: from
// Cinder (with CHAP) when withSecrets, else from the record when there is
// one.
func (b *Backend) currentTarget(ctx context.Context, c *conn, v *volumes.Volume, withSecrets bool) (iscsi.Target, error) {
	rec, err := b.readRecord(v.ID)
	if err != nil {
		return iscsi.Target{}, err
	}
	if rec != nil && !withSecrets {
		return rec.target(), nil
	}
	info, err := b.connectionInfo(ctx, c, v, rec)
	if err != nil {
		return iscsi.Target{}, err
	}
	return b.parseTarget(info)
}

// connectionInfo asks Cinder for the connection of our attachment: the
// attachment's record (attachments API), or os-initialize_connection again
// with our connector (legacy; Cinder allows it on an attached volume).
func (b *Backend) connectionInfo(ctx context.Context, c *conn, v *volumes.Volume, rec *record) (json.RawMessage, error) {
	if id := b.attachmentID(v, rec); id != "" && (rec == nil || rec.API == AttachAttachments) && c.maxMinor >= mvAttachments {
		var a attachment
		err := attachments.Get(ctx, c.at(mvAttachments), id).ExtractInto(&a)
		if err == nil && len(a.ConnectionInfo) > 0 && string(a.ConnectionInfo) != "null" {
			return a.ConnectionInfo, nil
		}
		if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return nil, b.cinderError(c.sc, "read attachment "+id, err)
		}
	}
	connector, err := b.connector(c)
	if err != nil {
		return nil, err
	}
	var res struct {
		ConnectionInfo json.RawMessage `json:"connection_info"`
	}
	if err := b.action(ctx, c, v.ID, map[string]any{"os-initialize_connection": map[string]any{"connector": connector}}, &res); err != nil {
		return nil, b.cinderError(c.sc, "read the connection (os-initialize_connection)", err)
	}
	return res.ConnectionInfo, nil
}

// attachmentID returns the ID of this host's attachment of v: the
// recorded one when Cinder still lists it, else the only one listed.
func (b *Backend) attachmentID(v *volumes.Volume, rec *record) string {
	for _, a := range v.Attachments {
		if rec != nil && a.AttachmentID == rec.AttachmentID {
			return a.AttachmentID
		}
	}
	if len(v.Attachments) == 1 {
		return v.Attachments[0].AttachmentID
	}
	return ""
}

// reserveError explains a refused reservation: another host was faster
// (ErrInUse naming it), or the error as Cinder gave it.
func (b *Backend) reserveError(ctx context.Context, c *conn, v *volumes.Volume, what string, err error) error {
	err = b.cinderError(c.sc, what, err)
	if statusOf(err) != http.StatusBadRequest {
		return err
	}
	if w, rerr := b.refetch(ctx, c, v.ID); rerr == nil && busy(w) {
		return fmt.Errorf("Cinder volume %s became %s %s meanwhile: %w", v.ID, w.Status, b.holderPhrase(w), sentinel.ErrInUse)
	}
	return err
}

// claim records this host as the volume's holder in its metadata.
func (b *Backend) claim(ctx context.Context, c *conn, id string) error {
	body := map[string]any{"metadata": map[string]string{claimHostKey: b.cfg.HostName, claimUUIDKey: b.hostUUID}}
	if _, err := c.base().Post(ctx, c.sc.ServiceURL("volumes", id, "metadata"), body, nil, &gophercloud.RequestOpts{OkCodes: []int{200}}); err != nil {
		return b.cinderError(c.sc, "record this host in the volume's metadata", err)
	}
	return nil
}

// unclaim removes the holder items when they name this host.
func (b *Backend) unclaim(ctx context.Context, c *conn, id string) error {
	v, err := b.refetch(ctx, c, id)
	if errors.Is(err, sentinel.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if !b.claimedHere(v) {
		return nil
	}
	for _, k := range []string{claimHostKey, claimUUIDKey} {
		_, err := c.base().Delete(ctx, c.sc.ServiceURL("volumes", id, "metadata", k), &gophercloud.RequestOpts{OkCodes: []int{200, 204}})
		if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return b.cinderError(c.sc, "remove "+k+" from the volume's metadata", err)
		}
	}
	return nil
}

// action posts a volume action (raw: also those gophercloud lacks).
func (b *Backend) action(ctx context.Context, c *conn, id string, body map[string]any, out any) error {
	_, err := c.base().Post(ctx, c.sc.ServiceURL("volumes", id, "action"), body, out, &gophercloud.RequestOpts{OkCodes: []int{200, 202}})
	return err
}

func (b *Backend) terminate(ctx context.Context, c *conn, id string, connector map[string]any) error {
	if err := b.action(ctx, c, id, map[string]any{"os-terminate_connection": map[string]any{"connector": connector}}, nil); err != nil {
		return b.cinderError(c.sc, "terminate the connection", err)
	}
	return nil
}

// Detach implements backends.Backend: log out of the target, then end the
// attachment in Cinder (legacy: os-begin_detaching first, then
// os-terminate_connection and os-detach; attachments API: DELETE). A
// volume not attached here is success — after logging out of a target
// recorded here that another host has taken over.
func (b *Backend) Detach(ctx context.Context, name string) error {
	const op = "detach"
	defer b.recent.forget(name) // what it changes is not what was seen
	log := b.log.With("volume", name, "op", op)
	c, v, err := b.openVolume(ctx, op, name, b.find)
	if errors.Is(err, sentinel.ErrNotFound) {
		// Gone from Cinder (taken over, then deleted elsewhere): log out
		// of any target still recorded for the name.
		if err := b.forgetNamed(ctx, name, log); err != nil {
			return opErr(op, name, err)
		}
		return nil
	}
	if err != nil {
		return err
	}
	log = log.With("id", v.ID)
	rec, err := b.readRecord(v.ID)
	if err != nil {
		return opErr(op, name, err)
	}
	if !b.claimedHere(v) || !busy(v) {
		if err := b.forgetStale(ctx, c, v, rec, log); err != nil {
			return opErr(op, name, err)
		}
		return nil
	}
	if v.Status != "in-use" {
		// An interrupted attach or detach of ours.
		if v, err = b.recover(ctx, c, v, log); err != nil {
			return opErr(op, name, err)
		}
		if v.Status != "in-use" {
			log.Info("volume detached")
			return nil
		}
	}
	t, err := b.currentTarget(ctx, c, v, false)
	if err != nil {
		return opErr(op, name, err)
	}
	api := b.attachAPI(c)
	if rec != nil {
		api = rec.API
		if rec.Fenced {
			b.unfence(ctx, t, log)
		}
	}
	if api == AttachLegacy {
		err = b.detachLegacy(ctx, c, v, t, b.attachmentID(v, rec), log)
	} else {
		err = b.detachNew(ctx, c, v, t, b.attachmentID(v, rec))
	}
	if err != nil {
		return opErr(op, name, err)
	}
	if err := b.unclaim(ctx, c, v.ID); err != nil {
		return opErr(op, name, err)
	}
	if err := b.removeRecord(v.ID); err != nil {
		return opErr(op, name, err)
	}
	log.Info("volume detached")
	return nil
}

// forgetStale handles a volume Cinder no longer shows attached here: it
// logs out of the target still recorded for it and drops the record and
// the claim of this host.
func (b *Backend) forgetStale(ctx context.Context, c *conn, v *volumes.Volume, rec *record, log *slog.Logger) error {
	if rec != nil {
		log.Info("volume is no longer attached here in Cinder; logging out of its old target", "status", v.Status, "holder", b.holder(v))
		if err := b.ini.Detach(ctx, rec.target()); err != nil {
			return fmt.Errorf("log out of iSCSI target %s: %w", rec.IQN, err)
		}
		if err := b.removeRecord(v.ID); err != nil {
			return err
		}
	}
	if b.claimedHere(v) {
		return b.unclaim(ctx, c, v.ID)
	}
	return nil
}

// detachLegacy ends an attachment with the legacy actions:
// os-begin_detaching, logout (rolled back with os-roll_detaching when it
// fails), os-terminate_connection, os-detach.
func (b *Backend) detachLegacy(ctx context.Context, c *conn, v *volumes.Volume, t iscsi.Target, attachmentID string, log *slog.Logger) error {
	if err := volumes.BeginDetaching(ctx, c.base(), v.ID).ExtractErr(); err != nil {
		return b.cinderError(c.sc, "begin detaching", err)
	}
	if err := b.ini.Detach(ctx, t); err != nil {
		b.cleanup(ctx, func(ctx context.Context) error {
			return b.action(ctx, c, v.ID, map[string]any{"os-roll_detaching": map[string]any{}}, nil)
		}, log, "roll back os-begin_detaching")
		return fmt.Errorf("log out of iSCSI target %s: %w", t.IQN, err)
	}
	connector, err := b.connector(c)
	if err != nil {
		return err
	}
	if err := b.terminate(ctx, c, v.ID, connector); err != nil {
		return err
	}
	if err := volumes.Detach(ctx, c.base(), v.ID, volumes.DetachOpts{AttachmentID: attachmentID}).ExtractErr(); err != nil {
		return b.cinderError(c.sc, "detach (os-detach)", err)
	}
	return nil
}

// detachNew ends an attachment of the attachments API: logout, then
// DELETE of the attachment (one already gone is fine).
func (b *Backend) detachNew(ctx context.Context, c *conn, v *volumes.Volume, t iscsi.Target, attachmentID string) error {
	if err := b.ini.Detach(ctx, t); err != nil {
		return fmt.Errorf("log out of iSCSI target %s: %w", t.IQN, err)
	}
	err := attachments.Delete(ctx, c.at(mvAttachments), attachmentID).ExtractErr()
	if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		return b.cinderError(c.sc, "delete attachment "+attachmentID, err)
	}
	return nil
}

// recover undoes an interrupted operation of this host on v (claimed
// here; reserved, attaching or detaching) and returns the volume afresh.
// An interrupted detach is rolled back to in-use (os-roll_detaching), so
// that the caller detaches, or keeps using, it normally. An interrupted
// attach is undone with the calls an owner may make: logout of the
// recorded target, DELETE of each attachment, os-terminate_connection and
// os-unreserve; only if the volume is still not free, force-detach (admin).
func (b *Backend) recover(ctx context.Context, c *conn, v *volumes.Volume, log *slog.Logger) (*volumes.Volume, error) {
	log.Warn("undoing an interrupted attach or detach of this host", "status", v.Status)
	if v.Status == "detaching" {
		if err := b.action(ctx, c, v.ID, map[string]any{"os-roll_detaching": map[string]any{}}, nil); err != nil {
			return nil, b.cinderError(c.sc, "roll back os-begin_detaching", err)
		}
		return b.refetch(ctx, c, v.ID)
	}
	rec, err := b.readRecord(v.ID)
	if err != nil {
		return nil, err
	}
	if rec != nil {
		if err := b.ini.Detach(ctx, rec.target()); err != nil {
			return nil, fmt.Errorf("log out of iSCSI target %s: %w", rec.IQN, err)
		}
	}
	for id := range b.attachmentIDs(ctx, c, v, log) {
		err := attachments.Delete(ctx, c.at(mvAttachments), id).ExtractErr()
		if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			log.Warn("cannot delete attachment", "attachment", id, "error", b.cinderError(c.sc, "delete attachment", err).Error())
		}
	}
	if connector, err := b.connector(c); err == nil {
		if err := b.terminate(ctx, c, v.ID, connector); err != nil {
			log.Debug("terminate connection", "error", err.Error())
		}
	}
	if err := volumes.Unreserve(ctx, c.base(), v.ID).ExtractErr(); err != nil {
		log.Debug("unreserve", "error", b.cinderError(c.sc, "unreserve", err).Error())
	}
	if v, err = b.refetch(ctx, c, v.ID); err != nil {
		return nil, err
	}
	if busy(v) {
		if _, err := b.forceDetachAll(ctx, c, v, log); err != nil {
			return nil, fmt.Errorf("Cinder volume %s stays %s after undoing an interrupted attach: %w", v.ID, v.Status, err)
		}
		w, err := b.waitVolume(ctx, c, v.ID, func(w *volumes.Volume) bool { return !busy(w) })
		if err != nil {
			return nil, err
		}
		if w == nil {
			return nil, fmt.Errorf("Cinder volume %s was deleted: %w", v.ID, sentinel.ErrNotFound)
		}
		v = w
	}
	if err := b.unclaim(ctx, c, v.ID); err != nil {
		return nil, err
	}
	if err := b.removeRecord(v.ID); err != nil {
		return nil, err
	}
	return b.refetch(ctx, c, v.ID)
}

// takeOver force-detaches every attachment of a volume held by another
// host and waits (within ctx) until it is available.
func (b *Backend) takeOver(ctx context.Context, c *conn, v *volumes.Volume, log *slog.Logger) (*volumes.Volume, error) {
	holder := b.holderPhrase(v)
	log.Warn("taking the volume over", "status", v.Status, "holder", b.holder(v))
	n, err := b.forceDetachAll(ctx, c, v, log)
	if err != nil {
		if statusOf(err) == http.StatusForbidden {
			return nil, fmt.Errorf("Cinder volume %s is %s %s, and taking it over needs os-force_detach, which Cinder allows only to users with the admin role (HTTP 403) — use an admin user, or detach it on that host: %w",
				v.ID, v.Status, holder, sentinel.ErrInUse)
		}
		return nil, err
	}
	w, err := b.waitVolume(ctx, c, v.ID, func(w *volumes.Volume) bool { return w.Status == "available" || w.Status == "error_detaching" })
	if err == nil && w == nil {
		err = fmt.Errorf("Cinder volume %s was deleted: %w", v.ID, sentinel.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("waiting for Cinder volume %s to be released by %s: %w", v.ID, holder, err)
	}
	log.Warn("volume taken over", "holder", holder, "attachments_force_detached", n)
	return w, nil
}

// forceDetachAll force-detaches every attachment of v (os-force_detach;
// admin). Without attachment, one force-detach without ID resets a volume
// stuck in attaching or reserved. It returns how many calls it made.
func (b *Backend) forceDetachAll(ctx context.Context, c *conn, v *volumes.Volume, log *slog.Logger) (int, error) {
	ids := b.attachmentIDs(ctx, c, v, log)
	if len(ids) == 0 {
		ids[""] = true
	}
	n := 0
	for id := range ids {
		body := map[string]any{}
		if id != "" {
			body["attachment_id"] = id
		}
		err := b.action(ctx, c, v.ID, map[string]any{"os-force_detach": body}, nil)
		if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
			return n, b.cinderError(c.sc, "force-detach attachment "+id, err)
		}
		n++
	}
	return n, nil
}

// attachmentIDs returns the IDs of every attachment of v: those the volume
// lists (attached ones) and, where the server has 3.31, those the
// attachments API lists (reserved and attaching ones too).
func (b *Backend) attachmentIDs(ctx context.Context, c *conn, v *volumes.Volume, log *slog.Logger) map[string]bool {
	ids := map[string]bool{}
	for _, a := range v.Attachments {
		if a.AttachmentID != "" {
			ids[a.AttachmentID] = true
		}
	}
	if c.maxMinor >= mvListFilter {
		var res struct {
			Attachments []attachment `json:"attachments"`
		}
		if _, err := c.at(mvListFilter).Get(ctx, c.sc.ServiceURL("attachments")+"?volume_id="+url.QueryEscape(v.ID), &res, nil); err == nil {
			for _, a := range res.Attachments {
				ids[a.ID] = true
			}
		} else {
			log.Debug("cannot list the volume's attachments", "error", err.Error())
		}
	}
	return ids
}

// forgetNamed logs out of the targets recorded for a volume name that
// Cinder no longer has, and drops their records.
func (b *Backend) forgetNamed(ctx context.Context, name string, log *slog.Logger) error {
	recs, err := b.recordsNamed(name)
	if err != nil {
		return err
	}
	for _, r := range recs {
		log.Info("volume is gone from Cinder; logging out of its old target", "id", r.VolumeID, "iqn", r.IQN)
		if err := b.ini.Detach(ctx, r.target()); err != nil {
			return fmt.Errorf("log out of iSCSI target %s: %w", r.IQN, err)
		}
		if err := b.removeRecord(r.VolumeID); err != nil {
			return err
		}
	}
	return nil
}

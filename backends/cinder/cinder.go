// Package cinder is blockvol's OpenStack Cinder backend: volumes live in
// Cinder, and are attached to this host — which need not be a Nova
// instance — over iSCSI with blockvol's own initiator (package iscsi).
//
// # Identity
//
// The backend logs in to Keystone v3 with a password (user and project by
// name or ID, their domains by name or ID) or with an application
// credential, and finds Cinder in the token's catalog (types block-storage,
// volumev3, volume, block-store, volumev2, in that order, with the
// configured interface and region) unless an endpoint is given. The login
// is lazy: New never contacts Keystone itself, it starts one login in the
// background that logs either success or one sentence naming what failed
// (Keystone unreachable, credentials refused, no endpoint); every call
// that needs Cinder tries again while the login fails, and returns that
// sentence. So a Keystone outage at boot never stops the plugin from
// serving its socket. Expired tokens are renewed by gophercloud
// (AllowReauth), which repeats the refused request once.
//
// # Volumes
//
// A Docker volume N is the Cinder volume named N, in the project of the
// token. Create makes it with metadata blockvol=1 (List shows only those)
// and the plugin's Meta encoded as JSON in items blockvol.meta.0, .1, ...
// of at most 255 bytes each, then polls it (100 ms growing to 2 s, bounded
// by the caller's deadline) until it is available. A volume that ends in
// status error is deleted, and Cinder's user message says why. Cinder
// allows several volumes of one name: Create refuses a name that exists
// (ErrExists), and when two hosts create one name at the same moment,
// the earlier volume (created_at, then ID) wins and the other creator
// deletes its own and returns ErrExists. Get finds any volume of the name,
// blockvol's or not (so volumes made by other tools, such as
// cinder-docker-driver, can be used); volumes being deleted are ignored.
// Sizes are whole GiB: a size is rounded up.
//
// # Attachment
//
// This host is described to Cinder by a connector: its iSCSI initiator
// name, IP address, host name, HostUUID (as "system uuid") and the
// multipath flag. Where the server offers microversion 3.44, the
// attachments API is used: POST /attachments with the connector (the
// volume is reserved and the export made), login, os-complete; detach is
// logout then DELETE /attachments/{id}. Otherwise the legacy actions:
// os-reserve, os-initialize_connection, login, os-attach (by host name);
// detach is os-begin_detaching, logout, os-terminate_connection,
// os-detach. No instance_uuid is ever sent: without Nova, Cinder could not
// delete such an attachment (it asks Nova since the fix of CVE-2023-2088).
// Any failure after the reservation is rolled back — logout, delete the
// attachment or terminate the connection and unreserve — with a deadline
// of its own, so a cancelled call still leaves the volume available.
//
// Cinder shows an attachment's host only to admins, so the attaching host
// also writes blockvol.host and blockvol.host_uuid into the volume's
// metadata right after the reservation succeeded (the reservation is the
// lock: a second host's fails). This names the holder in ErrInUse and
// tells a restarted host its own attachments (by HostUUID) from others'.
// A volume attached elsewhere is refused with ErrInUse, unless Preempt:
// then every attachment is force-detached (os-force_detach, an admin
// action: a 403 says so), Cinder removes the other host's export, and the
// volume is attached here. Preempt is meant for a host that is down:
// Cinder's TgtAdm target keeps the volume's CHAP account across exports,
// so a host that is still running could log in again.
//
// The connection's portal, IQN and LUN (not the CHAP secret) are kept in a
// small file per attached volume in Config.StateDir, so that Detach can
// log out of a target that another host has since taken over.
package cinder

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/gophercloud/gophercloud/v2"
	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"
	"github.com/gophercloud/gophercloud/v2/pagination"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// BackendName is the value of the "backend" key of every volume's Status.
const BackendName = "cinder"

// Attach APIs (Config.AttachAPI).
const (
	AttachAuto        = "auto"        // attachments where the server has 3.44, else legacy
	AttachAttachments = "attachments" // POST /attachments ... os-complete (3.27 + 3.44)
	AttachLegacy      = "legacy"      // os-reserve, os-initialize_connection, os-attach
)

// Config configures a Cinder Backend.
type Config struct {
	// AuthURL is Keystone's URL, e.g. https://keystone.example:5000/v3.
	AuthURL string
	// Password authentication: a user by name (in UserDomainName or
	// UserDomainID) or by ID, and a project by name (in ProjectDomainName
	// or ProjectDomainID) or by ID.
	Username, UserID, Password         string
	UserDomainName, UserDomainID       string
	ProjectName, ProjectID             string
	ProjectDomainName, ProjectDomainID string
	// Application credential authentication, used when its secret is set:
	// by ID, or by name with Username/UserID (and the user's domain).
	ApplicationCredentialID, ApplicationCredentialName, ApplicationCredentialSecret string
	// Region and Interface (public, internal or admin; default public)
	// select the catalog endpoint.
	Region, Interface string
	// Endpoint, when set, is Cinder's URL and the catalog is not searched.
	// %(project_id)s in it is replaced by the token's project.
	Endpoint string
	// CAFile is a PEM bundle of the CAs trusted for TLS; "" = the system's.
	CAFile string
	// RequestTimeout bounds each HTTP request. Default 60s.
	RequestTimeout time.Duration

	// AttachAPI is AttachAuto (default), AttachAttachments or AttachLegacy.
	AttachAPI string
	// Preempt takes over volumes attached elsewhere on every Attach, as if
	// each asked for it.
	Preempt bool
	// HostName names this host to Cinder; default os.Hostname().
	HostName string
	// HostUUID identifies this host; "" reads it from HostUUIDFile, where
	// it is generated the first time.
	HostUUID, HostUUIDFile string
	// InitiatorIP is this host's address for the target's ACL; "" uses
	// the local address of the route to Cinder.
	InitiatorIP string
	// Multipath asks Cinder for every portal of the target.
	Multipath bool
	// PortalMap replaces a portal ("address:port") Cinder returns by the
	// one this host dials instead: for a target this host reaches only
	// through NAT or a forwarder, when Cinder's target_ip_address is an
	// address this host cannot reach. Portals not in the map are used as
	// given.
	PortalMap map[string]string
	// StateDir holds the records of attached volumes (mode 0700).
	StateDir string
	// Zone is the availability zone of this host ("" = none): where CSI
	// creates the volumes of nodes in it (backends.Zoner).
	Zone string
}

// Zone implements backends.Zoner.
func (b *Backend) Zone() string { return b.cfg.Zone }

// Backend implements backends.Backend with OpenStack Cinder.
type Backend struct {
	cfg      Config
	ini      backends.Initiator
	log      *slog.Logger
	http     *http.Client
	hostUUID string
	sess     session

	// pollMin and pollMax bound the interval of status polls.
	pollMin, pollMax time.Duration
	// recent answers a lookup of a name looked up a moment ago.
	recent recentFinds
	// cleanupTimeout bounds a rollback or cleanup that runs after the
	// caller's context ended.
	cleanupTimeout time.Duration
	// warm is closed when the start-up login has finished.
	warm chan struct{}
	// beforeCreate, when set (tests), runs between the check for an
	// existing name and the request that creates the volume.
	beforeCreate func()
}

var (
	_ backends.Backend = (*Backend)(nil)
	_ backends.Checker = (*Backend)(nil)
)

// startLoginTimeout bounds the background login New starts.
const startLoginTimeout = 60 * time.Second

// New returns a Backend. It validates cfg, reads or creates the host UUID
// and the state directory, and starts a login to Keystone in the
// background; it never fails because Keystone or Cinder is unreachable.
// A nil log discards messages.
func New(cfg Config, ini backends.Initiator, log *slog.Logger) (*Backend, error) {
	b, err := build(cfg, ini, log)
	if err != nil {
		return nil, err
	}
	if b.hostUUID == "" {
		if b.hostUUID, err = hostUUID(b.cfg.HostUUIDFile); err != nil {
			return nil, fmt.Errorf("cinder: %w", err)
		}
	}
	if err := os.MkdirAll(b.cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("cinder: state directory: %w", err)
	}
	b.log.Info("cinder backend configured", "auth_url", b.cfg.AuthURL, "identity", b.who(), "host", b.cfg.HostName, "host_uuid", b.hostUUID)
	go func() {
		defer close(b.warm)
		ctx, cancel := context.WithTimeout(context.Background(), startLoginTimeout)
		defer cancel()
		if _, err := b.client(ctx); err != nil {
			b.log.Error("cinder backend cannot reach Cinder yet; every call will try again", "error", err.Error())
		}
	}()
	return b, nil
}

// NewChecker returns the self-check of a Cinder backend configured with
// cfg, for `blockvol doctor`: unlike New it changes nothing on this host
// (no state directory, no host UUID file written, no background login);
// Check logs in when it runs.
func NewChecker(cfg Config, ini backends.Initiator) (backends.Checker, error) {
	b, err := build(cfg, ini, nil)
	if err != nil {
		return nil, err
	}
	close(b.warm)
	return b, nil
}

// build validates cfg and returns a Backend that has touched nothing yet;
// hostUUID is set only when cfg gives it.
func build(cfg Config, ini backends.Initiator, log *slog.Logger) (*Backend, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if ini == nil {
		return nil, errors.New("cinder: an iSCSI initiator is required")
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("cinder: %w", err)
	}
	cfg.Interface = cmp.Or(cfg.Interface, "public")
	cfg.AttachAPI = cmp.Or(cfg.AttachAPI, AttachAuto)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, 60*time.Second)
	if cfg.HostName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("cinder: host name: %w", err)
		}
		cfg.HostName = h
	}
	b := &Backend{
		cfg:            cfg,
		ini:            ini,
		log:            log,
		sess:           session{lock: make(chan struct{}, 1)},
		pollMin:        10 * time.Millisecond,
		pollMax:        2 * time.Second,
		cleanupTimeout: 30 * time.Second,
		warm:           make(chan struct{}),
	}
	var err error
	if b.http, err = newHTTPClient(cfg); err != nil {
		return nil, err
	}
	if cfg.HostUUID != "" {
		if !uuidRE.MatchString(cfg.HostUUID) {
			return nil, fmt.Errorf("cinder: host UUID %q is not a UUID", cfg.HostUUID)
		}
		b.hostUUID = strings.ToLower(cfg.HostUUID)
	}
	return b, nil
}

func (c *Config) check() error {
	switch {
	case c.AuthURL == "":
		return errors.New("auth_url is required")
	case c.StateDir == "":
		return errors.New("a state directory is required")
	case c.HostUUID == "" && c.HostUUIDFile == "":
		return errors.New("a host UUID or a file to keep it in is required")
	}
	switch c.Interface {
	case "", "public", "internal", "admin":
	default:
		return fmt.Errorf("interface %q must be public, internal or admin", c.Interface)
	}
	switch c.AttachAPI {
	case "", AttachAuto, AttachAttachments, AttachLegacy:
	default:
		return fmt.Errorf("attach_api %q must be %s, %s or %s", c.AttachAPI, AttachAuto, AttachAttachments, AttachLegacy)
	}
	if c.ApplicationCredentialSecret != "" {
		if c.ApplicationCredentialID == "" && (c.ApplicationCredentialName == "" || c.Username == "" && c.UserID == "") {
			return errors.New("an application credential needs its ID, or its name and the user's name or ID")
		}
		return nil
	}
	switch {
	case c.Username == "" && c.UserID == "":
		return errors.New("a username or user_id (or an application credential) is required")
	case c.Password == "":
		return errors.New("a password (or an application credential) is required")
	case c.ProjectName == "" && c.ProjectID == "":
		return errors.New("a project_name or project_id is required")
	}
	return nil
}

// Scope implements backends.Backend: every host of the cloud sees the
// same volumes.
func (b *Backend) Scope() string { return backends.ScopeGlobal }

// Check implements backends.Checker: it logs in when needed, lists one
// volume, and checks that this host's iSCSI initiator name is known. It
// changes nothing.
func (b *Backend) Check(ctx context.Context) error {
	c, err := b.client(ctx)
	if err != nil {
		return fmt.Errorf("cinder: %w", err)
	}
	pages, err := volumes.List(c.base(), volumes.ListOpts{Limit: 1}).AllPages(ctx)
	if err == nil {
		_, err = volumes.ExtractVolumes(pages)
	}
	if err != nil {
		return fmt.Errorf("cinder: %w", b.cinderError(c.sc, "list volumes", err))
	}
	if _, err := b.ini.InitiatorName(); err != nil {
		return fmt.Errorf("cinder: this host's iSCSI initiator name: %w", err)
	}
	return nil
}

// Create implements backends.Backend.
func (b *Backend) Create(ctx context.Context, req backends.CreateRequest) (backends.Volume, error) {
	return b.create(ctx, req, backends.Source{})
}

// create makes a volume: empty, or (CreateFrom) from a snapshot or a
// volume of Cinder's, named by src.
func (b *Backend) create(ctx context.Context, req backends.CreateRequest, src backends.Source) (backends.Volume, error) {
	const op = "create"
	name := req.Name
	if err := checkName(name); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	switch {
	case req.IOPS != 0:
		return backends.Volume{}, opErrf(op, name, "the cinder backend does not support option iops (%d): choose a volume type whose QoS gives the IOPS: %w", req.IOPS, sentinel.ErrInvalid)
	case req.SizeBytes <= 0:
		return backends.Volume{}, opErrf(op, name, "size %d: must be positive: %w", req.SizeBytes, sentinel.ErrInvalid)
	}
	gib := int((req.SizeBytes + 1<<30 - 1) >> 30)
	pieces, err := encodeMeta(req.Meta)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	c, err := b.client(ctx)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	log := b.log.With("volume", name, "op", op)
	defer b.recent.forget(name)
	if _, err := b.findRecent(ctx, c, name); err == nil {
		return backends.Volume{}, opErr(op, name, sentinel.ErrExists)
	} else if !errors.Is(err, sentinel.ErrNotFound) {
		return backends.Volume{}, opErr(op, name, err)
	}
	if req.SizeBytes%(1<<30) != 0 {
		log.Info("Cinder sizes are whole GiB; rounding up", "size_bytes", req.SizeBytes, "size_gib", gib)
	}
	pieces[tagKey] = tagValue
	copts := volumes.CreateOpts{
		Name:             name,
		Size:             gib,
		VolumeType:       req.VolumeType,
		AvailabilityZone: req.AvailabilityZone,
		Description:      "blockvol volume",
		Metadata:         pieces,
	}
	if copts.SnapshotID, copts.SourceVolID, err = b.sourceIDs(ctx, c, src); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	if b.beforeCreate != nil {
		b.beforeCreate()
	}
	v, err := volumes.Create(ctx, c.base(), copts, nil).Extract()
	if err != nil {
		err = b.cinderError(c.sc, "create the volume", err)
		switch statusOf(err) {
		case http.StatusBadRequest, http.StatusNotFound, http.StatusRequestEntityTooLarge:
			// 404: unknown volume type; 400: bad zone or size; 413: quota.
			err = fmt.Errorf("%w: %w", err, sentinel.ErrInvalid)
		}
		return backends.Volume{}, opErr(op, name, err)
	}
	id := v.ID
	log = log.With("id", id)
	log.Info("volume requested", "size_gib", gib, "type", v.VolumeType, "zone", v.AvailabilityZone)

	// Cinder does not let a volume that is still being created be deleted:
	// one whose wait fails stays; once available, Create of the name
	// reports it as existing and Attach waits for it.
	v, err = created(ctx, b, c, log, "volume", id, id,
		func() (*volumes.Volume, error) {
			return b.waitVolume(ctx, c, id, func(v *volumes.Volume) bool { return v.Status != "creating" && v.Status != "downloading" })
		},
		func(v *volumes.Volume) string { return v.Status },
		func(ctx context.Context) error { return b.deleteVolume(ctx, c, id) })
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	// Several hosts may have created the name at once: the earliest wins.
	// (Looking while Cinder creates ours slows this Cinder down more than
	// the round trip it would save.)
	if winner, err := b.lookup(ctx, c, name); err == nil && winner.ID != v.ID {
		log.Warn("another host created the same volume name concurrently; deleting ours", "winner", winner.ID)
		b.cleanup(ctx, func(ctx context.Context) error { return b.deleteVolume(ctx, c, v.ID) }, log, "delete the duplicate volume")
		return backends.Volume{}, opErr(op, name, sentinel.ErrExists)
	}
	log.Info("volume created", "size_gib", v.Size)
	return b.toVolume(v)
}

// Get implements backends.Backend.
func (b *Backend) Get(ctx context.Context, name string) (backends.Volume, error) {
	const op = "get"
	_, v, err := b.openVolume(ctx, op, name, b.findRecent)
	if err != nil {
		return backends.Volume{}, err
	}
	vol, err := b.toVolume(v)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	return vol, nil
}

// List implements backends.Backend: the volumes tagged blockvol=1, sorted
// by name, one per name. A volume whose stored Meta is unreadable is
// logged and left out rather than hiding the others.
func (b *Backend) List(ctx context.Context) ([]backends.Volume, error) {
	c, err := b.client(ctx)
	if err != nil {
		return nil, fmt.Errorf("cinder: list: %w", err)
	}
	all, err := b.listVolumes(ctx, c, volumes.ListOpts{Metadata: map[string]string{tagKey: tagValue}})
	if err != nil {
		return nil, fmt.Errorf("cinder: list: %w", err)
	}
	byName := map[string][]*volumes.Volume{}
	for i := range all {
		v := &all[i]
		if isOurs(v.Metadata) && checkName(v.Name) == nil {
			byName[v.Name] = append(byName[v.Name], v)
		}
	}
	out := make([]backends.Volume, 0, len(byName))
	for _, vs := range byName {
		vol, err := b.toVolume(pick(vs))
		if err != nil {
			b.log.Error("skipping volume with unreadable metadata", "volume", vs[0].Name, "op", "list", "error", err.Error())
			continue
		}
		out = append(out, vol)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// SetMeta implements backends.Backend: the new Meta items are merged into
// the volume's metadata (POST, which leaves every other item, such as
// another host's claim, alone), then items of the old Meta beyond the new
// ones are deleted.
func (b *Backend) SetMeta(ctx context.Context, name string, meta map[string]string) error {
	const op = "setmeta"
	if err := checkName(name); err != nil {
		return opErr(op, name, err)
	}
	pieces, err := encodeMeta(meta)
	if err != nil {
		return opErr(op, name, err)
	}
	defer b.recent.forget(name) // what it changes is not what was seen
	c, v, err := b.openVolume(ctx, op, name, b.find)
	if err != nil {
		return err
	}
	pieces[tagKey] = tagValue
	body := map[string]any{"metadata": pieces}
	if _, err := c.base().Post(ctx, c.sc.ServiceURL("volumes", v.ID, "metadata"), body, nil, &gophercloud.RequestOpts{OkCodes: []int{200}}); err != nil {
		return opErr(op, name, b.cinderError(c.sc, "update the volume's metadata", err))
	}
	for k := range v.Metadata {
		if _, old := metaIndex(k); old && pieces[k] == "" {
			_, err := c.base().Delete(ctx, c.sc.ServiceURL("volumes", v.ID, "metadata", k), &gophercloud.RequestOpts{OkCodes: []int{200, 204}})
			if err != nil && !gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
				return opErr(op, name, b.cinderError(c.sc, "delete metadata item "+k, err))
			}
		}
	}
	return nil
}

// Remove implements backends.Backend: the Cinder volume is deleted, and
// Remove waits (within ctx) until Cinder has done so. A volume attached
// anywhere, or being attached or detached, yields ErrInUse.
func (b *Backend) Remove(ctx context.Context, name string) error {
	const op = "remove"
	c, err := b.open(ctx, op, name)
	if err != nil {
		return err
	}
	defer b.recent.forget(name)
	// The volume Docker's Get found a moment ago, unless it looked busy:
	// Cinder refuses to delete an attached volume itself (400, below).
	v, ok := b.recent.get(name)
	fresh := !ok || v == nil || busy(v)
	for {
		if fresh {
			if v, err = b.find(ctx, c, name); err != nil {
				return opErr(op, name, err)
			}
			if busy(v) {
				return opErrf(op, name, "Cinder volume %s is %s %s: %w", v.ID, v.Status, b.holderPhrase(v), sentinel.ErrInUse)
			}
		}
		existed, err := b.deleteVolumeOf(ctx, c, v.ID)
		if err != nil {
			if statusOf(err) == http.StatusBadRequest {
				if w, rerr := b.refetch(ctx, c, v.ID); rerr == nil && busy(w) {
					// Attached meanwhile.
					return opErrf(op, name, "Cinder volume %s became %s %s: %w", v.ID, w.Status, b.holderPhrase(w), sentinel.ErrInUse)
				}
			}
			return opErr(op, name, err)
		}
		if existed || fresh {
			break
		}
		// The volume remembered is gone already: look the name up afresh.
		fresh = true
	}
	if err := b.removeRecord(v.ID); err != nil {
		b.log.Warn("cannot remove attachment record", "volume", name, "error", err.Error())
	}
	b.log.Info("volume removed", "volume", name, "id", v.ID)
	return nil
}

// deleteVolume deletes a volume and waits until it is gone (404): only
// then is the removal done. A volume that Cinder fails to delete
// (error_deleting) is an error, and so is one still being deleted when ctx
// ends (Cinder may yet fail it, and the volume would come back).
func (b *Backend) deleteVolume(ctx context.Context, c *conn, id string) error {
	_, err := b.deleteVolumeOf(ctx, c, id)
	return err
}

// deleteVolumeOf is deleteVolume, also telling whether the volume still
// existed at the DELETE.
func (b *Backend) deleteVolumeOf(ctx context.Context, c *conn, id string) (existed bool, err error) {
	err = volumes.Delete(ctx, c.base(), id, volumes.DeleteOpts{}).ExtractErr()
	if gophercloud.ResponseCodeIs(err, http.StatusNotFound) {
		return false, nil
	}
	if err != nil {
		return true, b.cinderError(c.sc, "delete Cinder volume "+id, err)
	}
	return true, b.awaitDeleted(ctx, c, id)
}

// awaitDeleted waits until Cinder has deleted volume id.
func (b *Backend) awaitDeleted(ctx context.Context, c *conn, id string) error {
	v, err := b.waitVolume(ctx, c, id, func(v *volumes.Volume) bool { return v.Status != "deleting" })
	switch {
	case err == nil && v == nil:
		return nil
	case err == nil:
		return fmt.Errorf("Cinder could not delete volume %s: it is %s", id, v.Status)
	case ctx.Err() != nil:
		return fmt.Errorf("Cinder had not finished deleting volume %s in time (%w); ask again later", id, err)
	}
	return err
}

// find returns the volume named name: among several, the one tagged as
// blockvol's, then the earliest created. Volumes being deleted do not
// count. None is ErrNotFound; a failed request is never ErrNotFound.
func (b *Backend) find(ctx context.Context, c *conn, name string) (*volumes.Volume, error) {
	v, err := b.lookup(ctx, c, name)
	switch {
	case err == nil:
		b.recent.put(name, v)
	case errors.Is(err, sentinel.ErrNotFound):
		b.recent.put(name, nil)
	default:
		b.recent.forget(name)
	}
	return v, err
}

// findRecent is find, answered from a lookup of the name made less than
// recentTTL ago when there is one.
func (b *Backend) findRecent(ctx context.Context, c *conn, name string) (*volumes.Volume, error) {
	if v, ok := b.recent.get(name); ok {
		if v == nil {
			return nil, sentinel.ErrNotFound
		}
		return v, nil
	}
	return b.find(ctx, c, name)
}

// lookup lists the volumes named name and picks one (see find).
func (b *Backend) lookup(ctx context.Context, c *conn, name string) (*volumes.Volume, error) {
	all, err := b.listVolumes(ctx, c, volumes.ListOpts{Name: name})
	if err != nil {
		return nil, err
	}
	var vs []*volumes.Volume
	for i := range all {
		if all[i].Name == name {
			vs = append(vs, &all[i])
		}
	}
	if len(vs) == 0 {
		return nil, sentinel.ErrNotFound
	}
	if len(vs) > 1 {
		ids := make([]string, len(vs))
		for i, v := range vs {
			ids[i] = v.ID
		}
		b.log.Warn("several Cinder volumes have this name; using the earliest", "volume", name, "ids", strings.Join(ids, ","))
	}
	return pick(vs), nil
}

// pick chooses among volumes of one name: blockvol's first, then the
// earliest created, then the smallest ID.
func pick(vs []*volumes.Volume) *volumes.Volume {
	return slices.MinFunc(vs, func(a, b *volumes.Volume) int {
		if oa, ob := isOurs(a.Metadata), isOurs(b.Metadata); oa != ob {
			if oa {
				return -1
			}
			return 1
		}
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), strings.Compare(a.ID, b.ID))
	})
}

// listVolumes lists volumes (with details), leaving out those being
// deleted.
func (b *Backend) listVolumes(ctx context.Context, c *conn, opts volumes.ListOpts) ([]volumes.Volume, error) {
	return listAll(ctx, b, c, "volume", volumes.List(c.base(), opts), volumes.ExtractVolumes,
		func(v volumes.Volume) bool { return v.Status == "deleting" })
}

// listAll reads every page of a Cinder list of kind (volume, snapshot)
// with extract, and leaves out the items drop names.
func listAll[T any](ctx context.Context, b *Backend, c *conn, kind string, pager pagination.Pager,
	extract func(pagination.Page) ([]T, error), drop func(T) bool) ([]T, error) {
	pages, err := pager.AllPages(ctx)
	if err != nil {
		return nil, b.cinderError(c.sc, "list "+kind+"s", err)
	}
	all, err := extract(pages)
	if err != nil {
		return nil, fmt.Errorf("read Cinder's %s list: %w", kind, err)
	}
	return slices.DeleteFunc(all, drop), nil
}

// waitVolume polls volume id until done says so, the volume is gone
// (returns nil, nil) or ctx ends, and answers at the first poll that shows
// it. It polls fast first, then backs off: the interval is a tenth of the
// time waited so far, within pollMin and pollMax, so the answer comes at
// most about 10% later than the change. On ctx's end the last volume seen
// is returned with the error.
func (b *Backend) waitVolume(ctx context.Context, c *conn, id string, done func(*volumes.Volume) bool) (*volumes.Volume, error) {
	return await(ctx, b, c, "volume "+id, func(ctx context.Context) (*volumes.Volume, error) {
		return volumes.Get(ctx, c.base(), id).Extract()
	}, done, func(v *volumes.Volume) string { return v.Status })
}

// created waits, with wait, for a Cinder resource just created (kind:
// volume, snapshot; id its Cinder ID; label how the errors of the wait
// name it) to leave its creating states, and returns it once its status
// is "available". A failed wait, or a resource gone meanwhile, is an
// error; one in any other status is deleted with del (a failed delete is
// logged to log: see cleanup) and the error carries Cinder's user message
// about it.
func created[T any](ctx context.Context, b *Backend, c *conn, log *slog.Logger, kind, label, id string,
	wait func() (*T, error), status func(*T) string, del func(context.Context) error) (*T, error) {
	v, err := wait()
	switch {
	case err != nil:
		return nil, fmt.Errorf("waiting for Cinder %s %s to become available: %w", kind, label, err)
	case v == nil:
		return nil, fmt.Errorf("Cinder %s %s disappeared while being created", kind, label)
	case status(v) != "available":
		reason := b.userMessage(ctx, c, id)
		b.cleanup(ctx, del, log, "delete the failed "+kind)
		return nil, fmt.Errorf("Cinder %s %s went to status %q%s; it was deleted", kind, id, status(v), reason)
	}
	return v, nil
}

// await is waitVolume for any Cinder resource: get reads it (a 404 means
// gone), status tells its status for the error at ctx's end.
func await[T any](ctx context.Context, b *Backend, c *conn, what string, get func(context.Context) (*T, error), done func(*T) bool, status func(*T) string) (*T, error) {
	start := time.Now()
	var last *T
	for {
		v, err := get(ctx)
		switch {
		case gophercloud.ResponseCodeIs(err, http.StatusNotFound):
			return nil, nil
		case err != nil && ctx.Err() == nil:
			return last, b.cinderError(c.sc, "read Cinder "+what, err)
		case err == nil:
			last = v
			if done(v) {
				return v, nil
			}
		}
		t := time.NewTimer(min(max(time.Since(start)/10, b.pollMin), b.pollMax))
		select {
		case <-ctx.Done():
			t.Stop()
			st := "unknown"
			if last != nil {
				st = status(last)
			}
			return last, fmt.Errorf("still %s: %w", st, ctx.Err())
		case <-t.C:
		}
	}
}

// userMessage returns Cinder's user-facing message about a resource
// (microversion 3.3+), formatted as ": <message>", or "".
func (b *Backend) userMessage(ctx context.Context, c *conn, id string) string {
	if c.maxMinor < 3 {
		return ""
	}
	type message struct {
		UserMessage string `json:"user_message"`
		CreatedAt   string `json:"created_at"` // ISO 8601: orders as text
	}
	var doc struct {
		Messages []message `json:"messages"`
	}
	u := c.sc.ServiceURL("messages") + "?resource_uuid=" + url.QueryEscape(id)
	if _, err := c.at(3).Get(ctx, u, &doc, nil); err != nil || len(doc.Messages) == 0 {
		return ""
	}
	last := slices.MaxFunc(doc.Messages, func(a, b message) int { return strings.Compare(a.CreatedAt, b.CreatedAt) })
	return ": " + last.UserMessage
}

// toVolume converts a Cinder volume. Status shows the Cinder ID and
// status, type, zone, and the host it is attached to.
func (b *Backend) toVolume(v *volumes.Volume) (backends.Volume, error) {
	meta, err := decodeMeta(v.Metadata)
	if err != nil {
		return backends.Volume{}, fmt.Errorf("Cinder volume %s: %w", v.ID, err)
	}
	status := map[string]any{
		"id":     v.ID,
		"status": v.Status,
	}
	if v.VolumeType != "" {
		status["type"] = v.VolumeType
	}
	if v.AvailabilityZone != "" {
		status["zone"] = v.AvailabilityZone
	}
	if h := b.holder(v); h != "" {
		status["attached"] = h
	}
	return backends.Volume{
		Name:       v.Name,
		SizeBytes:  int64(v.Size) << 30,
		CreatedAt:  v.CreatedAt,
		Meta:       meta,
		Status:     status,
		Attachment: b.attachment(v),
	}, nil
}

// attachment is the volume's claim as seen from this host: here, another
// host's (its metadata names it), or nobody's (not attached at all); nil
// when Cinder has it attached without a claim of blockvol's (another tool,
// an earlier version), where nothing can be said.
func (b *Backend) attachment(v *volumes.Volume) *backends.Attachment {
	switch {
	case b.claimedHere(v):
		return &backends.Attachment{Here: true}
	case v.Metadata[claimUUIDKey] != "":
		return &backends.Attachment{Holder: v.Metadata[claimHostKey]}
	case !busy(v):
		return &backends.Attachment{}
	}
	return nil
}

// busy reports whether a volume is attached, or being attached or detached.
func busy(v *volumes.Volume) bool {
	switch v.Status {
	case "in-use", "attaching", "reserved", "detaching":
		return true
	}
	return len(v.Attachments) > 0
}

// holder names the host that has the volume (this one included), or "".
func (b *Backend) holder(v *volumes.Volume) string {
	if !busy(v) {
		return ""
	}
	if h := v.Metadata[claimHostKey]; h != "" {
		return h
	}
	var names []string
	for _, a := range v.Attachments {
		switch {
		case a.HostName != "": // shown to admins only
			names = append(names, a.HostName)
		case a.ServerID != "":
			names = append(names, "server "+a.ServerID)
		}
	}
	return strings.Join(names, ", ")
}

// holderPhrase is "by host X" or "by a host blockvol does not know".
func (b *Backend) holderPhrase(v *volumes.Volume) string {
	h := b.holder(v)
	switch {
	case h == "":
		return "by a host blockvol does not know (attached by another tool)"
	case b.claimedHere(v):
		return "by this host (" + h + ")"
	}
	return "by host " + h
}

func checkName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("empty volume name: %w", sentinel.ErrInvalid)
	case len(name) > 255:
		return fmt.Errorf("volume name longer than Cinder's 255 characters: %w", sentinel.ErrInvalid)
	}
	return nil
}

// opErr and opErrf name the backend, the operation and the volume in an
// error: cinder: create volume "x": ....
var opErr, opErrf = backends.OpErrors("cinder")

// cleanup runs f with a deadline of its own (cleanupTimeout), so that
// undoing work still happens after the caller's ctx has ended. A failure
// is logged.
func (b *Backend) cleanup(ctx context.Context, f func(context.Context) error, log *slog.Logger, what string) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.cleanupTimeout)
	defer cancel()
	if err := f(ctx); err != nil {
		log.Error("cannot "+what, "error", err.Error())
		return false
	}
	return true
}

// open checks name and returns the logged-in client for op on it: the
// start of every call on one volume.
func (b *Backend) open(ctx context.Context, op, name string) (*conn, error) {
	if err := checkName(name); err != nil {
		return nil, opErr(op, name, err)
	}
	c, err := b.client(ctx)
	if err != nil {
		return nil, opErr(op, name, err)
	}
	return c, nil
}

// openVolume is open, then the volume named name, looked up with find
// (b.find, or b.findRecent where a lookup a moment ago will do). Both
// failures come as opErr, so ErrNotFound still shows through errors.Is.
func (b *Backend) openVolume(ctx context.Context, op, name string,
	find func(context.Context, *conn, string) (*volumes.Volume, error)) (*conn, *volumes.Volume, error) {
	c, err := b.open(ctx, op, name)
	if err != nil {
		return nil, nil, err
	}
	v, err := find(ctx, c, name)
	if err != nil {
		return c, nil, opErr(op, name, err)
	}
	return c, v, nil
}

// Package iscsitarget is the backend for a generic Linux iSCSI target: the
// volumes are sparse files on a target host — this host, or another one
// reached over SSH — exported by tgt there, one target per volume, the
// volume its LUN 1. Every agent (every blockvol plugin) configured with the
// same target host sees the same volumes: the scope is global.
//
// # Layout on the target host
//
// A volume named N of type T is two files in the directory of pool T:
//
//	N.img   the sparse backing file, mode 0600, exactly SizeBytes long
//	N.json  {"name","size_bytes","created_at","type","iqn","meta",
//	        "attached":{"host","initiator","since"}}, mode 0600
//
// and one target, <iqn_prefix>:N (see iqnFor for names that are not valid
// in an iSCSI name), LUN 1 backed by N.img. The record, not tgtd, is the
// truth: tgtd forgets its targets when it restarts, and a target missing
// for a volume is exported again from the record by Reconcile (which the
// plugin calls every few seconds while the volume is mounted on its host,
// and only while the record names that host; reconcile.go), or at the
// volume's next Attach (Get and List report it as missing meanwhile). Files are changed
// by a small POSIX sh helper (helper.sh) given as the script of `sh -c`,
// every value passed as a positional parameter, so no user value is ever
// shell syntax; over SSH, each argument is additionally quoted for the
// remote shell (package sshhost).
//
// # Crash safety
//
// As in the loop backend, the record is the commit point, written
// atomically (temporary file, fsync, rename, fsync of the directory).
// Create makes the backing file, exports it, then writes the record;
// Remove deletes the target, then the record, then the backing file. A
// backing file (and target) without record is debris of an interrupted
// Create or Remove: invisible, and taken over by the next Create of the
// name. A record without backing file is hidden and replaced by the next
// Create.
//
// # Attachment and fencing
//
// The record says which host has the volume attached (its host name and
// iSCSI initiator name). Attach, under the lock: reads the record, exports
// the target again if tgtd lost it (allowing the record's holder again, so
// that its sessions can recover), and then looks for anyone else — the
// record's holder, other initiator names on the target's ACL, other
// initiators logged in. Anyone else is refused with sentinel.ErrInUse
// naming them, unless AttachOptions.Preempt or Config.Preempt: then they
// are fenced off first (removed from the ACL, their connections closed).
// Then the record is claimed for this host and, only after that, this
// host's initiator name is bound on the ACL. The login itself runs outside
// the lock; a failed login of a fresh claim is undone (logout, ACL entry
// removed, claim cleared) unless another host took the volume meanwhile.
// Detach logs out first, then, under the lock, removes this host from the
// ACL and clears the claim. So a target's ACL never lets two hosts in, and
// a host is on the ACL only while the record names it.
//
// # Locking
//
// See lock.go: one flock(1) per volume on the target host (volumes never
// wait for each other), held by a long-running
// holder program for the duration of each change, released by the kernel
// when the holder exits — when the agent releases it, dies, or after 2
// minutes at most. Reads (Get, List) take no lock: records are replaced
// atomically.
package iscsitarget

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/keyedlock"
	"github.com/blockvol/blockvol/internal/sema"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

// BackendName is the value of the "backend" key of every volume's Status.
const BackendName = "iscsitarget"

// sectorSize: sizes are whole 512-byte sectors.
const sectorSize = 512

// undoTimeout bounds the undo of a failed attach (besides the wait for the
// lock), which runs even when the call's own deadline has passed.
const undoTimeout = 30 * time.Second

// Config configures a Backend.
type Config struct {
	// Portal is the "ip:port" initiators log in to.
	Portal string
	// Portals are more "ip:port" of the target host: each volume is
	// logged in through Portal and all of them (multipath).
	Portals []string
	// IQNPrefix starts every target name: <IQNPrefix>:<volume>.
	IQNPrefix string
	// Pools maps each volume type to a directory on the target host; it
	// must exist there. DefaultPool names the pool of a Create without
	// type; it also holds the lock file.
	Pools       map[string]string
	DefaultPool string
	// TGTControlPort is tgtd's control port (tgtadm -C).
	TGTControlPort int
	// CHAP, when set, is required of every initiator on every target
	// (a tgt account of that name is created on the target host if
	// missing, and bound to each target).
	CHAP *iscsi.CHAP
	// Preempt makes every Attach take the volume over from another host,
	// as AttachOptions.Preempt does.
	Preempt bool
	// HostName names this host in records and errors; "" = os.Hostname.
	HostName string
	// LockTimeout bounds the wait for the target host's lock; 0 = 30s.
	LockTimeout time.Duration
}

// Backend implements backends.Backend and backends.Checker on a Linux
// iSCSI target host.
type Backend struct {
	host Host
	sw   *tgt // the target software: tgt (LIO would need an interface here)
	init backends.Initiator
	log  *slog.Logger

	portal      string
	portals     []string // portal first, then Config.Portals
	iqnPrefix   string
	pools       map[string]string
	poolTypes   []string // sorted
	defaultPool string
	chap        *iscsi.CHAP
	preempt     bool
	hostName    string

	lockFile   string
	lockWait   time.Duration
	lockHold   time.Duration
	localLocks keyedlock.Map // this process's turn at each volume's lock
	holderMu   sync.Mutex
	holders    map[string]string // volume -> owner of its lock in this process
	heldLocks  sema.Sema         // one turn per lock held (maxHeldLocks)
	pid        int
	now        func() time.Time
}

var (
	_ backends.Backend = (*Backend)(nil)
	_ backends.Checker = (*Backend)(nil)
)

// New returns a Backend. It does not contact the target host: a target
// host that is down at start delays nothing but the calls that need it.
// A nil log discards messages.
func New(cfg Config, host Host, init backends.Initiator, log *slog.Logger) (*Backend, error) {
	if host == nil || init == nil {
		return nil, errors.New("iscsitarget: a Host and an Initiator are required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, p := range append([]string{cfg.Portal}, cfg.Portals...) {
		if host, port, err := net.SplitHostPort(p); err != nil || net.ParseIP(host) == nil || port == "" {
			return nil, fmt.Errorf("iscsitarget: portal %q must be ip:port", p)
		}
	}
	if cfg.IQNPrefix == "" || strings.ContainsAny(cfg.IQNPrefix, " \t\n/") || strings.HasSuffix(cfg.IQNPrefix, ":") {
		return nil, fmt.Errorf("iscsitarget: invalid IQN prefix %q", cfg.IQNPrefix)
	}
	if len(cfg.Pools) == 0 {
		return nil, errors.New("iscsitarget: at least one pool is required")
	}
	if _, ok := cfg.Pools[cfg.DefaultPool]; !ok {
		return nil, fmt.Errorf("iscsitarget: default pool %q is not a pool", cfg.DefaultPool)
	}
	pools := map[string]string{}
	for t, dir := range cfg.Pools {
		if !filepath.IsAbs(dir) || filepath.Clean(dir) != dir || dir == "/" {
			return nil, fmt.Errorf("iscsitarget: pool %q: directory %q must be an absolute, clean path", t, dir)
		}
		pools[t] = dir
	}
	if cfg.CHAP != nil && (cfg.CHAP.Username == "" || cfg.CHAP.Password == "") {
		return nil, errors.New("iscsitarget: CHAP needs both a username and a password")
	}
	if cfg.HostName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("iscsitarget: host name: %w", err)
		}
		cfg.HostName = h
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = defaultLockWait
	}
	b := &Backend{
		host:        host,
		sw:          &tgt{host: host, port: cfg.TGTControlPort},
		init:        init,
		log:         log.With(slog.String("backend", BackendName)),
		portal:      cfg.Portal,
		portals:     append([]string{cfg.Portal}, cfg.Portals...),
		iqnPrefix:   cfg.IQNPrefix,
		pools:       pools,
		poolTypes:   slices.Sorted(maps.Keys(pools)),
		defaultPool: cfg.DefaultPool,
		preempt:     cfg.Preempt,
		hostName:    cfg.HostName,
		lockFile:    pools[cfg.DefaultPool] + "/" + lockFileName,
		lockWait:    cfg.LockTimeout,
		lockHold:    defaultLockHold,
		holders:     map[string]string{},
		heldLocks:   sema.New(maxHeldLocks),
		pid:         os.Getpid(),
		now:         time.Now,
	}
	if cfg.CHAP != nil {
		c := *cfg.CHAP
		b.chap = &c
	}
	return b, nil
}

// Scope implements backends.Backend: every agent sees the same volumes.
func (b *Backend) Scope() string { return backends.ScopeGlobal }

// Create implements backends.Backend.
func (b *Backend) Create(ctx context.Context, req backends.CreateRequest) (backends.Volume, error) {
	return b.create(ctx, req, func(ctx context.Context, img string) error {
		return b.createImage(ctx, img, req.SizeBytes)
	})
}

// create makes a volume whose backing file makeImage makes (new, at img,
// req.SizeBytes long), under the target host's lock.
func (b *Backend) create(ctx context.Context, req backends.CreateRequest, makeImage func(ctx context.Context, img string) error) (backends.Volume, error) {
	const op = "create"
	name := req.Name
	pool, dir, err := b.checkCreate(req)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	iqn, err := iqnFor(b.iqnPrefix, name)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	log := b.log.With(slog.String("volume", name), slog.String("op", op))
	r := &record{Name: name, SizeBytes: req.SizeBytes, Type: pool, IQN: iqn, Meta: maps.Clone(req.Meta)}
	var e *export
	err = b.withLock(ctx, op, name, func(ctx context.Context) error {
		exports, err := b.clearName(ctx, log, name, iqn)
		if err != nil {
			return err
		}
		e, err = b.makeVolume(ctx, log, exports, dir, r, makeImage)
		return err
	})
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	img := b.imagePath(dir, name)
	log.Info("volume created", slog.Int64("size_bytes", r.SizeBytes), slog.String("file", img), slog.String("target", iqn))
	return b.volume(&found{name: name, rec: r, recDir: dir, images: []string{dir}}, e, nil), nil
}

// checkCreate validates a Create request and returns its pool and the
// pool's directory.
func (b *Backend) checkCreate(req backends.CreateRequest) (pool, dir string, err error) {
	if err := checkName(req.Name); err != nil {
		return "", "", err
	}
	pool = req.VolumeType
	if pool == "" {
		pool = b.defaultPool
	}
	dir, ok := b.pools[pool]
	switch {
	case !ok:
		return "", "", fmt.Errorf("volume type %q is not one of this backend's pools (%s): %w", req.VolumeType, strings.Join(b.poolTypes, ", "), sentinel.ErrInvalid)
	case req.IOPS != 0:
		return "", "", fmt.Errorf("the iscsitarget backend does not support option IOPS (%d): %w", req.IOPS, sentinel.ErrInvalid)
	case req.AvailabilityZone != "":
		return "", "", fmt.Errorf("the iscsitarget backend does not support option availability zone (%q): %w", req.AvailabilityZone, sentinel.ErrInvalid)
	case req.SizeBytes <= 0:
		return "", "", fmt.Errorf("size %d: must be positive: %w", req.SizeBytes, sentinel.ErrInvalid)
	case req.SizeBytes%sectorSize != 0:
		return "", "", fmt.Errorf("size %d: must be a multiple of %d bytes: %w", req.SizeBytes, sectorSize, sentinel.ErrInvalid)
	}
	return pool, dir, nil
}

// clearName makes name free for a new volume, under its lock: an existing
// volume is ErrExists; debris of an interrupted Create or Remove (a record
// without backing file, a target of ours nobody uses, backing files
// without record) is removed. It returns the targets as tgtd lists them.
func (b *Backend) clearName(ctx context.Context, log *slog.Logger, name, iqn string) (map[string]*export, error) {
	all, err := b.scan(ctx, name)
	if err != nil {
		return nil, err
	}
	f := all[name]
	if f == nil {
		f = &found{name: name}
	}
	switch {
	case f.volume():
		return nil, sentinel.ErrExists
	case f.recErr != nil:
		return nil, fmt.Errorf("an unreadable record is in the way (%w); repair or remove it on the target host", f.recErr)
	case f.rec != nil:
		// A record whose backing file is gone: never made by this
		// code (see the package comment). The name is free.
		log.Warn("replacing a record whose backing file is missing", slog.String("record", b.recordPath(f.recDir, name)))
		if err := b.removeFiles(ctx, b.recordPath(f.recDir, name)); err != nil {
			return nil, err
		}
	}
	exports, err := b.sw.list(ctx)
	if err != nil {
		return nil, err
	}
	if err := b.clearTarget(ctx, log, exports, f, iqn); err != nil {
		return nil, err
	}
	if len(f.images) > 0 {
		var leftovers []string
		for _, d := range f.images {
			leftovers = append(leftovers, b.imagePath(d, name))
		}
		log.Warn("removing leftover backing files of an interrupted operation", slog.Any("files", leftovers))
		if err := b.removeFiles(ctx, leftovers...); err != nil {
			return nil, err
		}
	}
	return exports, nil
}

// clearTarget removes a target named iqn left by an interrupted Create or
// Remove of f's name; someone else's target of that name, or one with an
// initiator logged in, is an error. exports is updated.
func (b *Backend) clearTarget(ctx context.Context, log *slog.Logger, exports map[string]*export, f *found, iqn string) error {
	old := exports[iqn]
	if old == nil {
		return nil
	}
	ours := old.file == ""
	for _, d := range f.images {
		ours = ours || old.file == b.imagePath(d, f.name)
	}
	switch {
	case !ours:
		return fmt.Errorf("iSCSI target %s already exists on the target host, exporting %s: %w", iqn, old.file, sentinel.ErrExists)
	case len(old.sessions) > 0:
		return fmt.Errorf("a leftover iSCSI target %s of an interrupted operation still has initiator %s logged in: %w", iqn, strings.Join(old.connected(), ", "), sentinel.ErrInUse)
	}
	log.Warn("removing leftover iSCSI target of an interrupted operation", slog.String("target", iqn))
	if err := b.sw.unexport(ctx, old); err != nil {
		return err
	}
	delete(exports, iqn)
	return nil
}

// makeVolume makes volume r in dir, under its lock: backing file (by
// makeImage), target (with the CHAP account bound), then the record,
// which commits it. On failure what was made is undone.
func (b *Backend) makeVolume(ctx context.Context, log *slog.Logger, exports map[string]*export, dir string, r *record, makeImage func(ctx context.Context, img string) error) (*export, error) {
	img := b.imagePath(dir, r.Name)
	if err := makeImage(ctx, img); err != nil {
		return nil, err
	}
	e, err := b.sw.export(ctx, exports, r.IQN, img)
	if err != nil {
		b.undoCreate(ctx, log, nil, img)
		return nil, err
	}
	if b.chap != nil {
		if err := b.sw.bindAccount(ctx, e, b.chap.Username, b.chap.Password); err != nil {
			b.undoCreate(ctx, log, e, img)
			return nil, err
		}
	}
	r.CreatedAt = b.now().UTC()
	if err := b.writeRecord(ctx, dir, r); err != nil {
		// The rename may have happened before the failure: take the
		// record away first, then the backing file.
		b.undoCreate(ctx, log, e, b.recordPath(dir, r.Name), img)
		return nil, err
	}
	return e, nil
}

// undoCreate deletes target e (if any) and files of a failed Create, even
// when ctx has ended. Failures are logged: the Create has failed already.
func (b *Backend) undoCreate(ctx context.Context, log *slog.Logger, e *export, files ...string) {
	uctx := context.WithoutCancel(ctx)
	if e != nil {
		if err := b.sw.unexport(uctx, e); err != nil {
			log.Error("cannot delete the target of a failed create", slog.String("target", e.iqn), slog.Any("error", err))
		}
	}
	if err := b.removeFiles(uctx, files...); err != nil {
		log.Error("cannot remove the files of a failed create", slog.Any("error", err))
	}
}

// Get implements backends.Backend. It changes nothing: a volume whose
// target tgtd lost is reported with Status "export" saying so, and
// exported again by the next Attach. When tgtd cannot be asked, the
// volume is still returned, with the reason in Status "export".
func (b *Backend) Get(ctx context.Context, name string) (backends.Volume, error) {
	const op = "get"
	if err := checkName(name); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	f, err := b.load(ctx, name)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	exports, lerr := b.sw.list(ctx)
	return b.volume(f, exports[f.rec.IQN], lerr), nil
}

// List implements backends.Backend: one helper run reads every record,
// one tgtadm run every target. Volumes come sorted by name; an unreadable
// record is logged and left out rather than hiding the others.
func (b *Backend) List(ctx context.Context) ([]backends.Volume, error) {
	all, err := b.scan(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("iscsitarget: list: %w", err)
	}
	exports, lerr := b.sw.list(ctx)
	var out []backends.Volume
	for _, name := range slices.Sorted(maps.Keys(all)) {
		f := all[name]
		switch {
		case f.recErr != nil:
			b.log.Error("skipping unreadable volume record", slog.String("volume", name), slog.String("op", "list"), slog.Any("error", f.recErr))
		case f.rec == nil:
			// A leftover backing file: not a volume.
		case !f.volume():
			b.log.Warn("hiding volume whose backing file is missing", slog.String("volume", name), slog.String("op", "list"))
		default:
			out = append(out, b.volume(f, exports[f.rec.IQN], lerr))
		}
	}
	return out, nil
}

// SetMeta implements backends.Backend: the record is rewritten atomically,
// under the lock, keeping everything but Meta.
func (b *Backend) SetMeta(ctx context.Context, name string, meta map[string]string) error {
	const op = "setmeta"
	if err := checkName(name); err != nil {
		return opErr(op, name, err)
	}
	err := b.withLock(ctx, op, name, func(ctx context.Context) error {
		f, err := b.load(ctx, name)
		if err != nil {
			return err
		}
		f.rec.Meta = maps.Clone(meta)
		return b.writeRecord(ctx, f.recDir, f.rec)
	})
	if err != nil {
		return opErr(op, name, err)
	}
	return nil
}

// Remove implements backends.Backend. A volume that a host has attached,
// or whose target still has an initiator logged in, yields ErrInUse
// naming it.
func (b *Backend) Remove(ctx context.Context, name string) error {
	const op = "remove"
	if err := checkName(name); err != nil {
		return opErr(op, name, err)
	}
	log := b.log.With(slog.String("volume", name), slog.String("op", op))
	err := b.withLock(ctx, op, name, func(ctx context.Context) error {
		f, err := b.load(ctx, name)
		if err != nil {
			return err
		}
		if a := f.rec.Attached; a != nil {
			return fmt.Errorf("host %s has it attached since %s; unmount it there first: %w", a, a.Since.Format(time.RFC3339), sentinel.ErrInUse)
		}
		exports, err := b.sw.list(ctx)
		if err != nil {
			return err
		}
		img := b.imagePath(f.recDir, name)
		if e := exports[f.rec.IQN]; e != nil {
			if in := e.connected(); len(in) > 0 {
				return fmt.Errorf("initiator %s is still logged in to its iSCSI target %s: %w", strings.Join(in, ", "), e.iqn, sentinel.ErrInUse)
			}
			if e.file == img || e.file == "" {
				if err := b.sw.unexport(ctx, e); err != nil {
					return err
				}
			} else {
				log.Warn("leaving iSCSI target that exports another file", slog.String("target", e.iqn), slog.String("file", e.file))
			}
		}
		// The record first: the volume is gone at that instant.
		return b.removeFiles(ctx, b.recordPath(f.recDir, name), img)
	})
	if err != nil {
		return opErr(op, name, err)
	}
	log.Info("volume removed")
	return nil
}

// Attach implements backends.Backend; see the package comment.
func (b *Backend) Attach(ctx context.Context, name string, opts backends.AttachOptions) (string, error) {
	const op = "attach"
	if err := checkName(name); err != nil {
		return "", opErr(op, name, err)
	}
	me, err := b.init.InitiatorName()
	if err != nil {
		return "", opErr(op, name, err)
	}
	preempt := opts.Preempt || b.preempt
	log := b.log.With(slog.String("volume", name), slog.String("op", op))
	var rec *record
	claimed := false
	err = b.withLock(ctx, op, name, func(ctx context.Context) error {
		f, err := b.load(ctx, name)
		if err != nil {
			return err
		}
		rec = f.rec
		exports, err := b.sw.list(ctx)
		if err != nil {
			return err
		}
		e, err := b.ensureExport(ctx, log, exports, f)
		if err != nil {
			return err
		}
		holder, acl, sessions := others(rec, e, me)
		if holder != nil || len(acl) > 0 || len(sessions) > 0 {
			what := describeOthers(holder, acl, sessions)
			if !preempt {
				return fmt.Errorf("%s; detach it there first, or take it over with the preempt option (which fences that host off): %w", what, sentinel.ErrInUse)
			}
			log.Warn("preempting: fencing off the other host", slog.String("other", what))
			if err := b.fence(ctx, e, holder, acl, sessions); err != nil {
				return fmt.Errorf("fence off %s: %w", what, err)
			}
		}
		if rec.Attached == nil || rec.Attached.Initiator != me {
			// Claim in the record first, then open the ACL: a crash in
			// between leaves a claim without access, never the reverse.
			rec.Attached = &attachment{Host: b.hostName, Initiator: me, Since: b.now().UTC()}
			if err := b.writeRecord(ctx, f.recDir, rec); err != nil {
				return err
			}
			claimed = true
		}
		if !slices.Contains(e.acl, me) {
			if err := b.sw.allow(ctx, e, me); err != nil {
				return err
			}
		}
		if preempt && (holder != nil || len(acl) > 0 || len(sessions) > 0) {
			// A login of the fenced host that was in flight while its
			// ACL entry went may have completed since: close it again.
			return b.closeOthers(ctx, rec.IQN, me)
		}
		return nil
	})
	if err != nil {
		return "", opErr(op, name, err)
	}
	dev, err := b.init.Attach(ctx, b.target(rec))
	if err != nil {
		if claimed {
			b.undoAttach(ctx, log, name, rec, me)
		}
		return "", opErrf(op, name, "iSCSI login: %w", err)
	}
	log.Info("volume attached", slog.String("device", dev), slog.String("target", rec.IQN))
	return dev, nil
}

// ensureExport returns the volume's target, exporting it again when tgtd
// lost it (a restart). A re-exported target allows the record's holder
// again, so that its sessions can log back in.
func (b *Backend) ensureExport(ctx context.Context, log *slog.Logger, exports map[string]*export, f *found) (*export, error) {
	rec := f.rec
	img := b.imagePath(f.recDir, rec.Name)
	e := exports[rec.IQN]
	if e != nil && e.file != img {
		if e.file != "" || len(e.sessions) > 0 {
			return nil, fmt.Errorf("iSCSI target %s on the target host exports %s, not this volume's %s; remove that target by hand", rec.IQN, e.file, img)
		}
		// A target without LUN: an export interrupted half way.
		if err := b.sw.unexport(ctx, e); err != nil {
			return nil, err
		}
		delete(exports, rec.IQN)
		e = nil
	}
	if e == nil {
		log.Warn("exporting the volume again: its iSCSI target is missing (tgtd restarted?)", slog.String("target", rec.IQN))
		var err error
		if e, err = b.sw.export(ctx, exports, rec.IQN, img); err != nil {
			return nil, err
		}
		if a := rec.Attached; a != nil {
			if err := b.sw.allow(ctx, e, a.Initiator); err != nil {
				return nil, err
			}
		}
	}
	if b.chap != nil && !slices.Contains(e.accounts, b.chap.Username) {
		if err := b.sw.bindAccount(ctx, e, b.chap.Username, b.chap.Password); err != nil {
			return nil, err
		}
	}
	return e, nil
}

// others returns who, besides initiator me, has or may get the volume:
// the record's holder, other ACL entries, other logged-in initiators.
func others(rec *record, e *export, me string) (holder *attachment, acl, sessions []string) {
	if rec.Attached != nil && rec.Attached.Initiator != me {
		holder = rec.Attached
	}
	for _, a := range e.acl {
		if a != me {
			acl = append(acl, a)
		}
	}
	for _, s := range e.connected() {
		if s != me {
			sessions = append(sessions, s)
		}
	}
	return holder, acl, sessions
}

// describeOthers phrases others' result for an error.
func describeOthers(holder *attachment, acl, sessions []string) string {
	var parts []string
	if holder != nil {
		parts = append(parts, fmt.Sprintf("host %s has it attached since %s", holder, holder.Since.Format(time.RFC3339)))
	}
	var extra []string
	for _, s := range append(slices.Clone(acl), sessions...) {
		if (holder == nil || s != holder.Initiator) && !slices.Contains(extra, s) {
			extra = append(extra, s)
		}
	}
	if len(extra) > 0 {
		parts = append(parts, fmt.Sprintf("initiator %s may use its iSCSI target", strings.Join(extra, ", ")))
	}
	return strings.Join(parts, ", and ")
}

// fence removes everyone but this host from the target: ACL entries first
// (no new logins), then their connections.
func (b *Backend) fence(ctx context.Context, e *export, holder *attachment, acl, sessions []string) error {
	deny := slices.Clone(acl)
	if holder != nil && !slices.Contains(deny, holder.Initiator) && slices.Contains(e.acl, holder.Initiator) {
		deny = append(deny, holder.Initiator)
	}
	for _, a := range deny {
		if err := b.sw.deny(ctx, e, a); err != nil {
			return err
		}
	}
	for _, s := range sessions {
		if err := b.sw.disconnect(ctx, e, s); err != nil {
			return err
		}
	}
	return nil
}

// closeOthers closes the connections of every initiator but me.
func (b *Backend) closeOthers(ctx context.Context, iqn, me string) error {
	exports, err := b.sw.list(ctx)
	if err != nil {
		return err
	}
	e := exports[iqn]
	if e == nil {
		return fmt.Errorf("iSCSI target %s vanished while being attached", iqn)
	}
	for _, s := range e.connected() {
		if s != me {
			if err := b.sw.disconnect(ctx, e, s); err != nil {
				return err
			}
		}
	}
	return nil
}

// undoAttach takes back a claim whose login failed: logout, ACL entry
// removed, claim cleared — unless another host took the volume meanwhile.
// Failures are logged: the attach has failed already.
func (b *Backend) undoAttach(ctx context.Context, log *slog.Logger, name string, rec *record, me string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), b.lockWait+undoTimeout)
	defer cancel()
	if err := b.init.Detach(ctx, b.target(rec)); err != nil {
		log.Error("undo of a failed attach: iSCSI logout failed; removing this host from the target anyway", slog.Any("error", err))
	}
	err := b.withLock(ctx, "undo attach", name, func(ctx context.Context) error {
		return b.release(ctx, name, me)
	})
	if err != nil {
		log.Error("undo of a failed attach failed; detach the volume to retry", slog.Any("error", err))
	}
}

// release removes initiator me from the volume's target and clears its
// claim in the record, if the record still names it. Under the lock.
func (b *Backend) release(ctx context.Context, name, me string) error {
	f, err := b.load(ctx, name)
	if err != nil {
		return err
	}
	exports, err := b.sw.list(ctx)
	if err != nil {
		return err
	}
	if e := exports[f.rec.IQN]; e != nil {
		if slices.Contains(e.acl, me) {
			if err := b.sw.deny(ctx, e, me); err != nil {
				return err
			}
		}
		if slices.Contains(e.connected(), me) {
			if err := b.sw.disconnect(ctx, e, me); err != nil {
				return err
			}
		}
	}
	if a := f.rec.Attached; a != nil && a.Initiator == me {
		f.rec.Attached = nil
		return b.writeRecord(ctx, f.recDir, f.rec)
	}
	return nil
}

// Detach implements backends.Backend: this host logs out, then, under the
// lock, leaves the target's ACL and clears its claim. A volume that is
// gone, or held by another host, is only logged out of.
//
// The logout needs nothing from the target host: the target's name follows
// from the volume's (the record's IQN is used when the record can be read,
// in case the prefix changed since). So a target host that cannot be
// reached, or whose record of the volume is gone, never keeps this host
// logged in: the logout is done, and only the target host's side (ACL,
// claim) is reported undone, for the next Detach to finish.
func (b *Backend) Detach(ctx context.Context, name string) error {
	const op = "detach"
	if err := checkName(name); err != nil {
		return opErr(op, name, err)
	}
	me, err := b.init.InitiatorName()
	if err != nil {
		return opErr(op, name, err)
	}
	iqn, err := iqnFor(b.iqnPrefix, name)
	if err != nil {
		return opErr(op, name, err)
	}
	f, lerr := b.load(ctx, name)
	rec := &record{Name: name, IQN: iqn}
	if lerr == nil {
		rec = f.rec
	}
	if err := b.init.Detach(ctx, b.target(rec)); err != nil {
		return opErrf(op, name, "iSCSI logout: %w", err)
	}
	if errors.Is(lerr, sentinel.ErrNotFound) {
		return nil
	}
	if lerr != nil {
		return opErrf(op, name, "logged out here, but the target host could not be told to revoke this host's access: %w", lerr)
	}
	err = b.withLock(ctx, op, name, func(ctx context.Context) error {
		err := b.release(ctx, name, me)
		if errors.Is(err, sentinel.ErrNotFound) {
			return nil
		}
		return err
	})
	if err != nil {
		return opErr(op, name, err)
	}
	b.log.Info("volume detached", slog.String("volume", name), slog.String("target", f.rec.IQN))
	return nil
}

// Check implements backends.Checker: the target host answers, its pool
// directories exist and are writable, tgtd answers, and this host has an
// initiator name. It changes nothing.
func (b *Backend) Check(ctx context.Context) error {
	var errs []error
	if _, err := b.helper(ctx, "check", b.poolDirs()...); err != nil {
		errs = append(errs, fmt.Errorf("target host: %w", err))
	} else if err := b.sw.check(ctx); err != nil {
		errs = append(errs, err)
	}
	if _, err := b.init.InitiatorName(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("iscsitarget: %w", err)
	}
	return nil
}

// target is what the initiator needs to log in to a volume.
func (b *Backend) target(r *record) iscsi.Target {
	return iscsi.Target{IQN: r.IQN, Portals: slices.Clone(b.portals), LUN: lun, CHAP: b.chap}
}

func (b *Backend) volume(f *found, e *export, listErr error) backends.Volume {
	r := f.rec
	status := map[string]any{
		"backend": BackendName,
		"type":    r.Type,
		"target":  r.IQN,
		"portal":  b.portal,
		"file":    b.imagePath(f.recDir, r.Name),
	}
	if a := r.Attached; a != nil {
		status["attached_to"] = a.String()
	}
	switch {
	case listErr != nil:
		status["export"] = "unknown: " + listErr.Error()
	case e == nil:
		status["export"] = "missing: tgtd has no such target (restarted?); the host that has it mounted exports it again within seconds, else the next attach exports it again"
	default:
		status["export"] = "ok"
		if in := e.connected(); len(in) > 0 {
			sort.Strings(in)
			status["sessions"] = strings.Join(in, ", ")
		}
	}
	return backends.Volume{
		Name:       r.Name,
		SizeBytes:  r.SizeBytes,
		CreatedAt:  r.CreatedAt,
		Meta:       maps.Clone(r.Meta),
		Status:     status,
		Attachment: b.attachment(r),
	}
}

// attachment is r's claim as seen from this host; nil when this host's
// initiator name cannot be read (then nothing can be said).
func (b *Backend) attachment(r *record) *backends.Attachment {
	me, err := b.init.InitiatorName()
	if err != nil {
		return nil
	}
	switch a := r.Attached; {
	case a == nil:
		return &backends.Attachment{}
	case a.Initiator == me:
		return &backends.Attachment{Here: true}
	default:
		return &backends.Attachment{Holder: a.String()}
	}
}

// opErr and opErrf name the backend, the operation and the volume in an
// error: iscsitarget: create volume "x": ....
var opErr, opErrf = backends.OpErrors("iscsitarget")

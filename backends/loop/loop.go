// Package loop is blockvol's embedded default backend: each volume is a
// sparse image file in a data directory, attached to this host with a loop
// device. It needs no external service, only the kernel's loop driver (and
// losetup(8) where its ioctls cannot be used: see device.go).
//
// # Layout
//
// A volume named N is two files in Config.DataDir:
//
//	N.img   the sparse image, mode 0600, exactly SizeBytes long
//	N.json  {"size_bytes":…, "created_at":"RFC3339", "meta":{…}}, mode 0600
//
// # Crash safety
//
// The JSON record is the commit point. A volume exists if and only if both
// its JSON record and its image exist; anything else is debris of an
// interrupted operation and is never shown by Get or List.
//
//   - Create makes the image first (O_EXCL, so two creators never share one),
//     sizes it, fsyncs it and the directory, and only then writes the JSON
//     atomically (state.WriteFileAtomic). A crash before the JSON lands
//     leaves an image without JSON: invisible, and the next Create of that
//     name deletes it and proceeds (unless a loop device still uses it, in
//     which case Create fails with ErrInUse rather than pull the data out
//     from under a user). New also sweeps such orphan images (detaching
//     their loop devices first: no volume was ever handed out on them),
//     and the temporary files of interrupted atomic writes, when it starts.
//   - Remove deletes the JSON first (the volume is gone at that instant) and
//     the image second. A crash in between leaves an orphan image, handled
//     as above.
//   - A JSON record without an image cannot result from a crash of this
//     code (the image is durable before the JSON is written, and outlives
//     it on removal); if one is found anyway (someone deleted the image) the
//     volume is hidden from Get and List, logged, and a Create of the name
//     replaces the stale record.
//   - SetMeta rewrites the JSON atomically, so a reader sees the old or the
//     new record, never a torn one.
//   - A record that is damaged anyway (emptied, garbled, a symlink in its
//     place: never followed) does not block its volume: Get and List show
//     it with the image's size and the damage in Status, Create of the name
//     says it exists, Remove removes it and SetMeta writes a sound record.
//
// These guarantees assume one process (one plugin) owns DataDir. Within
// that process, operations on one name are serialized by a per-name lock in
// addition to the plugin's own serialization.
//
// # Names
//
// The plugin validates names, but the backend defends its directory anyway:
// a name that is empty, "." or "..", contains '/', NUL or any other control
// character, or is longer than 234 bytes (so that every file name, even
// state.WriteFileAtomic's temporary one, fits NAME_MAX) is rejected with
// ErrInvalid before any file is touched.
//
// # Sizes
//
// SizeBytes must be positive and a multiple of 512 (the loop device's
// sector size); it is kept exactly as given, never rounded.
//
// # Attachment
//
// The backend remembers no device names: each Attach, Detach, Get, List and
// Remove reads <SysRoot>/block/loop*/loop/backing_file afresh (once per
// call, however many volumes) to learn which loop devices are backed by
// which image. A device whose backing file reads "<path> (deleted)" does not
// count as backed by the current image, but Detach lets go of it too (an
// image deleted by hand while mounted), and AttachedHere names it.
//
// Detach only asks the kernel to let go: a device someone still holds open
// (a mount that was not undone yet, udev probing it) is marked autoclear
// and disappears when closed. Remove therefore waits a short grace (2 s)
// while every device still backed by the image is marked autoclear, then
// reports ErrInUse naming the device.
package loop

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/blockvol/blockvol/internal/quote"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/keyedlock"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/state"
)

// BackendName is the value of the "backend" key of every volume's Status.
const BackendName = "loop"

const (
	imgSuffix  = ".img"
	jsonSuffix = ".json"
	// maxNameLen keeps every file name within NAME_MAX (255), including
	// state.WriteFileAtomic's temporary "." + <name>.json + ".tmp-" + up to
	// 10 random digits.
	maxNameLen = 255 - len(".") - len(jsonSuffix) - len(".tmp-") - 10
	sectorSize = 512
)

// Config configures a loop Backend.
type Config struct {
	// DataDir holds the images and their records, e.g.
	// /var/lib/blockvol/loop. It is created with mode 0700 if missing.
	DataDir string
	// SysRoot is where sysfs is mounted; "" means "/sys".
	SysRoot string
	// DevRoot is where device nodes live; "" means "/dev".
	// With both at their defaults loop devices are bound and unbound with
	// the kernel's ioctls; with either elsewhere (a test's fake tree) with
	// losetup(8) through the Runner.
	DevRoot string
}

// Backend implements backends.Backend with image files and loop devices.
type Backend struct {
	dir string // absolute, symlinks resolved: sysfs reports resolved paths
	sys string
	dev string
	run hostexec.Runner
	log *slog.Logger
	// loops binds images to loop devices: see newLoopDevices.
	loops loopDevices

	// removeGrace bounds how long Remove waits for loop devices that are
	// already being torn down (autoclear set by an earlier Detach) to go.
	removeGrace time.Duration
	pollEvery   time.Duration

	locks keyedlock.Map

	// detached holds, for ProvenUnchanged, each image as its last Detach
	// left it (unchanged.go).
	detached imageStates

	// copies is how snapshots and clones are copied here: copyReflink
	// when the data directory's filesystem shares blocks, else copySparse.
	copies string
}

var _ backends.Backend = (*Backend)(nil)

// record is the on-disk JSON of one volume.
type record struct {
	SizeBytes int64             `json:"size_bytes"`
	CreatedAt time.Time         `json:"created_at"`
	Meta      map[string]string `json:"meta"`

	// damage, when set, says why the record on disk could not be used.
	damage string
}

// New returns a Backend storing its volumes in cfg.DataDir, creating the
// directory (mode 0700) if needed. It removes debris of interrupted
// operations found there: images without a record that no loop device
// uses, and temporary files of interrupted atomic writes. A nil log
// discards messages.
func New(cfg Config, run hostexec.Runner, log *slog.Logger) (*Backend, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("loop: DataDir is required")
	}
	if run == nil {
		return nil, errors.New("loop: a hostexec.Runner is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.SysRoot == "" {
		cfg.SysRoot = "/sys"
	}
	if cfg.DevRoot == "" {
		cfg.DevRoot = "/dev"
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("loop: create data directory: %w", err)
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("loop: data directory: %w", err)
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("loop: data directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("loop: data directory: %w", err)
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("loop: data directory %s is not a directory", dir)
	}
	b := &Backend{
		dir:         dir,
		sys:         cfg.SysRoot,
		dev:         cfg.DevRoot,
		run:         run,
		loops:       newLoopDevices(cfg.SysRoot, cfg.DevRoot, run),
		log:         log.With(slog.String("backend", BackendName)),
		removeGrace: 2 * time.Second,
		pollEvery:   20 * time.Millisecond,
		detached:    imageStates{m: map[string]imageState{}},
	}
	b.sweep()
	b.copies = copySparse
	if probeReflink(dir) {
		b.copies = copyReflink
	}
	return b, nil
}

// Scope implements backends.Backend: loop volumes exist on this host only.
func (b *Backend) Scope() string { return backends.ScopeLocal }

// Create implements backends.Backend.
func (b *Backend) Create(ctx context.Context, req backends.CreateRequest) (backends.Volume, error) {
	r, log, err := b.create(ctx, req, func(log *slog.Logger, img string) (func(), error) {
		if err := b.makeImage(img, req.SizeBytes); err != nil {
			if !errors.Is(err, sentinel.ErrExists) { // not ours to remove then
				if rerr := state.RemoveFile(img); rerr != nil {
					log.Error("cannot remove image of failed create", slog.String("image", img), slog.Any("error", rerr))
				}
			}
			return nil, err
		}
		return nil, nil
	})
	if err != nil {
		return backends.Volume{}, err
	}
	log.Info("volume created", slog.Int64("size_bytes", r.SizeBytes), slog.String("image", b.imgPath(req.Name)))
	return b.volume(req.Name, r, nil), nil
}

// create is the frame of Create and CreateFrom: it checks req, holds its
// name's lock and clears the name's debris (beginCreate), has fill write
// the new image at img, and commits the volume's record. A release that
// fill returns (nil is none) runs once the record is committed or the
// commit failed; fill releases what it holds itself when it fails.
// Errors are wrapped by opErr; the logger names the volume.
func (b *Backend) create(ctx context.Context, req backends.CreateRequest, fill func(log *slog.Logger, img string) (release func(), err error)) (record, *slog.Logger, error) {
	const op = "create"
	name := req.Name
	log, unlock, err := b.beginCreate(ctx, req)
	if err != nil {
		return record{}, nil, opErr(op, name, err)
	}
	defer unlock()
	release, err := fill(log, b.imgPath(name))
	if err != nil {
		return record{}, nil, opErr(op, name, err)
	}
	if release != nil {
		defer release()
	}
	r := record{SizeBytes: req.SizeBytes, CreatedAt: time.Now().UTC(), Meta: maps.Clone(req.Meta)}
	if err := b.commit(log, name, r); err != nil {
		return record{}, nil, opErr(op, name, err)
	}
	return r, log, nil
}

// beginCreate checks req, takes its name's lock (the caller releases it)
// and clears the name's debris (see clearDebris).
func (b *Backend) beginCreate(ctx context.Context, req backends.CreateRequest) (*slog.Logger, func(), error) {
	if err := checkCreate(req); err != nil {
		return nil, nil, err
	}
	unlock, err := b.locks.Lock(ctx, req.Name)
	if err != nil {
		return nil, nil, err
	}
	log := b.log.With(slog.String("volume", req.Name), slog.String("op", "create"))
	if err := b.clearDebris(log, req.Name); err != nil {
		unlock()
		return nil, nil, err
	}
	return log, unlock, nil
}

// checkCreate refuses, with ErrInvalid, a request the loop backend cannot
// satisfy.
func checkCreate(req backends.CreateRequest) error {
	if err := checkName(req.Name); err != nil {
		return err
	}
	switch {
	case req.VolumeType != "":
		return fmt.Errorf("the loop backend does not support option volume type (%s): %w", quote.Short(req.VolumeType), sentinel.ErrInvalid)
	case req.IOPS != 0:
		return fmt.Errorf("the loop backend does not support option IOPS (%d): %w", req.IOPS, sentinel.ErrInvalid)
	case req.AvailabilityZone != "":
		return fmt.Errorf("the loop backend does not support option availability zone (%s): %w", quote.Short(req.AvailabilityZone), sentinel.ErrInvalid)
	case req.SizeBytes <= 0:
		return fmt.Errorf("size %d: must be positive: %w", req.SizeBytes, sentinel.ErrInvalid)
	case req.SizeBytes%sectorSize != 0:
		return fmt.Errorf("size %d: must be a multiple of %d bytes: %w", req.SizeBytes, sectorSize, sentinel.ErrInvalid)
	}
	return nil
}

// clearDebris makes name free for a Create: ErrExists when the volume
// exists (an image and a record, even a damaged one); otherwise a record
// without image (never made by this code, see the package comment) and an
// image without record (debris of an interrupted Create or Remove) are
// deleted, unless a loop device still uses that image (ErrInUse: its data
// is not pulled out from under a user).
func (b *Backend) clearDebris(log *slog.Logger, name string) error {
	img, rec := b.imgPath(name), b.jsonPath(name)
	recOK, err := recordPresent(rec)
	if err != nil {
		return err
	}
	imgOK, err := isRegular(img)
	if err != nil {
		return err
	}
	switch {
	case recOK && imgOK:
		return sentinel.ErrExists
	case recOK:
		log.Warn("replacing a record whose image is missing", slog.String("record", rec))
		return state.RemoveFile(rec)
	case imgOK:
		devs, err := b.devicesOf(img)
		if err != nil {
			return err
		}
		if len(devs) > 0 {
			return fmt.Errorf("leftover image %s without a record is still attached to %s: %w",
				img, strings.Join(devs, ", "), sentinel.ErrInUse)
		}
		log.Warn("removing leftover image of an interrupted operation", slog.String("image", img))
		return state.RemoveFile(img)
	}
	return nil
}

// makeImage creates img (O_EXCL: two creators never share one) as a
// sparse file of size bytes, durable with its directory entry. An image
// that appeared since clearDebris yields ErrExists. On any other error the
// caller removes img.
func (b *Backend) makeImage(img string, size int64) error {
	f, err := os.OpenFile(img, os.O_WRONLY|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("image %s appeared concurrently: %w", img, sentinel.ErrExists)
	}
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		if errors.Is(err, unix.EFBIG) || errors.Is(err, unix.EINVAL) {
			err = fmt.Errorf("size %d not supported by the file system of %s: %w: %w", size, b.dir, err, sentinel.ErrInvalid)
		}
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("fsync %s: %w", img, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", img, err)
	}
	// The image must be durable before the record that commits it.
	return state.SyncDir(b.dir)
}

// commit writes the record that makes name's image a volume. On failure
// both files are removed, the record first (the rename may have happened
// before a failed directory fsync).
func (b *Backend) commit(log *slog.Logger, name string, r record) error {
	err := b.writeRecord(name, r)
	if err == nil {
		return nil
	}
	for _, p := range []string{b.jsonPath(name), b.imgPath(name)} {
		if rerr := state.RemoveFile(p); rerr != nil {
			log.Error("cannot remove file of failed create", slog.String("file", p), slog.Any("error", rerr))
		}
	}
	return err
}

// Get implements backends.Backend.
func (b *Backend) Get(ctx context.Context, name string) (backends.Volume, error) {
	const op = "get"
	if err := checkName(name); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	if err := ctx.Err(); err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	r, err := b.load(name)
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	devs, err := b.devicesOf(b.imgPath(name))
	if err != nil {
		return backends.Volume{}, opErr(op, name, err)
	}
	return b.volume(name, r, devs), nil
}

// List implements backends.Backend. It reads the data directory and sysfs
// once each, then each volume's record; it runs no program. Volumes come
// sorted by name. A volume whose record cannot be read or parsed is listed
// as Get describes it: with its image's size and the damage in Status.
func (b *Backend) List(ctx context.Context) ([]backends.Volume, error) {
	const op = "list"
	d, err := os.Open(b.dir)
	if err != nil {
		return nil, fmt.Errorf("loop: %s: %w", op, err)
	}
	defer d.Close()
	names, err := b.listNames(d)
	if err != nil {
		return nil, fmt.Errorf("loop: %s: %w", op, err)
	}
	// Records are opened relative to the directory: no path walk each.
	dirfd := int(d.Fd())
	devs, err := b.scanLoops()
	if err != nil {
		return nil, fmt.Errorf("loop: %s: %w", op, err)
	}
	// Reading the records is all system calls; spread it over the CPUs.
	found := make([]bool, len(names))
	vols := make([]backends.Volume, len(names))
	workers := min(runtime.GOMAXPROCS(0), 8, len(names)/64+1)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= len(names) {
					return
				}
				r, err := b.readRecordAt(dirfd, names[i])
				img := b.imgPath(names[i])
				if err != nil {
					if r, err = b.damaged(names[i], err); err != nil {
						b.log.Error("skipping volume whose files cannot be read", slog.String("volume", names[i]), slog.String("op", op), slog.Any("error", err))
						continue
					}
				}
				vols[i], found[i] = b.volume(names[i], r, devs[img]), true
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("loop: %s: %w", op, err)
	}
	out := vols[:0]
	for i := range vols {
		if found[i] {
			out = append(out, vols[i])
		}
	}
	clear(vols[len(out):])
	return out, nil
}

// listNames reads the data directory once and returns, sorted, the names
// of the volumes that have both a record and an image. Records without an
// image are logged and left out.
func (b *Backend) listNames(d *os.File) ([]string, error) {
	entries, err := d.ReadDir(-1) // unsorted: cheaper, and file order is not name order anyway
	if err != nil {
		return nil, err
	}
	images := make(map[string]bool, len(entries)/2)
	var records []string
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasSuffix(n, imgSuffix) && e.Type().IsRegular():
			images[strings.TrimSuffix(n, imgSuffix)] = true
		case strings.HasSuffix(n, jsonSuffix) && (e.Type().IsRegular() || e.Type()&fs.ModeSymlink != 0):
			records = append(records, strings.TrimSuffix(n, jsonSuffix))
		}
	}
	names := records[:0]
	for _, name := range records {
		if checkName(name) != nil {
			continue
		}
		if !images[name] {
			b.log.Warn("hiding volume whose image is missing", slog.String("volume", name), slog.String("op", "list"))
			continue
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}

// SetMeta implements backends.Backend: the record is rewritten atomically
// with the new Meta, keeping size and creation time.
func (b *Backend) SetMeta(ctx context.Context, name string, meta map[string]string) error {
	const op = "setmeta"
	unlock, log, err := b.lock(ctx, op, name)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := b.load(name)
	if err != nil {
		return opErr(op, name, err)
	}
	r.Meta = maps.Clone(meta)
	if err := b.writeRecord(name, r); err != nil {
		return opErr(op, name, err)
	}
	log.Debug("metadata replaced")
	return nil
}

// Remove implements backends.Backend. A volume with a loop device yields
// ErrInUse naming the device. Devices already being torn down (autoclear
// set, as Detach of a device still open does) are given a short grace to
// disappear first. The record is deleted before the image.
func (b *Backend) Remove(ctx context.Context, name string) error {
	const op = "remove"
	unlock, log, err := b.lock(ctx, op, name)
	if err != nil {
		return err
	}
	defer unlock()
	b.detached.forget(name)
	// Existence only: a record too damaged to parse, or a symlink in its
	// place, can still be removed (the link, never what it points to).
	img := b.imgPath(name)
	recOK, err := recordPresent(b.jsonPath(name))
	if err != nil {
		return opErr(op, name, err)
	}
	imgOK, err := isRegular(img)
	if err != nil {
		return opErr(op, name, err)
	}
	if !recOK || !imgOK {
		return opErr(op, name, sentinel.ErrNotFound)
	}
	devs, err := b.waitDetached(ctx, img)
	if err != nil {
		return opErr(op, name, err)
	}
	if len(devs) > 0 {
		return opErrf(op, name, "attached to %s: %w", strings.Join(devs, ", "), sentinel.ErrInUse)
	}
	// The record first: from here on the volume does not exist, and a
	// crash leaves at worst an invisible image that Create and New clear.
	if err := state.RemoveFile(b.jsonPath(name)); err != nil {
		return opErr(op, name, err)
	}
	if err := state.RemoveFile(img); err != nil {
		return opErr(op, name, err)
	}
	log.Info("volume removed")
	return nil
}

// Attach implements backends.Backend. A live loop device already backed
// by the image is returned as is; otherwise a free one is bound to it
// (loopDevices.attach: what `losetup --find --show` does).
//
// A device whose detach is still pending (autoclear set, kept alive by a
// process that has it open, such as udev's probe) is never returned: it
// vanishes under its user when that process closes it. Attach waits for
// such devices to go, briefly, and then attaches a fresh device beside
// them (losetup's --nooverlap would hand back the dying one).
func (b *Backend) Attach(ctx context.Context, name string, _ backends.AttachOptions) (string, error) {
	const op = "attach"
	unlock, log, err := b.lock(ctx, op, name)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := b.load(name); err != nil {
		return "", opErr(op, name, err)
	}
	img := b.imgPath(name)
	devs, err := b.waitDetached(ctx, img)
	if err != nil {
		return "", opErr(op, name, err)
	}
	var dying []string
	for _, dev := range devs {
		if b.autoclear(dev) {
			dying = append(dying, dev)
			continue
		}
		// Not marked for removal, and still ours after that read: a device
		// freed between the scan and now is not handed out.
		if still, err := b.backedBy(dev, img, false); err != nil || !still {
			continue
		}
		log.Debug("already attached", slog.String("device", dev))
		return dev, nil
	}
	if len(dying) > 0 {
		log.Warn("a loop device of this image is still being detached; attaching a fresh one", slog.Any("detaching", dying))
	}
	dev, err := b.loops.attach(ctx, img, len(dying) > 0)
	if err != nil {
		return "", opErr(op, name, err)
	}
	log.Info("volume attached", slog.String("device", dev), slog.String("image", img))
	return dev, nil
}

// Detach implements backends.Backend: every loop device backed by the
// image, or by a deleted image of that path, is detached (loopDevices.detach:
// what `losetup --detach` does). None is success. The kernel may finish the detach later, once the device's last user closes it.
func (b *Backend) Detach(ctx context.Context, name string) error {
	const op = "detach"
	unlock, log, err := b.lock(ctx, op, name)
	if err != nil {
		return err
	}
	defer unlock()
	img := b.imgPath(name)
	// Devices of a deleted image too: an image removed by hand while
	// mounted is still attached, and Unmount must let go of it.
	devs, err := b.devicesOfAny(img)
	if err != nil {
		return opErr(op, name, err)
	}
	var errs []error
	for _, dev := range devs {
		if err := b.loops.detach(ctx, dev); err != nil {
			// Gone (or reused) meanwhile? Then it is not ours to detach.
			if still, serr := b.backedBy(dev, img, true); serr == nil && !still {
				log.Debug("device went away during detach", slog.String("device", dev))
				continue
			}
			errs = append(errs, err)
			continue
		}
		log.Info("volume detached", slog.String("device", dev))
	}
	if err := errors.Join(errs...); err != nil {
		b.detached.forget(name)
		return opErr(op, name, err)
	}
	b.noteDetached(log, name, img)
	return nil
}

// load returns the record of an existing volume: one with both a record
// and an image. Otherwise it wraps ErrNotFound. A record that cannot be
// read or parsed (or is a symlink) does not make the volume unusable: see
// damaged.
func (b *Backend) load(name string) (record, error) {
	r, err := b.readRecord(name)
	if errors.Is(err, fs.ErrNotExist) {
		return record{}, sentinel.ErrNotFound
	}
	ok, ierr := isRegular(b.imgPath(name))
	if ierr != nil {
		return record{}, ierr
	}
	if !ok {
		b.log.Warn("hiding volume whose image is missing", slog.String("volume", name))
		return record{}, fmt.Errorf("image %s missing: %w", b.imgPath(name), sentinel.ErrNotFound)
	}
	if err != nil {
		return b.damaged(name, err)
	}
	return r, nil
}

// damaged stands in for the record of name that could not be read (why):
// the size and creation time are the image's, the options are lost (the
// plugin's defaults apply), and the volume's Status says so. Get, Mount,
// Remove and SetMeta (which writes a sound record again) all work on it.
func (b *Backend) damaged(name string, why error) (record, error) {
	fi, err := os.Lstat(b.imgPath(name))
	if err != nil {
		return record{}, err
	}
	b.log.Warn("volume record is damaged; using the image's size", slog.String("volume", name), slog.Any("error", why))
	return record{
		SizeBytes: fi.Size(),
		CreatedAt: fi.ModTime().UTC(),
		damage:    fmt.Sprintf("record %s is damaged (%v): size and creation time are the image's, options are lost", b.jsonPath(name), why),
	}, nil
}

func (b *Backend) readRecord(name string) (record, error) {
	return b.readRecordAt(atFDCWD, name)
}

// readRecordAt reads name's record, relative to directory dirfd, or to the
// absolute data directory when dirfd is atFDCWD.
func (b *Backend) readRecordAt(dirfd int, name string) (record, error) {
	path := name + jsonSuffix
	if dirfd == atFDCWD {
		path = b.jsonPath(name)
	}
	data, err := readSmallFile(dirfd, path)
	if err != nil {
		return record{}, err
	}
	var r record
	if err := json.Unmarshal(data, &r); err != nil {
		return record{}, fmt.Errorf("parse %s: %w", b.jsonPath(name), err)
	}
	if r.SizeBytes <= 0 {
		return record{}, fmt.Errorf("parse %s: bad size_bytes %d", b.jsonPath(name), r.SizeBytes)
	}
	return r, nil
}

func (b *Backend) writeRecord(name string, r record) error {
	return writeJSON(b.jsonPath(name), r)
}

// writeJSON writes v as a one-line JSON record at path, atomically.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return state.WriteFileAtomic(path, append(data, '\n'), 0o600)
}

func (b *Backend) volume(name string, r record, devs []string) backends.Volume {
	status := map[string]any{
		"backend": BackendName,
		"image":   b.imgPath(name),
		"copies":  b.copies, // how its snapshots and clones are copied
	}
	if len(devs) > 0 {
		status["device"] = devs[0]
	}
	if r.damage != "" {
		status["damage"] = r.damage
	}
	return backends.Volume{
		Name:      name,
		SizeBytes: r.SizeBytes,
		CreatedAt: r.CreatedAt,
		Meta:      maps.Clone(r.Meta),
		Status:    status,
	}
}

// waitDetached returns the loop devices backed by img, first waiting up to
// removeGrace while every one of them is already being torn down.
func (b *Backend) waitDetached(ctx context.Context, img string) ([]string, error) {
	devs, err := b.devicesOf(img)
	if err != nil || len(devs) == 0 || !b.allAutoclear(devs) {
		return devs, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.removeGrace)
	defer cancel()
	tick := time.NewTicker(b.pollEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return devs, nil
		case <-tick.C:
		}
		if devs, err = b.devicesOf(img); err != nil || len(devs) == 0 || !b.allAutoclear(devs) {
			return devs, err
		}
	}
}

func (b *Backend) allAutoclear(devs []string) bool {
	for _, dev := range devs {
		if !b.autoclear(dev) {
			return false
		}
	}
	return true
}

// autoclear reports whether dev is marked to be freed by the kernel once
// its last user closes it: a detach that is still pending, or one that
// finished since dev was listed (no longer bound: no loop directory).
func (b *Backend) autoclear(dev string) bool {
	data, err := os.ReadFile(filepath.Join(b.sys, "block", filepath.Base(dev), "loop", "autoclear"))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
		return true
	}
	return err == nil && strings.TrimSpace(string(data)) == "1"
}

// readNames reads directory dir: its entries, and the set of their names.
func readNames(dir string) ([]os.DirEntry, map[string]bool, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	have := make(map[string]bool, len(entries))
	for _, e := range entries {
		have[e.Name()] = true
	}
	return entries, have, nil
}

// sweep removes, at start-up, debris of operations interrupted by a crash:
// images without a record that no loop device uses, and temporary files
// left by state.WriteFileAtomic. Failures are logged, never fatal.
func (b *Backend) sweep() {
	log := b.log.With(slog.String("op", "sweep"))
	entries, have, err := readNames(b.dir)
	if err != nil {
		log.Warn("cannot read data directory", slog.Any("error", err))
		return
	}
	var loops map[string][]string
	for _, e := range entries {
		n := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		switch {
		case strings.HasPrefix(n, reflinkProbePrefix):
			log.Warn("removing a scratch file of an interrupted start", slog.String("file", n))
			if err := os.Remove(filepath.Join(b.dir, n)); err != nil {
				log.Warn("cannot remove scratch file", slog.String("file", n), slog.Any("error", err))
			}
		case isTempName(n):
			log.Warn("removing temporary file of an interrupted write", slog.String("file", n))
			if err := os.Remove(filepath.Join(b.dir, n)); err != nil {
				log.Warn("cannot remove temporary file", slog.String("file", n), slog.Any("error", err))
			}
		case strings.HasSuffix(n, imgSuffix):
			name := strings.TrimSuffix(n, imgSuffix)
			if checkName(name) != nil || have[name+jsonSuffix] {
				continue
			}
			if loops == nil {
				if loops, err = b.scanLoops(); err != nil {
					log.Warn("cannot read loop devices; leaving leftover images", slog.Any("error", err))
					return
				}
			}
			img := filepath.Join(b.dir, n)
			if devs := loops[img]; len(devs) > 0 && !b.detachDebris(log, name, img, devs) {
				continue
			}
			log.Warn("removing leftover image of an interrupted operation", slog.String("volume", name), slog.String("image", img))
			if err := os.Remove(img); err != nil {
				log.Warn("cannot remove leftover image", slog.String("image", img), slog.Any("error", err))
			}
		}
	}
	if err := state.SyncDir(b.dir); err != nil {
		log.Warn("cannot fsync data directory", slog.Any("error", err))
	}
	b.sweepSnapshots(log)
}

// detachDebris detaches the loop devices of img, an image without record
// (a losetup that finished after its plugin was killed, say: no volume
// was ever handed out on them), and reports whether none is left.
func (b *Backend) detachDebris(log *slog.Logger, name, img string, devs []string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, dev := range devs {
		log.Warn("detaching a loop device of a leftover image without record", slog.String("volume", name), slog.String("device", dev))
		if err := b.loops.detach(ctx, dev); err != nil {
			log.Warn("cannot detach loop device", slog.String("device", dev), slog.Any("error", err))
		}
	}
	left, err := b.devicesOf(img)
	if err != nil || len(left) > 0 {
		log.Warn("leftover image without record is still attached; leaving it", slog.String("volume", name), slog.String("image", img), slog.Any("devices", left))
		return false
	}
	return true
}

// AttachedHere implements backends.HostAttachments: the volumes whose
// image, current or deleted, backs a loop device on this host.
func (b *Backend) AttachedHere(ctx context.Context) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	names, err := b.attachedNames()
	if err != nil {
		return nil, fmt.Errorf("loop: %w", err)
	}
	return names, nil
}

// isTempName reports whether n is a temporary file of state.WriteFileAtomic
// for a record: "." + <name>.json + ".tmp-" + digits. Volume files always
// end in .json or .img, so they never match.
func isTempName(n string) bool {
	if !strings.HasPrefix(n, ".") || strings.HasSuffix(n, jsonSuffix) || strings.HasSuffix(n, imgSuffix) {
		return false
	}
	i := strings.LastIndex(n, jsonSuffix+".tmp-")
	if i < 0 {
		return false
	}
	digits := n[i+len(jsonSuffix+".tmp-"):]
	if digits == "" {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// b.dir is absolute and clean, and checkName keeps names to one path
// element, so plain concatenation is filepath.Join.
func (b *Backend) imgPath(name string) string {
	return b.dir + string(filepath.Separator) + name + imgSuffix
}
func (b *Backend) jsonPath(name string) string {
	return b.dir + string(filepath.Separator) + name + jsonSuffix
}

// checkName: see backends.CheckName.
func checkName(name string) error { return backends.CheckName(name, maxNameLen) }

// recordPresent reports whether a record exists at path: a regular file, or
// a symlink in its place (a damaged record, never followed).
func recordPresent(path string) (bool, error) {
	return present(path, func(m fs.FileMode) bool { return m.IsRegular() || m&fs.ModeSymlink != 0 })
}

// isRegular reports whether a regular file exists at path (never following
// a symlink: one there is an error).
func isRegular(path string) (bool, error) {
	return present(path, fs.FileMode.IsRegular)
}

// present reports whether path exists; it is an error when what is there
// does not pass ok.
func present(path string, ok func(fs.FileMode) bool) (bool, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !ok(fi.Mode()) {
		return false, fmt.Errorf("%s is not a regular file", path)
	}
	return true, nil
}

// opErr and opErrf name the backend, the operation and the volume in an
// error: loop: create volume "x": ....
var opErr, opErrf = backends.OpErrors("loop")

// lock checks name and takes its per-name lock for op: the start of every
// call that reads a volume's state to change it. log carries the volume and
// the operation.
func (b *Backend) lock(ctx context.Context, op, name string) (unlock func(), log *slog.Logger, err error) {
	if err := checkName(name); err != nil {
		return nil, nil, opErr(op, name, err)
	}
	unlock, err = b.locks.Lock(ctx, name)
	if err != nil {
		return nil, nil, opErr(op, name, err)
	}
	return unlock, b.log.With(slog.String("volume", name), slog.String("op", op)), nil
}

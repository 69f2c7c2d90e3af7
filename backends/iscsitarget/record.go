package iscsitarget

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

// helperScript is run on the target host for every file operation; see
// helper.sh.
//
//go:embed helper.sh
var helperScript string

// helperName is the helper's $0: what ps(1) on the target host shows.
const helperName = "blockvol-iscsitarget"

// Exit statuses of the helper.
const (
	helperNotFound  = 3
	helperExists    = 4
	helperSizeError = 5
	helperNoReadd   = 6
	helperNoParams  = 7
)

// helperArgv is the argv that runs the helper's operation op.
func helperArgv(op string, args ...string) []string {
	return append([]string{"sh", "-c", helperScript, helperName, op}, args...)
}

// helper runs the helper's operation op on the target host.
func (b *Backend) helper(ctx context.Context, op string, args ...string) ([]byte, error) {
	argv := helperArgv(op, args...)
	return b.host.Run(ctx, argv[0], argv[1:]...)
}

// record is a volume's metadata, <pool>/<name>.json beside its backing
// file <pool>/<name>.img on the target host. It is the commit point of the
// volume: a volume exists when its record and backing file both exist.
type record struct {
	Name      string            `json:"name"`
	SizeBytes int64             `json:"size_bytes"`
	CreatedAt time.Time         `json:"created_at"`
	Type      string            `json:"type"` // the pool
	IQN       string            `json:"iqn"`
	Meta      map[string]string `json:"meta,omitempty"`
	// Attached names the host that has the volume attached, nil when
	// none has. It is written before that host is allowed on the target,
	// and cleared after it is removed again.
	Attached *attachment `json:"attached,omitempty"`
}

// attachment is who has a volume attached.
type attachment struct {
	Host      string    `json:"host"`
	Initiator string    `json:"initiator"`
	Since     time.Time `json:"since"`
}

func (a *attachment) String() string {
	return fmt.Sprintf("%s (initiator %s)", a.Host, a.Initiator)
}

// found is what a scan found of one volume name.
type found struct {
	name string
	// rec is the parsed record and recDir the pool directory holding it;
	// recErr says why a record file could not be used.
	rec    *record
	recDir string
	recErr error
	// images are the pool directories holding <name>.img.
	images []string
}

// volume reports whether f is a complete volume: a readable record with
// its backing file beside it.
func (f *found) volume() bool {
	return f.rec != nil && slices.Contains(f.images, f.recDir)
}

// helperItem is one entry of the helper's scan and snapscan output.
type helperItem struct {
	kind, dir, name string
	content         []byte
}

// helperItems runs the helper's op and splits its NUL-separated output
// into items of four fields (see helper.sh's emit).
func (b *Backend) helperItems(ctx context.Context, op string, args ...string) ([]helperItem, error) {
	out, err := b.helper(ctx, op, args...)
	if err != nil {
		return nil, err
	}
	fields := bytes.Split(out, []byte{0})
	if len(fields)%4 != 1 || len(fields[len(fields)-1]) != 0 {
		return nil, fmt.Errorf("malformed helper output (%d bytes)", len(out))
	}
	items := make([]helperItem, 0, len(fields)/4)
	for i := 0; i+4 <= len(fields); i += 4 {
		items = append(items, helperItem{string(fields[i]), string(fields[i+1]), string(fields[i+2]), fields[i+3]})
	}
	return items, nil
}

// scan reads the records and backing files of volume name ("" = every
// volume) in every pool directory with one helper run. A pool directory
// that does not exist is an error: it may be a file system that failed to
// mount on the target host, and its volumes must not be reported missing.
func (b *Backend) scan(ctx context.Context, name string) (map[string]*found, error) {
	args := append([]string{name}, b.poolDirs()...)
	items, err := b.helperItems(ctx, "scan", args...)
	if err != nil {
		return nil, fmt.Errorf("read volume records on the target host: %w", err)
	}
	all := map[string]*found{}
	var missing []string
	for _, it := range items {
		kind, dir, n, content := it.kind, it.dir, it.name, it.content
		if kind == "missing" {
			missing = append(missing, dir)
			continue
		}
		if checkName(n) != nil || (name != "" && n != name) {
			continue // not a volume file of ours
		}
		f := byName(all, n, func() *found { return &found{name: n} })
		switch kind {
		case "image":
			f.images = append(f.images, dir)
		case "record":
			var r record
			switch err := json.Unmarshal(content, &r); {
			case err != nil:
				f.recErr = fmt.Errorf("parse %s/%s.json: %w", dir, n, err)
			case r.Name != n || r.SizeBytes <= 0 || r.IQN == "":
				f.recErr = fmt.Errorf("%s/%s.json is not a record of volume %q", dir, n, n)
			case f.rec != nil:
				f.recErr = fmt.Errorf("volume %q has records in both %s and %s", n, f.recDir, dir)
			default:
				f.rec, f.recDir = &r, dir
			}
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("pool directory %s does not exist on the target host (a file system not mounted there?)", missing[0])
	}
	return all, nil
}

// load returns the record of an existing volume, or an error wrapping
// sentinel.ErrNotFound.
func (b *Backend) load(ctx context.Context, name string) (*found, error) {
	all, err := b.scan(ctx, name)
	if err != nil {
		return nil, err
	}
	f := all[name]
	switch {
	case f == nil:
		return nil, sentinel.ErrNotFound
	case f.recErr != nil:
		return nil, f.recErr
	case f.rec == nil:
		return nil, sentinel.ErrNotFound // a leftover backing file only
	case !f.volume():
		b.log.Warn("hiding volume whose backing file is missing", "volume", name, "record", b.recordPath(f.recDir, name))
		return nil, fmt.Errorf("backing file %s missing: %w", b.imagePath(f.recDir, name), sentinel.ErrNotFound)
	}
	return f, nil
}

// writeRecord replaces the record of r.Name in dir atomically.
func (b *Backend) writeRecord(ctx context.Context, dir string, r *record) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := b.helper(ctx, "write", b.recordPath(dir, r.Name), string(data)); err != nil {
		return fmt.Errorf("write record of volume %q on the target host: %w", r.Name, err)
	}
	return nil
}

// createImage makes the sparse backing file.
func (b *Backend) createImage(ctx context.Context, path string, size int64) error {
	return b.sizeFile(ctx, "create backing file "+path, "", "backing file "+path, path, size, "create", path)
}

// sizeFile runs the helper command cmd with args, size appended, that writes file,
// size bytes long, on the target host. Its exit statuses become errors
// naming the files as given: helperNotFound (missing, the file that must
// exist; "" when the command has none) wraps ErrNotFound, helperExists
// (exists, the file that appeared meanwhile; "" when none) ErrExists,
// helperSizeError (the file system refused the size) ErrInvalid; any other
// failure is wrapped after doing.
func (b *Backend) sizeFile(ctx context.Context, doing, missing, exists, file string, size int64, cmd string, args ...string) error {
	_, err := b.helper(ctx, cmd, append(args, strconv.FormatInt(size, 10))...)
	if err == nil {
		return nil
	}
	switch code := hostexec.ExitCode(err); {
	case code == helperNotFound && missing != "":
		return fmt.Errorf("%s is missing on the target host: %w", missing, sentinel.ErrNotFound)
	case code == helperExists && exists != "":
		return fmt.Errorf("%s appeared concurrently: %w", exists, sentinel.ErrExists)
	case code == helperSizeError:
		return fmt.Errorf("the target host's file system refused size %d for %s: %w: %w", size, file, err, sentinel.ErrInvalid)
	}
	return fmt.Errorf("%s on the target host: %w", doing, err)
}

// byName returns all[n], first adding the one mk makes when there is none.
func byName[T any](all map[string]*T, n string, mk func() *T) *T {
	v := all[n]
	if v == nil {
		v = mk()
		all[n] = v
	}
	return v
}

// removeFiles deletes files on the target host, in order, durably.
func (b *Backend) removeFiles(ctx context.Context, paths ...string) error {
	if _, err := b.helper(ctx, "remove", paths...); err != nil {
		return fmt.Errorf("remove %v on the target host: %w", paths, err)
	}
	return nil
}

// poolDirs lists the pool directories, the default pool first.
func (b *Backend) poolDirs() []string {
	dirs := []string{b.pools[b.defaultPool]}
	for _, t := range b.poolTypes {
		if t != b.defaultPool {
			dirs = append(dirs, b.pools[t])
		}
	}
	return dirs
}

// pool dir paths are absolute and clean, and checkName keeps names to one
// path element.
func (b *Backend) imagePath(dir, name string) string  { return dir + "/" + name + ".img" }
func (b *Backend) recordPath(dir, name string) string { return dir + "/" + name + ".json" }

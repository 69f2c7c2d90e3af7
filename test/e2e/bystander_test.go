package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The bystander is a user's blockvol that runs on the host during the whole
// package, outside the tests' mount namespace: its own plugin name, state,
// data and mount directories, and a socket in the real /run/docker/plugins.
// It holds two volumes with data, one mounted ID-less (as dvdcli mounts)
// and one not mounted. When the package ends, both must be exactly as they
// were and the plugin must have received no request (it logs each one at
// debug level): the tests touch only what they created.
type bystander struct {
	dir     string
	plugin  *Plugin
	madeDir bool // we created /run/docker/plugins

	mountpoint string              // of the ID-less mounted volume
	images     map[string]fileSeal // files of the loop backend: images, records
	records    map[string][]byte   // the plugin's state record of each volume
	data       []byte              // the mounted volume's file
	logSize    int64               // the plugin's log after the setup
}

const (
	bystanderMounted   = "bvh-bystander-mounted"
	bystanderUnmounted = "bvh-bystander-unmounted"
)

// fileSeal identifies a file and its content.
type fileSeal struct {
	ino  uint64
	size int64
	sum  [sha256.Size]byte
}

func sealFile(path string) (fileSeal, error) {
	f, err := os.Open(path)
	if err != nil {
		return fileSeal{}, err
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return fileSeal{}, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fileSeal{}, err
	}
	s := fileSeal{ino: st.Ino, size: st.Size}
	copy(s.sum[:], h.Sum(nil))
	return s, nil
}

// startBystander builds blockvol, starts the bystander, creates its two
// volumes with data and seals what must not change.
func startBystander() (_ *bystander, err error) {
	dir, err := os.MkdirTemp(runParent, "bvh-bystander-")
	if err != nil {
		return nil, err
	}
	b := &bystander{dir: dir}
	defer func() {
		if err != nil {
			if serr := b.stop(); serr != nil {
				err = fmt.Errorf("%w; and while cleaning up: %v", err, serr)
			}
		}
	}()
	bin := os.Getenv("BLOCKVOL_BIN")
	if bin == "" {
		bin = filepath.Join(dir, "blockvol")
		if err := buildBlockvol(bin); err != nil {
			return nil, err
		}
	}
	name := filepath.Base(dir)
	cfg := PluginConfig{
		Name: name, Socket: filepath.Join(pluginSocketDir, name+".sock"),
		StateDir: filepath.Join(dir, "state"), MountDir: filepath.Join(dir, "mounts"), DataDir: filepath.Join(dir, "loop"),
		LogLevel: "debug", DefaultSize: "32M", DefaultFS: "ext4",
	}
	b.plugin = &Plugin{Config: cfg, ConfigPath: filepath.Join(dir, "blockvol.toml"), LogPath: filepath.Join(dir, "blockvol.log"), SocketPath: cfg.Socket}
	if err := os.WriteFile(b.plugin.ConfigPath, []byte(cfg.toml()), 0o644); err != nil {
		return nil, err
	}
	if _, err := os.Stat(pluginSocketDir); err != nil {
		b.madeDir = true // the plugin makes it
	}
	if err := b.plugin.start(bin); err != nil {
		return nil, err
	}
	if err := b.fill(); err != nil {
		return nil, err
	}
	if err := b.seal(); err != nil {
		return nil, err
	}
	return b, nil
}

// fill creates the two volumes, each with a file of random data; one stays
// mounted without an ID.
func (b *bystander) fill() error {
	// noatime: reading the data at the end must not write to the image.
	if _, err := b.call("VolumeDriver.Create", map[string]any{"Name": bystanderMounted, "Opts": map[string]string{"mountopts": "noatime"}}); err != nil {
		return err
	}
	if _, err := b.call("VolumeDriver.Create", map[string]any{"Name": bystanderUnmounted}); err != nil {
		return err
	}
	out, err := b.call("VolumeDriver.Mount", map[string]any{"Name": bystanderMounted})
	if err != nil {
		return err
	}
	b.mountpoint, _ = out["Mountpoint"].(string)
	if b.data, err = writeRandom(filepath.Join(b.mountpoint, "data")); err != nil {
		return err
	}
	const id = "bvh0000000000000000000000000000000000000000000000000000000000001"
	out, err = b.call("VolumeDriver.Mount", map[string]any{"Name": bystanderUnmounted, "ID": id})
	if err != nil {
		return err
	}
	mp, _ := out["Mountpoint"].(string)
	if _, err := writeRandom(filepath.Join(mp, "data")); err != nil {
		return err
	}
	_, err = b.call("VolumeDriver.Unmount", map[string]any{"Name": bystanderUnmounted, "ID": id})
	return err
}

// writeRandom writes 1 MiB of random data to path and returns it.
func writeRandom(path string) ([]byte, error) {
	buf := make([]byte, 1<<20)
	rand.Read(buf)
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if _, err := f.Write(buf); err != nil {
		f.Close()
		return nil, err
	}
	return buf, errors.Join(f.Sync(), f.Close())
}

// settle waits until ext4 has zeroed every inode table of the mounted
// volume (its lazy init writes to the image for a few seconds after the
// first mount), then flushes the filesystem: from then on the image
// changes only if something touches the volume.
func (b *bystander) settle() error {
	m, err := mountsUnder(b.mountpoint)
	if err != nil || len(m) != 1 {
		return fmt.Errorf("bystander: mounts at %s: %v %v", b.mountpoint, m, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = poll(ctx, 200*time.Millisecond, nil, func(ctx context.Context) (bool, error) {
		out, err := runCmd(ctx, "dumpe2fs", m[0].Source)
		if err != nil {
			return false, err
		}
		groups, zeroed := 0, 0
		for _, l := range strings.Split(out, "\n") {
			if rest, ok := strings.CutPrefix(l, "Group "); ok && rest != "" && rest[0] >= '0' && rest[0] <= '9' {
				groups++
				if strings.Contains(l, "ITABLE_ZEROED") {
					zeroed++
				}
			}
		}
		return groups > 0 && zeroed == groups, fmt.Errorf("%d of %d inode tables zeroed", zeroed, groups)
	})
	if err != nil {
		return fmt.Errorf("bystander: ext4's lazy init did not end: %w", err)
	}
	f, err := os.Open(b.mountpoint)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// seal records the files of the loop backend (images and records), the
// plugin's state records and the log size, once the images are still.
func (b *bystander) seal() error {
	if err := b.settle(); err != nil {
		return err
	}
	var err error
	if b.images, err = b.sealImages(); err != nil {
		return err
	}
	if b.records, err = b.readRecords(); err != nil {
		return err
	}
	b.logSize = b.plugin.logSize()
	return nil
}

func (b *bystander) sealImages() (map[string]fileSeal, error) {
	files, err := regularFiles(b.plugin.Config.DataDir)
	if err != nil {
		return nil, err
	}
	out := map[string]fileSeal{}
	for _, f := range files {
		if out[f], err = sealFile(f); err != nil {
			return nil, err
		}
	}
	imgs, _ := filepath.Glob(filepath.Join(b.plugin.Config.DataDir, "*.img"))
	if len(imgs) != 2 {
		return nil, fmt.Errorf("bystander: %d image files under %s, want 2: %v", len(imgs), b.plugin.Config.DataDir, files)
	}
	return out, nil
}

func (b *bystander) readRecords() (map[string][]byte, error) {
	files, err := regularFiles(b.plugin.Config.StateDir)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for _, f := range files {
		if strings.HasSuffix(f, ".json") {
			if out[f], err = os.ReadFile(f); err != nil {
				return nil, err
			}
		}
	}
	return out, nil
}

// check reports every way in which the bystander was touched: a call on its
// socket, a request in its log, a changed record or image, lost data, a
// lost mount.
func (b *bystander) check() error {
	var errs []error
	// The plugin logs every request it receives at debug level.
	if log := b.plugin.logSince(b.logSize); strings.Contains(log, "msg=request") || strings.Contains(log, "op=") {
		errs = append(errs, fmt.Errorf("it received requests:\n%s", log))
	}
	if b.plugin.current().exited() {
		errs = append(errs, errors.New("the plugin died"))
	}
	if _, err := os.Stat(b.plugin.SocketPath); err != nil {
		errs = append(errs, fmt.Errorf("its socket is gone: %v", err))
	}
	images, err := b.sealImages()
	if err != nil {
		errs = append(errs, err)
	}
	for path, was := range b.images {
		now, ok := images[path]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("image %s is gone", path))
		case now.ino != was.ino || now.size != was.size:
			errs = append(errs, fmt.Errorf("%s was replaced or resized", path))
		case now.sum != was.sum:
			errs = append(errs, fmt.Errorf("%s changed", path))
		}
	}
	records, err := b.readRecords()
	if err != nil {
		errs = append(errs, err)
	}
	for path, was := range b.records {
		if !bytes.Equal(records[path], was) {
			errs = append(errs, fmt.Errorf("state record %s changed:\n%s\nnow:\n%s", path, was, records[path]))
		}
	}
	if got, err := os.ReadFile(filepath.Join(b.mountpoint, "data")); err != nil || !bytes.Equal(got, b.data) {
		errs = append(errs, fmt.Errorf("the data of the mounted volume changed or is unreadable (%v)", err))
	}
	if m, err := mountsUnder(b.mountpoint); err != nil || len(m) != 1 {
		errs = append(errs, fmt.Errorf("the mounted volume is no longer mounted once at %s: %v %v", b.mountpoint, m, err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("the bystander plugin %s was touched: %w", b.plugin.Config.Name, errors.Join(errs...))
	}
	return nil
}

// stop removes the bystander's volumes, stops it and cleans its directory.
func (b *bystander) stop() error {
	var errs []error
	defer func() {
		if b.madeDir {
			_ = os.Remove(pluginSocketDir) // only if empty
		}
	}()
	if b.plugin != nil && b.plugin.current() != nil && !b.plugin.current().exited() {
		if b.mountpoint != "" {
			if _, err := b.call("VolumeDriver.Unmount", map[string]any{"Name": bystanderMounted}); err != nil {
				errs = append(errs, err)
			}
		}
		for _, v := range []string{bystanderMounted, bystanderUnmounted} {
			if _, err := b.call("VolumeDriver.Remove", map[string]any{"Name": v}); err != nil && !strings.Contains(err.Error(), "does not exist") {
				errs = append(errs, err)
			}
		}
		if err := b.plugin.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := cleanHost(b.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// call calls the bystander on its socket.
func (b *bystander) call(endpoint string, req map[string]any) (map[string]any, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://plugin/"+endpoint, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := unixHTTPClient(b.plugin.SocketPath).Do(hreq)
	if err != nil {
		return nil, fmt.Errorf("bystander %s: %w", endpoint, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("bystander %s: answer %q is not JSON", endpoint, raw)
	}
	if e, _ := out["Err"].(string); e != "" {
		return nil, fmt.Errorf("bystander %s %s: %s", endpoint, body, e)
	}
	return out, nil
}

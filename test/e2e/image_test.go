package e2e

import (
	"archive/tar"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// imageTag is the tiny image every container runs: a static busybox with a
// symlink per applet (sh, ls, cat, df, stat, mount, dd, md5sum, ...).
const imageTag = "blockvol-e2e/busybox:latest"

// buildImage writes a rootfs tarball and `docker import`s it (no registry).
func buildImage(d *dockerd, root string) (string, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return "", err
	}
	if bb, err = filepath.EvalSymlinks(bb); err != nil {
		return "", err
	}
	if err := requireStatic(bb); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	list, err := runCmd(ctx, bb, "--list")
	if err != nil {
		return "", err
	}
	tarPath := filepath.Join(root, "busybox-rootfs.tar")
	if err := writeRootfs(tarPath, bb, strings.Fields(list)); err != nil {
		return "", err
	}
	if _, err := d.run(ctx, "import", tarPath, imageTag); err != nil {
		return "", err
	}
	return imageTag, os.Remove(tarPath)
}

// requireStatic fails for a dynamically linked binary, which the image
// could not run.
func requireStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked; install busybox-static", path)
		}
	}
	return nil
}

func writeRootfs(tarPath, busybox string, applets []string) (err error) {
	out, err := os.Create(tarPath)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := out.Close(); err == nil {
			err = cerr
		}
	}()
	tw := tar.NewWriter(out)
	now := time.Now()
	for _, dir := range []string{"bin", "data", "dev", "etc", "proc", "sys", "tmp"} {
		mode := int64(0o755)
		if dir == "tmp" {
			mode = 0o1777
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: now}); err != nil {
			return err
		}
	}
	bin, err := os.Open(busybox)
	if err != nil {
		return err
	}
	defer bin.Close()
	fi, err := bin.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: fi.Size(), ModTime: now}); err != nil {
		return err
	}
	if _, err := io.Copy(tw, bin); err != nil {
		return err
	}
	seen := map[string]bool{"busybox": true}
	for _, a := range applets {
		a = filepath.Base(a)
		if seen[a] {
			continue
		}
		seen[a] = true
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: now}); err != nil {
			return err
		}
	}
	for name, body := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
	} {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(body)), ModTime: now}); err != nil {
			return err
		}
		if _, err := io.WriteString(tw, body); err != nil {
			return err
		}
	}
	return tw.Close()
}

package vm

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// Initramfs is the file tree of a guest's initramfs, built in memory and
// written as an uncompressed newc cpio archive (the kernel unpacks it
// without a decompressor, which is slow under emulation).
//
// The tree is "usr-merged" like Debian 12: /bin, /sbin, /lib and /lib64 are
// links into /usr, and every path added under them is stored under /usr.
type Initramfs struct {
	entries map[string]*entry
}

type entry struct {
	mode uint32 // type and permission bits, as in cpio (S_IFDIR|0755...)
	src  string // host file to copy, or
	data []byte // literal content
	link string // symlink target
}

const (
	sIFDIR = 0o040000
	sIFREG = 0o100000
	sIFLNK = 0o120000
	sIFMT  = 0o170000
)

var mergedDirs = []string{"bin", "sbin", "lib", "lib64"}

// NewInitramfs returns a tree with the usual top-level directories.
func NewInitramfs() *Initramfs {
	im := &Initramfs{entries: map[string]*entry{}}
	for _, d := range mergedDirs {
		im.entries[d] = &entry{mode: sIFLNK | 0o777, link: "usr/" + d}
		im.Dir("usr/" + d)
	}
	for _, d := range []string{"dev", "proc", "sys", "run", "tmp", "etc", "mnt", "srv", "root", "var"} {
		im.Dir(d)
	}
	im.entries["var/run"] = &entry{mode: sIFLNK | 0o777, link: "../run"}
	im.entries["var/lock"] = &entry{mode: sIFLNK | 0o777, link: "../run/lock"}
	return im
}

// canon turns an absolute or relative path into the archive's name for it
// (no leading slash, merged directories under usr/).
func canon(p string) string {
	p = strings.TrimPrefix(path.Clean("/"+p), "/")
	for _, d := range mergedDirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return "usr/" + p
		}
	}
	return p
}

// Dir adds a directory (mode 0755) and its parents.
func (im *Initramfs) Dir(p string) {
	p = canon(p)
	for p != "." && p != "" {
		if _, ok := im.entries[p]; !ok {
			im.entries[p] = &entry{mode: sIFDIR | 0o755}
		}
		p = path.Dir(p)
	}
}

func (im *Initramfs) parents(p string) {
	if d := path.Dir(p); d != "." {
		im.Dir(d)
	}
}

// File adds a file with the given content and permissions.
func (im *Initramfs) File(p string, data []byte, perm os.FileMode) {
	p = canon(p)
	im.parents(p)
	im.entries[p] = &entry{mode: sIFREG | uint32(perm.Perm()), data: data}
}

// Copy adds the host file src (symlinks followed) at p, keeping its
// permission bits.
func (im *Initramfs) Copy(p, src string) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	p = canon(p)
	im.parents(p)
	im.entries[p] = &entry{mode: sIFREG | uint32(fi.Mode().Perm()), src: src}
	return nil
}

// Symlink adds a symbolic link p -> target.
func (im *Initramfs) Symlink(p, target string) {
	p = canon(p)
	im.parents(p)
	im.entries[p] = &entry{mode: sIFLNK | 0o777, link: target}
}

// Has reports whether p is in the tree.
func (im *Initramfs) Has(p string) bool {
	_, ok := im.entries[canon(p)]
	return ok
}

// Program copies the host program at src to the same path in the tree,
// with every shared library ldd lists for it and the program interpreter.
// Libraries already in the tree are not copied again.
func (im *Initramfs) Program(ctx context.Context, src string) error {
	if err := im.Copy(src, src); err != nil {
		return err
	}
	libs, err := sharedLibs(ctx, src)
	if err != nil {
		return err
	}
	for _, l := range libs {
		if im.Has(l) {
			continue
		}
		if err := im.Copy(l, l); err != nil {
			return fmt.Errorf("library of %s: %w", src, err)
		}
	}
	return nil
}

// sharedLibs parses `ldd prog`. A static program has none.
func sharedLibs(ctx context.Context, prog string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ldd", prog).CombinedOutput()
	if bytes.Contains(out, []byte("not a dynamic executable")) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w: %s", prog, err, bytes.TrimSpace(out))
	}
	var libs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x...)"
		f := strings.Fields(sc.Text())
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0])
		case len(f) >= 2 && f[1] == "=>" && (len(f) < 3 || f[2] == "not"):
			return nil, fmt.Errorf("ldd %s: library %s not found", prog, f[0])
		}
	}
	return libs, nil
}

// Modules copies the named kernel modules of k, and every module they
// depend on, to lib/modules/<release>/ together with a modules.dep for
// them (so that modprobe works in the guest) and modules.builtin. It
// returns the module names in an order that loads dependencies first.
func (im *Initramfs) Modules(k Kernel, names ...string) ([]string, error) {
	depFile := filepath.Join(k.ModuleDir(), "modules.dep")
	data, err := os.ReadFile(depFile)
	if err != nil {
		return nil, err
	}
	deps := map[string][]string{} // relative .ko path -> its dependencies
	byName := map[string]string{} // module name -> relative path
	for _, line := range strings.Split(string(data), "\n") {
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		byName[modName(mod)] = mod
	}
	builtin, _ := os.ReadFile(filepath.Join(k.ModuleDir(), "modules.builtin"))
	isBuiltin := map[string]bool{}
	for _, l := range strings.Fields(string(builtin)) {
		isBuiltin[modName(l)] = true
	}

	var order []string
	seen := map[string]bool{}
	var visit func(rel string)
	visit = func(rel string) {
		if seen[rel] {
			return
		}
		seen[rel] = true
		// modules.dep lists every (transitive) dependency, nearest first:
		// load them in reverse.
		d := deps[rel]
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, rel)
	}
	for _, n := range names {
		n = strings.ReplaceAll(n, "-", "_")
		rel, ok := byName[n]
		if !ok {
			if isBuiltin[n] {
				continue
			}
			return nil, fmt.Errorf("kernel %s has no module %s", k.Release, n)
		}
		visit(rel)
	}
	base := path.Join("lib/modules", k.Release)
	var dep strings.Builder
	var loadOrder []string
	for _, rel := range order {
		if err := im.Copy(path.Join(base, rel), filepath.Join(k.ModuleDir(), rel)); err != nil {
			return nil, err
		}
		fmt.Fprintf(&dep, "%s:", rel)
		for _, d := range deps[rel] {
			fmt.Fprintf(&dep, " %s", d)
		}
		dep.WriteString("\n")
		loadOrder = append(loadOrder, modName(rel))
	}
	im.File(path.Join(base, "modules.dep"), []byte(dep.String()), 0o644)
	im.File(path.Join(base, "modules.builtin"), builtin, 0o644)
	return loadOrder, nil
}

// modName turns "kernel/fs/xfs/xfs.ko" into "xfs".
func modName(rel string) string {
	n := path.Base(rel)
	if i := strings.Index(n, ".ko"); i >= 0 {
		n = n[:i]
	}
	return strings.ReplaceAll(n, "-", "_")
}

// WriteTo writes the tree as a newc cpio archive, parents before children.
func (im *Initramfs) WriteTo(w io.Writer) (int64, error) {
	names := make([]string, 0, len(im.entries))
	for n := range im.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	cw := &cpioWriter{w: bufio.NewWriterSize(w, 1<<20)}
	for i, n := range names {
		e := im.entries[n]
		var data []byte
		switch {
		case e.mode&sIFMT == sIFLNK:
			data = []byte(e.link)
		case e.src != "":
			b, err := os.ReadFile(e.src)
			if err != nil {
				return cw.n, err
			}
			data = b
		default:
			data = e.data
		}
		cw.add(uint32(i+1), n, e.mode, data)
	}
	cw.add(0, "TRAILER!!!", 0, nil)
	if cw.err == nil {
		cw.err = cw.w.(*bufio.Writer).Flush()
	}
	return cw.n, cw.err
}

// WriteFile writes the archive to a file.
func (im *Initramfs) WriteFile(p string) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	if _, err := im.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpioWriter writes "newc" (SVR4 without CRC) records.
type cpioWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *cpioWriter) write(b []byte) {
	if c.err != nil {
		return
	}
	k, err := c.w.Write(b)
	c.n += int64(k)
	c.err = err
}

func (c *cpioWriter) pad() {
	if r := c.n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) add(ino uint32, name string, mode uint32, data []byte) {
	nlink := 1
	if mode&sIFMT == sIFDIR {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write(append([]byte(name), 0))
	c.pad()
	c.write(data)
	c.pad()
}

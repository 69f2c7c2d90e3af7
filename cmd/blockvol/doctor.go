package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/backends/cinder"
	"github.com/blockvol/blockvol/backends/loop"
	"github.com/blockvol/blockvol/config"
	bvfs "github.com/blockvol/blockvol/fs"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/iscsi"
	"github.com/blockvol/blockvol/state"
)

const doctorUsage = `usage: blockvol doctor [--config FILE] [--socket PATH] [--json]

Checks that this host can run blockvol: kernel module, iSCSI initiator,
tools, configuration, the plugin socket, damaged state records set aside
and each backend; it changes nothing on the host. One line per
check (OK, WARN or FAIL, and what to do); exit status 1 on any FAIL.
iSCSI checks FAIL when a backend that attaches over iSCSI is configured
(iscsitarget, cinder), and only WARN otherwise.
`

// Check outcomes.
const (
	statusOK   = "OK"
	statusWarn = "WARN"
	statusFail = "FAIL"
)

// checkResult is one line of the doctor's report.
type checkResult struct {
	Check  string `json:"check"`
	Status string `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// iscsiBackendTypes are the backend types that attach over iSCSI.
var iscsiBackendTypes = map[string]bool{"iscsitarget": true, "cinder": true}

// credentialBackendTypes are the backend types whose settings may hold
// passwords (CHAP secrets, Keystone credentials).
var credentialBackendTypes = iscsiBackendTypes

// requiredTools are the programs blockvol runs, with the Debian package
// that provides each: every one the fs package runs, and losetup.
var requiredTools = append(slices.Clone(bvfs.Tools), bvfs.Tool{Name: "losetup", Package: "mount", Why: "attaches loop volumes"})

// toolDirs are searched for programs, under the host root.
var toolDirs = []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}

// doctor checks a host. Host facts are read under Root (a test tree, or
// "/") and through Run, so that every check is unit-tested; the config
// file, the plugin socket and the backends' own checks are real.
type doctor struct {
	Root string
	Run  hostexec.Runner

	ConfigPath string
	Config     *config.Config // nil when it could not be loaded
	ConfigErr  error
	Socket     string // overrides Config.Socket

	// Checker returns a backend's self-check, nil when its type has none.
	Checker func(name string, cfg config.Config) (backends.Checker, error)
}

// host returns path under the doctor's root.
func (d *doctor) host(path string) string { return filepath.Join(d.Root, path) }

// iscsiNeeded reports whether a configured backend attaches over iSCSI,
// and which.
func (d *doctor) iscsiNeeded() (bool, string) {
	if d.Config == nil {
		return false, ""
	}
	var names []string
	for _, n := range d.Config.BackendNames() {
		if t := d.Config.Backends[n].Type; iscsiBackendTypes[t] {
			names = append(names, fmt.Sprintf("%s (%s)", n, t))
		}
	}
	return len(names) > 0, strings.Join(names, ", ")
}

// iscsiLevel is the status of a failed iSCSI check, and why.
func (d *doctor) iscsiLevel() (status, why string) {
	if need, which := d.iscsiNeeded(); need {
		return statusFail, "needed by backend " + which
	}
	return statusWarn, "needed only by iSCSI backends (iscsitarget, cinder); none is configured"
}

// run performs every check, in a fixed order.
func (d *doctor) run(ctx context.Context) []checkResult {
	var out []checkResult
	out = append(out, d.checkConfig()...)
	out = append(out, d.checkTools()...)
	out = append(out, d.checkModule(ctx), d.checkIscsid(), d.checkInitiatorName())
	out = append(out, d.checkSocket(ctx))
	if d.Config != nil {
		out = append(out, d.checkStateRecords())
		if r, ok := d.checkSnapshotRecords(); ok {
			out = append(out, r)
		}
	}
	out = append(out, d.checkBackends(ctx)...)
	return out
}

func (d *doctor) checkConfig() []checkResult {
	r := checkResult{Check: "config"}
	if d.Config == nil {
		r.Status = statusFail
		r.Detail = d.ConfigErr.Error()
		if errors.Is(d.ConfigErr, fs.ErrNotExist) {
			r.Fix = "install.sh writes it from config.example.toml; or pass --config FILE"
		} else {
			r.Fix = "correct the key named above (config.example.toml documents every key)"
		}
		return []checkResult{r}
	}
	var bes []string
	for _, n := range d.Config.BackendNames() {
		bes = append(bes, fmt.Sprintf("%s (%s)", n, d.Config.Backends[n].Type))
	}
	r.Status = statusOK
	r.Detail = fmt.Sprintf("%s: driver %q, backends %s", d.ConfigPath, d.Config.Name, strings.Join(bes, ", "))
	return []checkResult{r, d.checkConfigMode()}
}

// checkConfigMode: a configuration that may hold secrets must be readable
// by root alone.
func (d *doctor) checkConfigMode() checkResult {
	r := checkResult{Check: "config permissions"}
	fi, err := os.Stat(d.ConfigPath)
	if err != nil {
		r.Status, r.Detail = statusFail, err.Error()
		return r
	}
	mode := fi.Mode().Perm()
	uid := -1
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid = int(st.Uid)
	}
	var secrets []string
	for _, n := range d.Config.BackendNames() {
		if t := d.Config.Backends[n].Type; credentialBackendTypes[t] {
			secrets = append(secrets, n)
		}
	}
	switch {
	case mode&0o077 != 0:
		r.Detail = fmt.Sprintf("mode %04o: readable by group or others", mode)
		r.Fix = "chmod 600 " + d.ConfigPath
		if len(secrets) > 0 {
			r.Status = statusFail
			r.Detail += fmt.Sprintf(", and backend %s may hold passwords", strings.Join(secrets, ", "))
		} else {
			r.Status = statusWarn
			r.Detail += " (no backend holding passwords is configured yet)"
		}
	case uid > 0:
		r.Status = statusWarn
		r.Detail = fmt.Sprintf("mode %04o, but owned by uid %d, who may change it", mode, uid)
		r.Fix = "chown root:root " + d.ConfigPath
	default:
		r.Status = statusOK
		r.Detail = fmt.Sprintf("mode %04o, owned by root", mode)
	}
	return r
}

// lookTool finds a program in the usual directories under the root.
func (d *doctor) lookTool(name string) (string, bool) {
	for _, dir := range toolDirs {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(d.host(p)); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

func (d *doctor) checkTools() []checkResult {
	var out []checkResult
	for _, t := range requiredTools {
		r := checkResult{Check: "tool " + t.Name}
		if p, ok := d.lookTool(t.Name); ok {
			r.Status, r.Detail = statusOK, p
		} else {
			r.Status = statusFail
			r.Detail = "not found; blockvol needs it: it " + t.Why
			r.Fix = "apt-get install " + t.Package
		}
		out = append(out, r)
	}
	r := checkResult{Check: "tool iscsiadm"}
	if p, ok := d.lookTool("iscsiadm"); ok {
		r.Status, r.Detail = statusOK, p
	} else {
		status, why := d.iscsiLevel()
		r.Status, r.Detail, r.Fix = status, "not found; "+why, "apt-get install open-iscsi"
	}
	return append(out, r)
}

// checkModule: iscsi_tcp loaded, built in, or available to modprobe
// (iscsiadm loads it at the first login).
func (d *doctor) checkModule(ctx context.Context) checkResult {
	r := checkResult{Check: "kernel module iscsi_tcp"}
	if _, err := os.Stat(d.host("/sys/module/iscsi_tcp")); err == nil {
		r.Status, r.Detail = statusOK, "loaded"
		return r
	}
	status, why := d.iscsiLevel()
	out, err := d.Run.Run(ctx, "uname", "-r")
	release := strings.TrimSpace(string(out))
	if err != nil || release == "" {
		r.Status, r.Detail = status, fmt.Sprintf("not loaded, and the kernel release is unknown (uname -r: %v); %s", err, why)
		r.Fix = "modprobe iscsi_tcp"
		return r
	}
	modDir := filepath.Join("/lib/modules", release)
	if hasModule(d.host(filepath.Join(modDir, "modules.builtin")), "iscsi_tcp") {
		r.Status, r.Detail = statusOK, "built into kernel "+release
		return r
	}
	if hasModule(d.host(filepath.Join(modDir, "modules.dep")), "iscsi_tcp") {
		r.Status, r.Detail = statusOK, fmt.Sprintf("available in %s, not loaded yet (iscsiadm loads it at the first login)", modDir)
		return r
	}
	r.Status = status
	if _, err := os.Stat(d.host(modDir)); err != nil {
		r.Detail = fmt.Sprintf("not loaded, and kernel %s has no %s (a container, or a kernel without modules); %s", release, modDir, why)
	} else {
		r.Detail = fmt.Sprintf("not loaded, and not among kernel %s's modules; %s", release, why)
	}
	r.Fix = "install this kernel's modules (apt-get install linux-image-" + release + ") and run modprobe iscsi_tcp; a kernel built without CONFIG_ISCSI_TCP cannot attach iSCSI volumes"
	return r
}

// hasModule reports whether a modules.dep or modules.builtin file lists
// the module (as .../name.ko, possibly compressed).
func hasModule(file, name string) bool {
	f, err := os.Open(file)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		path, _, _ := strings.Cut(sc.Text(), ":")
		base := filepath.Base(strings.TrimSpace(path))
		if mod, _, ok := strings.Cut(base, ".ko"); ok && (mod == name || strings.ReplaceAll(mod, "-", "_") == name) {
			return true
		}
	}
	return false
}

// checkIscsid: the iSCSI daemon runs, or systemd listens for it
// (iscsid.socket holds iscsiadm's abstract socket).
func (d *doctor) checkIscsid() checkResult {
	r := checkResult{Check: "iscsid"}
	if pid := findProcess(d.host("/proc"), "iscsid"); pid > 0 {
		r.Status, r.Detail = statusOK, fmt.Sprintf("running (pid %d)", pid)
		return r
	}
	if unix, err := os.ReadFile(d.host("/proc/net/unix")); err == nil && bytes.Contains(unix, []byte("@ISCSIADM_ABSTRACT_NAMESPACE")) {
		r.Status, r.Detail = statusOK, "not running; its socket listens (systemd's iscsid.socket starts it on demand)"
		return r
	}
	status, why := d.iscsiLevel()
	r.Status = status
	if _, ok := d.lookTool("iscsid"); !ok {
		r.Detail, r.Fix = "not installed; "+why, "apt-get install open-iscsi"
		return r
	}
	r.Detail = "not running; " + why
	r.Fix = "systemctl enable --now iscsid.socket (without systemd: run iscsid)"
	return r
}

// findProcess returns the pid of a process named comm, 0 for none.
func findProcess(procDir, comm string) int {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return 0
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(procDir, e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(b)) == comm {
			return pid
		}
	}
	return 0
}

// checkInitiatorName: this host's iSCSI initiator name, which targets'
// ACLs must allow.
func (d *doctor) checkInitiatorName() checkResult {
	r := checkResult{Check: "iSCSI initiator name"}
	file := iscsi.DefaultInitiatorNameFile
	if d.Config != nil {
		if d.Config.ISCSI.InitiatorName != "" {
			r.Status, r.Detail = statusOK, d.Config.ISCSI.InitiatorName+" (from the configuration's [iscsi] initiator_name)"
			return r
		}
		if d.Config.ISCSI.InitiatorNameFile != "" {
			file = d.Config.ISCSI.InitiatorNameFile
		}
	}
	status, why := d.iscsiLevel()
	data, err := os.ReadFile(d.host(file))
	if err != nil {
		r.Status = status
		if errors.Is(err, fs.ErrNotExist) {
			r.Detail = file + " does not exist; " + why
		} else {
			r.Detail = fmt.Sprintf("%s cannot be read: %v; %s", file, err, why)
		}
		r.Fix = "apt-get install open-iscsi (it generates the name), or set [iscsi] initiator_name"
		return r
	}
	name, err := iscsi.ParseInitiatorName(file, data)
	if err != nil {
		r.Status = status
		r.Detail = err.Error() + "; " + why
		r.Fix = "set InitiatorName=iqn.... in " + file + " (iscsi-iname makes one), or set [iscsi] initiator_name"
		return r
	}
	r.Status, r.Detail = statusOK, name+" ("+file+")"
	return r
}

func (d *doctor) socketPath() string {
	switch {
	case d.Socket != "":
		return d.Socket
	case d.Config != nil:
		return d.Config.Socket
	default:
		return filepath.Join("/run/docker/plugins", config.Default().Name+".sock")
	}
}

// checkSocket: the plugin socket is there and answers Plugin.Activate. A
// socket file nobody answers on stalls Docker ~15 s on every volume call.
func (d *doctor) checkSocket(ctx context.Context) checkResult {
	sock := d.socketPath()
	r := checkResult{Check: "plugin socket"}
	start := "systemctl start blockvol.socket (without systemd: blockvol serve --config " + d.ConfigPath + ")"
	fi, err := os.Lstat(sock)
	if errors.Is(err, fs.ErrNotExist) {
		r.Status, r.Detail, r.Fix = statusWarn, "blockvol is not running: no socket at "+sock, start
		return r
	}
	if err != nil {
		r.Status, r.Detail = statusFail, err.Error()
		return r
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		r.Status, r.Detail, r.Fix = statusFail, sock+" is not a socket", "remove it and start blockvol: "+start
		return r
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := newPluginClient(sock).activate(ctx); err != nil {
		r.Status = statusFail
		r.Detail = fmt.Sprintf("%s does not answer (Docker stalls ~15 s per volume call on it): %v", sock, err)
		r.Fix = "start blockvol (" + start + "), or remove the stale socket file"
		return r
	}
	r.Status, r.Detail = statusOK, sock+" answers as a VolumeDriver"
	return r
}

// checkStateRecords lists the damaged records that serve set aside (the
// volumes are served without them; see volumes.Core). It only reads.
func (d *doctor) checkStateRecords() checkResult {
	r := checkResult{Check: "state records"}
	var damaged []string
	for _, dir := range []string{d.Config.StateDir, filepath.Join(d.Config.StateDir, "volumes")} {
		entries, err := os.ReadDir(d.host(dir))
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			r.Status, r.Detail = statusFail, err.Error()
			return r
		}
		for _, e := range entries {
			if state.IsQuarantined(e.Name()) {
				damaged = append(damaged, filepath.Join(dir, e.Name()))
			}
		}
	}
	if len(damaged) == 0 {
		r.Status, r.Detail = statusOK, "no damaged record in "+d.Config.StateDir
		return r
	}
	r.Status = statusWarn
	r.Detail = fmt.Sprintf("%d damaged record(s) set aside, their volumes served without them: %s", len(damaged), strings.Join(damaged, ", "))
	r.Fix = "check each volume named (blockvol's log says what was lost), then delete the file"
	return r
}

func (d *doctor) checkBackends(ctx context.Context) []checkResult {
	if d.Config == nil {
		return nil
	}
	var out []checkResult
	for _, name := range d.Config.BackendNames() {
		bc := d.Config.Backends[name]
		r := checkResult{Check: fmt.Sprintf("backend %s (%s)", name, bc.Type)}
		c, err := d.Checker(name, *d.Config)
		switch {
		case err != nil:
			r.Status, r.Detail = statusFail, err.Error()
			r.Fix = "correct backends." + name + " in " + d.ConfigPath
		case c == nil:
			r.Status, r.Detail = statusWarn, "type "+bc.Type+" has no self-check; not checked"
		default:
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.Check(cctx)
			cancel()
			if err != nil {
				r.Status, r.Detail = statusFail, err.Error()
				r.Fix = "see the message; blockvol serve fails the same way"
			} else {
				r.Status, r.Detail = statusOK, "usable"
			}
		}
		out = append(out, r)
	}
	return out
}

// backendChecker builds a backend's self-check, changing nothing on the
// host. The loop and cinder backends' are built without the backend (which
// would create directories, sweep debris beside a serving plugin, write the
// host UUID file and start a login); other types are built as serve builds
// them, and checked if they implement backends.Checker.
func backendChecker(name string, cfg config.Config) (backends.Checker, error) {
	bc := cfg.Backends[name]
	run := hostexec.OS{}
	log := slog.New(slog.DiscardHandler)
	switch s := bc.Settings.(type) {
	case *config.LoopConfig:
		return loop.NewChecker(loop.Config{DataDir: s.DataDir}), nil
	case *config.CinderConfig:
		ini, err := newInitiator(cfg, run, log)
		if err != nil {
			return nil, err
		}
		return cinder.NewChecker(cinderSettings(s), ini)
	}
	b, _, err := newBackend(bc, run, func() (*iscsi.Initiator, error) { return newInitiator(cfg, run, log) }, log)
	if err != nil {
		return nil, err
	}
	if c, ok := b.(backends.Checker); ok {
		return c, nil
	}
	return nil, nil
}

// summary counts the results by status.
func summary(rs []checkResult) map[string]int {
	n := map[string]int{statusOK: 0, statusWarn: 0, statusFail: 0}
	for _, r := range rs {
		n[r.Status]++
	}
	return n
}

func writeDoctorTable(w io.Writer, rs []checkResult) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "STATUS\tCHECK\tDETAIL")
	for _, r := range rs {
		line := r.Detail
		if r.Fix != "" && r.Status != statusOK {
			line += " -> fix: " + r.Fix
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Status, r.Check, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	n := summary(rs)
	_, err := fmt.Fprintf(w, "doctor: %d OK, %d WARN, %d FAIL\n", n[statusOK], n[statusWarn], n[statusFail])
	return err
}

func writeDoctorJSON(w io.Writer, rs []checkResult) error {
	n := summary(rs)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(struct {
		Checks   []checkResult `json:"checks"`
		OK       int           `json:"ok"`
		Warnings int           `json:"warnings"`
		Failures int           `json:"failures"`
	}{rs, n[statusOK], n[statusWarn], n[statusFail]})
}

// doctorCmd runs `blockvol doctor`; exit status 1 on any FAIL.
func doctorCmd(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	configPath := fl.String("config", defaultConfigPath, "configuration file")
	socket := fl.String("socket", "", "plugin socket (overrides the configuration's)")
	jsonOut := fl.Bool("json", false, "JSON output")
	pos, err := parseInterspersed(fl, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, doctorUsage)
		return 0
	}
	if err != nil || len(pos) > 0 {
		if err == nil {
			err = fmt.Errorf("unexpected argument %q", pos[0])
		}
		fmt.Fprintf(stderr, "blockvol doctor: %v\n%s", err, doctorUsage)
		return 2
	}
	d := &doctor{Root: "/", Run: hostexec.OS{}, ConfigPath: *configPath, Socket: *socket, Checker: backendChecker}
	if cfg, err := config.Load(*configPath); err != nil {
		d.ConfigErr = err
	} else {
		d.Config = &cfg
	}
	return d.report(context.Background(), stdout, *jsonOut)
}

// report runs the checks, writes them and returns the exit status.
func (d *doctor) report(ctx context.Context, w io.Writer, asJSON bool) int {
	rs := d.run(ctx)
	var err error
	if asJSON {
		err = writeDoctorJSON(w, rs)
	} else {
		err = writeDoctorTable(w, rs)
	}
	if err != nil || summary(rs)[statusFail] > 0 {
		return 1
	}
	return 0
}

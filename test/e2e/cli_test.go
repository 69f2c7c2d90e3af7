package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runBlockvol runs the blockvol binary bin and returns its exit status,
// stdout and stderr, as a user in a shell sees them.
func runBlockvol(t testing.TB, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dockerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = childEnv()
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, stdout.String(), stderr.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), stdout.String(), stderr.String()
	default:
		t.Fatalf("blockvol %s: %v", strings.Join(args, " "), err)
		return -1, "", ""
	}
}

// TestCLIAgainstRunningPlugin: `blockvol volume` drives the real plugin
// over its socket (no Docker involved): create with -o, ls and inspect as a
// table and as JSON, an ID-less mount whose data a container then reads
// through Docker, unmount, rm, and the plugin's own error sentences.
func TestCLIAgainstRunningPlugin(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	bin := pluginBinary(t)
	vol := uniqueName(t)
	cfg := []string{"--config", p.ConfigPath}
	ok := func(args ...string) string {
		t.Helper()
		code, out, errText := runBlockvol(t, bin, append(args, cfg...)...)
		if code != 0 || errText != "" {
			t.Fatalf("blockvol %s: exit %d, stderr %q", strings.Join(args, " "), code, errText)
		}
		return out
	}

	if out := ok("volume", "create", vol, "-o", "size=1", "-o", "fstype=xfs"); out != vol+"\n" {
		t.Fatalf("create printed %q", out)
	}
	t.Cleanup(func() { _, _, _ = runBlockvol(t, bin, append([]string{"volume", "rm", vol}, cfg...)...) })

	table := ok("volume", "ls")
	t.Logf("blockvol volume ls:\n%s", table)
	if !strings.HasPrefix(table, "VOLUME") || !strings.Contains(table, "\n"+vol+" ") {
		t.Errorf("ls table lacks %s:\n%s", vol, table)
	}
	var list []struct{ Name, Mountpoint string }
	if err := json.Unmarshal([]byte(ok("volume", "ls", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != vol || list[0].Mountpoint != "" {
		t.Errorf("ls --json = %+v", list)
	}

	table = ok("volume", "inspect", vol)
	t.Logf("blockvol volume inspect:\n%s", table)
	for _, re := range []string{"Name: +" + vol + "\n", "fstype: +xfs\n", "size: +1 GiB\n", "backend: +local\n", "Mountpoint: +-\n"} {
		if !matches(re, table) {
			t.Errorf("inspect table lacks %q", re)
		}
	}
	var v struct {
		Name, Mountpoint, CreatedAt string
		Status                      map[string]any
	}
	if err := json.Unmarshal([]byte(ok("volume", "inspect", "--json", vol)), &v); err != nil {
		t.Fatal(err)
	}
	if v.Name != vol || v.Status["fstype"] != "xfs" || v.Status["size"] != "1 GiB" || v.CreatedAt == "" {
		t.Errorf("inspect --json = %+v", v)
	}

	// An ID-less mount, as dvdcli makes; repeating it is harmless.
	mp := strings.TrimSpace(ok("volume", "mount", vol))
	if again := strings.TrimSpace(ok("volume", "mount", vol)); again != mp {
		t.Errorf("second mount printed %q, first %q", again, mp)
	}
	if n := mountedVolumes(t, p); n != 1 {
		t.Fatalf("%d mounts under the mount dir after mount; want 1", n)
	}
	if err := os.WriteFile(filepath.Join(mp, "from-cli"), []byte("written through blockvol volume mount\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := ok("volume", "unmount", vol); out != vol+"\n" {
		t.Errorf("unmount printed %q", out)
	}
	requireReleased(t, p)

	// Docker sees the volume the CLI made, with the data.
	out, err := runContainer(t, "--rm", "-v", vol+":/data", env.image, "cat", "/data/from-cli")
	if err != nil || out != "written through blockvol volume mount\n" {
		t.Fatalf("container read %q (%v)", out, err)
	}
	requireReleased(t, p)

	// Errors: the plugin's sentence alone on stderr, exit 1.
	code, out, errText := runBlockvol(t, bin, append([]string{"volume", "inspect", "nope-" + vol}, cfg...)...)
	if code != 1 || out != "" || errText != `volume "nope-`+vol+`" does not exist`+"\n" {
		t.Errorf("inspect of a missing volume: exit %d, stdout %q, stderr %q", code, out, errText)
	}
	code, _, errText = runBlockvol(t, bin, append([]string{"volume", "create", "x-" + vol, "-o", "colour=blue"}, cfg...)...)
	if code != 1 || !strings.Contains(errText, "colour") || strings.Count(errText, "\n") != 1 || strings.HasPrefix(errText, "blockvol:") {
		t.Errorf("create with a bad option: exit %d, stderr %q", code, errText)
	}
	t.Logf("bad option: %s", errText)

	if out := ok("volume", "rm", vol); out != vol+"\n" {
		t.Errorf("rm printed %q", out)
	}
	if out := ok("volume", "ls", "--json"); strings.TrimSpace(out) != "[]" {
		t.Errorf("ls --json after rm = %q", out)
	}
}

// TestDoctorOnThisHost: `blockvol doctor` with a loop-only configuration on
// this machine (no iscsi_tcp module, no iscsid): the iSCSI checks are WARN
// with advice, the running plugin's socket answers, the loop backend is
// usable, and the exit status is 0.
func TestDoctorOnThisHost(t *testing.T) {
	requireDocker(t)
	p := startPlugin(t, PluginConfig{})
	bin := pluginBinary(t)
	code, out, errText := runBlockvol(t, bin, "doctor", "--config", p.ConfigPath)
	t.Logf("blockvol doctor:\n%s", out)
	if code != 0 || errText != "" {
		t.Fatalf("exit %d, stderr %q", code, errText)
	}
	for _, re := range []string{
		`(OK|WARN) +kernel module iscsi_tcp +.*needed only by iSCSI backends.*-> fix: `,
		`(OK|WARN) +iscsid +`,
		`OK +plugin socket +` + p.SocketPath + ` answers as a VolumeDriver`,
		`OK +backend local \(loop\) +usable`,
		`OK +tool mkfs.xfs`,
	} {
		if !matches(re, out) {
			t.Errorf("doctor output lacks %q", re)
		}
	}
	code, out, _ = runBlockvol(t, bin, "doctor", "--json", "--config", p.ConfigPath)
	var rep struct {
		Checks []struct{ Check, Status, Detail, Fix string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 0 {
		t.Fatalf("doctor --json: exit %d, %v\n%s", code, err, out)
	}
	for _, c := range rep.Checks {
		if c.Check == "kernel module iscsi_tcp" && c.Status == "WARN" && c.Fix == "" {
			t.Errorf("iscsi_tcp WARN without advice: %+v", c)
		}
	}
}

// matches reports whether the regular expression re matches in text.
func matches(re, text string) bool { return regexp.MustCompile(re).MatchString(text) }

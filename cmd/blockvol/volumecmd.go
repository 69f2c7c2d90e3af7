package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/blockvol/blockvol/config"
	"github.com/docker/go-plugins-helpers/volume"
)

const volumeUsage = `usage: blockvol volume <command> [flags] [NAME]

Talks to the running plugin over its socket with Docker's VolumeDriver
protocol; Docker need not run.

commands:
  ls                      list the volumes
  inspect NAME            show one volume and its status
  create NAME [-o k=v]... create a volume (options as for docker volume create)
  rm NAME                 remove a volume
  mount NAME              mount a volume without a mount ID, as dvdcli does,
                          and print its mountpoint; repeating it is harmless
  unmount NAME            release that ID-less mount (mounts Docker made for
                          its containers, which carry IDs, are not touched)
  resize NAME SIZE        grow a volume (and its filesystem, online when it
                          is mounted) to SIZE, e.g. 20G; it never shrinks
  snapshot create VOLUME SNAPSHOT
                          take a snapshot (a mounted filesystem is frozen
                          for the instant it is taken)
  snapshot ls [VOLUME]    list the snapshots (of one volume)
  snapshot rm SNAPSHOT    remove a snapshot
  (a clone: create NAME -o from=SNAPSHOT-or-VOLUME [-o size=...])

flags:
  --config FILE   configuration, to find the socket (default /etc/blockvol/config.toml)
  --socket PATH   the plugin socket (overrides --config)
  --json          JSON for scripts instead of a table
  -o key=value    a volume option (create only; repeatable)
`

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// parseInterspersed parses flags found anywhere among args, as people type
// them (`create db -o size=5`), and returns the other arguments in order.
func parseInterspersed(fl *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fl.Parse(args); err != nil {
			return nil, err
		}
		args = fl.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// socketFlags are the flags that find the plugin socket.
type socketFlags struct {
	config *string
	socket *string
	fl     *flag.FlagSet
}

func addSocketFlags(fl *flag.FlagSet) socketFlags {
	return socketFlags{
		config: fl.String("config", defaultConfigPath, "configuration file, to find the socket"),
		socket: fl.String("socket", "", "plugin socket (overrides --config)"),
		fl:     fl,
	}
}

// resolve returns the socket: --socket, else the configuration's, else
// (when the default configuration cannot be read, e.g. by a user in the
// socket's group but not root) the default socket.
func (s socketFlags) resolve() (string, error) {
	if *s.socket != "" {
		return *s.socket, nil
	}
	cfg, err := config.Load(*s.config)
	if err == nil {
		return cfg.Socket, nil
	}
	if !isFlagSet(s.fl, "config") && (errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission)) {
		return filepath.Join("/run/docker/plugins", config.Default().Name+".sock"), nil
	}
	return "", err
}

// volumeCmd runs `blockvol volume ...` and returns the exit status: 0, 1
// when the plugin refused or could not be reached (its Err sentence on
// stderr), 2 for a usage error.
func volumeCmd(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("volume", flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	sf := addSocketFlags(fl)
	jsonOut := fl.Bool("json", false, "JSON output")
	var opts stringList
	fl.Var(&opts, "o", "volume option key=value (create)")
	pos, err := parseInterspersed(fl, args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(stdout, volumeUsage)
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "blockvol volume: %v\n%s", err, volumeUsage)
		return 2
	}
	if len(pos) == 0 {
		fmt.Fprint(stderr, volumeUsage)
		return 2
	}
	sub, pos := pos[0], pos[1:]
	if sub == "snapshot" && len(pos) > 0 {
		sub, pos = "snapshot "+pos[0], pos[1:]
	}
	minArgs, maxArgs := 1, 1
	switch sub {
	case "ls", "list":
		minArgs, maxArgs = 0, 0
	case "inspect", "create", "rm", "remove", "mount", "unmount", "snapshot rm", "snapshot remove":
	case "resize", "snapshot create":
		minArgs, maxArgs = 2, 2
	case "snapshot ls", "snapshot list":
		minArgs = 0
	default:
		fmt.Fprintf(stderr, "blockvol volume: unknown command %q\n%s", sub, volumeUsage)
		return 2
	}
	if len(pos) < minArgs || len(pos) > maxArgs {
		fmt.Fprintf(stderr, "blockvol volume %s: expected %s argument(s), got %d (%s)\n", sub, argCount(minArgs, maxArgs), len(pos), strings.Join(pos, " "))
		return 2
	}
	if len(opts) > 0 && sub != "create" {
		fmt.Fprintf(stderr, "blockvol volume %s: -o is for create only\n", sub)
		return 2
	}
	sock, err := sf.resolve()
	if err != nil {
		fmt.Fprintf(stderr, "blockvol: %v\n", err)
		return 1
	}
	c := &volumeCLI{client: newPluginClient(sock), out: stdout, json: *jsonOut}
	var name, arg2 string
	if len(pos) >= 1 {
		name = pos[0]
	}
	if len(pos) == 2 {
		arg2 = pos[1]
	}
	switch sub {
	case "ls", "list":
		err = c.ls()
	case "inspect":
		err = c.inspect(name)
	case "create":
		err = c.create(name, opts)
	case "rm", "remove":
		err = c.rm(name)
	case "mount":
		err = c.mount(name)
	case "unmount":
		err = c.unmount(name)
	case "resize":
		err = c.resize(name, arg2)
	case "snapshot create":
		err = c.snapshotCreate(name, arg2)
	case "snapshot ls", "snapshot list":
		err = c.snapshotLs(name)
	case "snapshot rm", "snapshot remove":
		err = c.snapshotRm(name)
	}
	if err != nil {
		var pe *pluginError
		if errors.As(err, &pe) {
			fmt.Fprintln(stderr, pe.msg)
		} else {
			fmt.Fprintf(stderr, "blockvol: %v\n", err)
		}
		return 1
	}
	return 0
}

type volumeCLI struct {
	client *pluginClient
	out    io.Writer
	json   bool
}

func withLimit(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func (c *volumeCLI) printJSON(v any) error {
	enc := json.NewEncoder(c.out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func (c *volumeCLI) ls() error {
	ctx, cancel := withLimit(otherLimit)
	defer cancel()
	var resp volume.ListResponse
	if err := c.client.call(ctx, "VolumeDriver.List", struct{}{}, &resp); err != nil {
		return err
	}
	vols := resp.Volumes
	if vols == nil {
		vols = []*volume.Volume{}
	}
	sort.Slice(vols, func(i, j int) bool { return vols[i].Name < vols[j].Name })
	if c.json {
		type entry struct {
			Name       string
			Mountpoint string
		}
		out := make([]entry, len(vols))
		for i, v := range vols {
			out[i] = entry{v.Name, v.Mountpoint}
		}
		return c.printJSON(out)
	}
	tw := tabwriter.NewWriter(c.out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tMOUNTPOINT")
	for _, v := range vols {
		fmt.Fprintf(tw, "%s\t%s\n", v.Name, orDash(v.Mountpoint))
	}
	return tw.Flush()
}

func (c *volumeCLI) get(name string) (*volume.Volume, error) {
	ctx, cancel := withLimit(otherLimit)
	defer cancel()
	var resp volume.GetResponse
	if err := c.client.call(ctx, "VolumeDriver.Get", volume.GetRequest{Name: name}, &resp); err != nil {
		return nil, err
	}
	if resp.Volume == nil {
		return nil, fmt.Errorf("the plugin answered Get %q without a volume", name)
	}
	return resp.Volume, nil
}

func (c *volumeCLI) inspect(name string) error {
	v, err := c.get(name)
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(v)
	}
	tw := tabwriter.NewWriter(c.out, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "Name:\t%s\n", v.Name)
	fmt.Fprintf(tw, "Mountpoint:\t%s\n", orDash(v.Mountpoint))
	fmt.Fprintf(tw, "CreatedAt:\t%s\n", orDash(v.CreatedAt))
	keys := make([]string, 0, len(v.Status))
	for k := range v.Status {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(tw, "%s:\t%s\n", k, formatValue(v.Status[k]))
	}
	return tw.Flush()
}

func (c *volumeCLI) create(name string, opts []string) error {
	req := volume.CreateRequest{Name: name, Options: map[string]string{}}
	for _, o := range opts {
		k, v, ok := strings.Cut(o, "=")
		if !ok || k == "" {
			return fmt.Errorf("option %q is not key=value", o)
		}
		req.Options[k] = v
	}
	ctx, cancel := withLimit(createMountLimit)
	defer cancel()
	if err := c.client.call(ctx, "VolumeDriver.Create", req, nil); err != nil {
		return err
	}
	if !c.json {
		fmt.Fprintln(c.out, name)
		return nil
	}
	v, err := c.get(name)
	if err != nil {
		return err
	}
	return c.printJSON(v)
}

func (c *volumeCLI) rm(name string) error {
	return c.release(name, "VolumeDriver.Remove", volume.RemoveRequest{Name: name})
}

// release sends the request req of name that ends something (a remove,
// an ID-less unmount), within otherLimit, and reports it done.
func (c *volumeCLI) release(name, method string, req any) error {
	ctx, cancel := withLimit(otherLimit)
	defer cancel()
	if err := c.client.call(ctx, method, req, nil); err != nil {
		return err
	}
	return c.done(name, "")
}

// mount mounts without an ID, like dvdcli: the plugin counts it as one
// idempotent use, released by one ID-less unmount.
func (c *volumeCLI) mount(name string) error {
	ctx, cancel := withLimit(createMountLimit)
	defer cancel()
	var resp volume.MountResponse
	if err := c.client.call(ctx, "VolumeDriver.Mount", volume.MountRequest{Name: name}, &resp); err != nil {
		return err
	}
	if !c.json {
		fmt.Fprintln(c.out, resp.Mountpoint)
		return nil
	}
	return c.done(name, resp.Mountpoint)
}

func (c *volumeCLI) unmount(name string) error {
	return c.release(name, "VolumeDriver.Unmount", volume.UnmountRequest{Name: name})
}

// done reports a finished rm, mount or unmount: the name (as docker
// volume rm prints it), or JSON.
func (c *volumeCLI) done(name, mountpoint string) error {
	if !c.json {
		fmt.Fprintln(c.out, name)
		return nil
	}
	out := map[string]string{"Name": name}
	if mountpoint != "" {
		out["Mountpoint"] = mountpoint
	}
	return c.printJSON(out)
}

func argCount(lo, hi int) string {
	if lo == hi {
		return fmt.Sprint(lo)
	}
	return fmt.Sprintf("%d to %d", lo, hi)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// formatValue shows a Status value: lists comma-separated, numbers plain.
func formatValue(v any) string {
	switch x := v.(type) {
	case []any:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = formatValue(e)
		}
		return strings.Join(parts, ",")
	case float64:
		return fmt.Sprintf("%g", x)
	case nil:
		return "-"
	default:
		return fmt.Sprint(x)
	}
}

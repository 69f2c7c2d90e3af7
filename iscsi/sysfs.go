package iscsi

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// The sysfs layout read here (kernel iscsi transport class and SCSI/block):
//
//	class/iscsi_session/sessionS/targetname             target IQN
//	class/iscsi_session/sessionS/ifacename              iface (when the kernel has it)
//	class/iscsi_connection/connectionS:0/persistent_address, persistent_port
//	                                   (or address, port)
//	class/iscsi_session/sessionS/device/targetH:C:T/H:C:T:L/block/sdX
//	block/sdX/{dev,holders/,sdXN/partition,sdXN/holders/}
//	block/dm-N/{dev,dm/name,dm/uuid,slaves/,holders/}   multipath maps have uuid "mpath-..."

// session is one iSCSI session of the target of interest.
type session struct {
	name  string // "session3"
	dir   string
	addr  string // persistent address as sysfs shows it
	ip    net.IP
	port  int
	iface string // "" when sysfs does not tell
}

// lunDevice is one SCSI disk of a session.
type lunDevice struct {
	lun     int
	hctl    string // "2:0:0:1"
	scsiDir string // the H:C:T:L directory
	name    string // "sdb"
	sess    session
}

// readAttr returns a sysfs attribute, trimmed; "" when it cannot be read.
func readAttr(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (i *Initiator) sys(elem ...string) string {
	return filepath.Join(append([]string{i.cfg.SysRoot}, elem...)...)
}

// sessions returns the sessions of iqn, in session number order. Sessions
// that vanish or lack connection data while being read are skipped.
func (i *Initiator) sessions(iqn string) ([]session, error) {
	dirs, err := filepath.Glob(i.sys("class", "iscsi_session", "session*"))
	if err != nil {
		return nil, fmt.Errorf("list iSCSI sessions: %w", err)
	}
	sort.Slice(dirs, func(a, b int) bool { return sessionNum(dirs[a]) < sessionNum(dirs[b]) })
	var out []session
	for _, dir := range dirs {
		if readAttr(filepath.Join(dir, "targetname")) != iqn {
			continue
		}
		name := filepath.Base(dir)
		conn := i.sys("class", "iscsi_connection", "connection"+strings.TrimPrefix(name, "session")+":0")
		addr := readAttr(filepath.Join(conn, "persistent_address"))
		port := readAttr(filepath.Join(conn, "persistent_port"))
		if addr == "" || port == "" {
			addr, port = readAttr(filepath.Join(conn, "address")), readAttr(filepath.Join(conn, "port"))
		}
		ip := net.ParseIP(strings.Trim(addr, "[]"))
		n, err := strconv.Atoi(port)
		if ip == nil || err != nil {
			i.log.Debug("skipping iSCSI session without a readable portal", "session", name, "iqn", iqn)
			continue
		}
		out = append(out, session{
			name: name, dir: dir, addr: addr, ip: ip, port: n,
			iface: readAttr(filepath.Join(dir, "ifacename")),
		})
	}
	return out, nil
}

func sessionNum(dir string) int {
	n, _ := strconv.Atoi(strings.TrimPrefix(filepath.Base(dir), "session"))
	return n
}

// matches reports whether s runs through portal p on iface ("" = any).
func (s session) matches(p portal, iface string) bool {
	if !s.ip.Equal(p.ip) || s.port != p.port {
		return false
	}
	return iface == "" || s.iface == "" || s.iface == iface
}

// targetSessions returns the sessions of iqn through the given portals.
func (i *Initiator) targetSessions(iqn string, portals []portal) ([]session, error) {
	all, err := i.sessions(iqn)
	if err != nil {
		return nil, err
	}
	var out []session
	for _, s := range all {
		for _, p := range portals {
			if s.matches(p, i.cfg.Iface) {
				out = append(out, s)
				break
			}
		}
	}
	return out, nil
}

// devices returns the SCSI disks of session s.
func (i *Initiator) devices(s session) []lunDevice {
	blocks, _ := filepath.Glob(filepath.Join(s.dir, "device", "target*", "*:*:*:*", "block", "*"))
	var out []lunDevice
	for _, b := range blocks {
		scsiDir := filepath.Dir(filepath.Dir(b))
		hctl := filepath.Base(scsiDir)
		f := strings.Split(hctl, ":")
		if len(f) != 4 {
			continue
		}
		lun, err := strconv.Atoi(f[3])
		if err != nil {
			continue
		}
		out = append(out, lunDevice{lun: lun, hctl: hctl, scsiDir: scsiDir, name: filepath.Base(b), sess: s})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].lun < out[b].lun })
	return out
}

// pathDevice finds the disk of LUN lun through portal p whose device node
// exists under DevRoot.
func (i *Initiator) pathDevice(iqn string, p portal, lun int) (lunDevice, bool) {
	ss, err := i.targetSessions(iqn, []portal{p})
	if err != nil {
		return lunDevice{}, false
	}
	for _, s := range ss {
		for _, d := range i.devices(s) {
			if d.lun != lun {
				continue
			}
			if _, err := os.Stat(filepath.Join(i.cfg.DevRoot, d.name)); err == nil {
				return d, true
			}
		}
	}
	return lunDevice{}, false
}

// devicePath returns the path to hand out for path device d: the udev
// by-path link when it exists and resolves to d, else DevRoot/<sdX>.
func (i *Initiator) devicePath(iqn string, d lunDevice) string {
	link := filepath.Join(i.cfg.DevRoot, "disk", "by-path",
		fmt.Sprintf("ip-%s:%d-iscsi-%s-lun-%d", d.sess.addr, d.sess.port, iqn, d.lun))
	if resolvesTo(link, d.name) {
		return link
	}
	return filepath.Join(i.cfg.DevRoot, d.name)
}

// resolvesTo reports whether link exists and resolves to a node named name.
func resolvesTo(link, name string) bool {
	target, err := filepath.EvalSymlinks(link)
	return err == nil && filepath.Base(target) == name
}

// multipathHolder returns the dm multipath map (dm-N) holding path device
// name, if any: /sys/block/dm-*/slaves/<name> with a dm uuid "mpath-...".
func (i *Initiator) multipathHolder(name string) (string, bool) {
	slaves, _ := filepath.Glob(i.sys("block", "dm-*", "slaves", name))
	for _, s := range slaves {
		dm := filepath.Base(filepath.Dir(filepath.Dir(s)))
		if i.isMultipath(dm) {
			return dm, true
		}
	}
	return "", false
}

func (i *Initiator) isMultipath(dm string) bool {
	return strings.HasPrefix(readAttr(i.sys("block", dm, "dm", "uuid")), "mpath-")
}

// dmPath returns the path to hand out for dm device dm: /dev/mapper/<name>
// when it resolves to dm, else /dev/dm-N; "" when neither node exists.
func (i *Initiator) dmPath(dm string) string {
	if name := readAttr(i.sys("block", dm, "dm", "name")); name != "" {
		link := filepath.Join(i.cfg.DevRoot, "mapper", name)
		if resolvesTo(link, dm) {
			return link
		}
	}
	p := filepath.Join(i.cfg.DevRoot, dm)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	return ""
}

// partitions returns the partitions of block device name (a disk or a dm
// map), as sysfs directories.
func (i *Initiator) partitions(name string) []string {
	entries, _ := os.ReadDir(i.sys("block", name))
	var out []string
	for _, e := range entries {
		dir := i.sys("block", name, e.Name())
		if strings.HasPrefix(e.Name(), name) && e.Name() != name {
			if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
				out = append(out, dir)
			}
		}
	}
	return out
}

// holders lists the names in dir/holders.
func holders(dir string) []string {
	entries, _ := os.ReadDir(filepath.Join(dir, "holders"))
	out := make([]string, 0, len(entries))
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// deleteSCSIDevice removes d from the kernel (sysfs H:C:T:L/delete), the
// way a LUN that stays behind a kept session is dropped.
func deleteSCSIDevice(d lunDevice) error {
	return writeAttr(filepath.Join(d.scsiDir, "delete"), "1")
}

// setRecoveryTimeout writes Config.ReplacementTimeout to the sysfs
// recovery_tmo of the sessions of iqn through p: a session that existed
// before this Attach (logged in by an earlier release, or by hand) keeps
// the timeout of the node record it was logged in with, and the record
// written now applies only to the next login. Best effort: a failure is
// logged.
func (i *Initiator) setRecoveryTimeout(iqn string, p portal) {
	ss, err := i.targetSessions(iqn, []portal{p})
	if err != nil {
		i.log.Warn("could not list the iSCSI sessions to set their recovery timeout", "iqn", iqn, "portal", p.arg, "error", err.Error())
		return
	}
	v := wholeSeconds(i.cfg.ReplacementTimeout)
	for _, s := range ss {
		if readAttr(filepath.Join(s.dir, "recovery_tmo")) == v {
			continue
		}
		if err := writeAttr(filepath.Join(s.dir, "recovery_tmo"), v); err != nil {
			i.log.Warn("could not set the recovery timeout of an existing iSCSI session", "iqn", iqn, "portal", p.arg, "session", s.name, "error", err.Error())
			continue
		}
		i.log.Info("iSCSI session recovery timeout set", "iqn", iqn, "portal", p.arg, "session", s.name, "seconds", v)
	}
}

package iscsitarget

import (
	"context"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

var ctx = context.Background()

func TestCreateMakesFileTargetAndRecord(t *testing.T) {
	r := rec("v1")
	r.CreatedAt = t0
	r.Meta = map[string]string{"fstype": "xfs"}
	e := newEnv(t, nil,
		lockCall("create", "v1"),
		scanCall("v1"),
		showCall(target{tid: 1, iqn: "iqn.2000-01.other:x"}, target{tid: 3, iqn: "iqn.2000-01.other:y"}),
		helperCall("create", poolDir+"/v1.img", "1073741824"),
		tgtCall("--mode", "target", "--op", "new", "--tid", "4", "--targetname", testPrefix+":v1"),
		tgtCall("--mode", "logicalunit", "--op", "new", "--tid", "4", "--lun", "1", "--backing-store", poolDir+"/v1.img"),
		lunIDCall("4", testPrefix+":v1"),
		writeCall(poolDir, r),
	)
	v, err := e.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: gib, Meta: map[string]string{"fstype": "xfs"}})
	if err != nil {
		t.Fatal(err)
	}
	want := backends.Volume{Name: "v1", SizeBytes: gib, CreatedAt: t0, Meta: map[string]string{"fstype": "xfs"}, Status: map[string]any{
		"backend": "iscsitarget", "type": "default", "target": testPrefix + ":v1", "portal": testPortal,
		"file": poolDir + "/v1.img", "export": "ok",
	}, Attachment: &backends.Attachment{}}
	if !reflect.DeepEqual(v, want) {
		t.Fatalf("Create =\n %#v\nwant\n %#v", v, want)
	}
}

func TestCreateTypeChoosesPoolAndCHAPIsBound(t *testing.T) {
	r := rec("Fast_1")
	r.CreatedAt, r.Type, r.Meta, r.SizeBytes = t0, "ssd", nil, 1<<20
	r.IQN = testPrefix + ":fast-1-" + mustIQNHash(t, "Fast_1")
	e := newEnv(t, func(c *Config) { c.CHAP = &iscsi.CHAP{Username: "bv", Password: "s3cret-s3cret"} },
		lockCall("create", "Fast_1"),
		scanCall("Fast_1"),
		showCall(),
		helperCall("create", ssdDir+"/Fast_1.img", "1048576"),
		tgtCall("--mode", "target", "--op", "new", "--tid", "1", "--targetname", r.IQN),
		tgtCall("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", ssdDir+"/Fast_1.img"),
		lunIDCall("1", r.IQN),
		tgtRefusal("can't find the account", "--mode", "account", "--op", "bind", "--tid", "1", "--user", "bv"),
		tgtCall("--mode", "account", "--op", "new", "--user", "bv", "--password", "s3cret-s3cret"),
		tgtCall("--mode", "account", "--op", "bind", "--tid", "1", "--user", "bv"),
		writeCall(ssdDir, r),
	)
	if _, err := e.b.Create(ctx, backends.CreateRequest{Name: "Fast_1", SizeBytes: 1 << 20, VolumeType: "ssd"}); err != nil {
		t.Fatal(err)
	}
}

func mustIQNHash(t *testing.T, name string) string {
	iqn, err := iqnFor(testPrefix, name)
	if err != nil {
		t.Fatal(err)
	}
	return iqn[strings.LastIndexByte(iqn, '-')+1:]
}

func TestCreateRefusals(t *testing.T) {
	for _, tc := range []struct {
		req  backends.CreateRequest
		want string
		is   error
	}{
		{backends.CreateRequest{Name: "v", SizeBytes: gib, VolumeType: "gold"}, `volume type "gold" is not one of this backend's pools (default, ssd)`, sentinel.ErrInvalid},
		{backends.CreateRequest{Name: "v", SizeBytes: gib, IOPS: 100}, "does not support option IOPS", sentinel.ErrInvalid},
		{backends.CreateRequest{Name: "v", SizeBytes: 1000}, "multiple of 512", sentinel.ErrInvalid},
		{backends.CreateRequest{Name: "v", SizeBytes: 0}, "must be positive", sentinel.ErrInvalid},
		{backends.CreateRequest{Name: "../x", SizeBytes: gib}, "contains '/'", sentinel.ErrInvalid},
		{backends.CreateRequest{Name: strings.Repeat("a", 200), SizeBytes: gib}, "too long for an iSCSI target name", sentinel.ErrInvalid},
	} {
		e := newEnv(t, nil) // no command may run
		_, err := e.b.Create(ctx, tc.req)
		if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Create(%+v) = %v; want %v containing %q", tc.req, err, tc.is, tc.want)
		}
	}
}

func TestCreateExisting(t *testing.T) {
	e := newEnv(t, nil,
		lockCall("create", "v1"),
		scanCall("v1", vol(ssdDir, rec("v1"))), // a name is unique across pools
	)
	_, err := e.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: gib})
	if !errors.Is(err, sentinel.ErrExists) {
		t.Fatalf("Create of an existing name = %v", err)
	}
}

func TestCreateTakesOverLeftoversOfACrash(t *testing.T) {
	// A Create crashed after exporting, before its record: a backing file
	// and a target, no record.
	r := rec("v1")
	r.CreatedAt, r.Meta = t0, nil
	e := newEnv(t, nil,
		lockCall("create", "v1"),
		scanCall("v1", []item{imgItem(poolDir, "v1")}),
		showCall(exported(2, r)),
		tgtCall("--mode", "target", "--op", "delete", "--tid", "2"),
		helperCall("remove", poolDir+"/v1.img"),
		helperCall("create", poolDir+"/v1.img", "1073741824"),
		tgtCall("--mode", "target", "--op", "new", "--tid", "1", "--targetname", r.IQN),
		tgtCall("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", poolDir+"/v1.img"),
		lunIDCall("1", testPrefix+":v1"),
		writeCall(poolDir, r),
	)
	if _, err := e.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: gib}); err != nil {
		t.Fatal(err)
	}
}

func TestCreateRefusesForeignTargetWithTheSameIQN(t *testing.T) {
	e := newEnv(t, nil,
		lockCall("create", "v1"),
		scanCall("v1"),
		showCall(target{tid: 5, iqn: testPrefix + ":v1", file: "/dev/vg0/lv1"}),
	)
	_, err := e.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: gib})
	if !errors.Is(err, sentinel.ErrExists) || !strings.Contains(err.Error(), "exporting /dev/vg0/lv1") {
		t.Fatalf("Create = %v", err)
	}
}

func TestCreateUndoesWhenTheLUNFails(t *testing.T) {
	e := newEnv(t, nil,
		lockCall("create", "v1"),
		scanCall("v1"),
		showCall(),
		helperCall("create", poolDir+"/v1.img", "1073741824"),
		tgtCall("--mode", "target", "--op", "new", "--tid", "1", "--targetname", testPrefix+":v1"),
		tgtRefusal("invalid request", "--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", poolDir+"/v1.img"),
		tgtCall("--mode", "target", "--op", "delete", "--tid", "1"),
		helperCall("remove", poolDir+"/v1.img"),
	)
	_, err := e.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: gib})
	if err == nil || !strings.Contains(err.Error(), "add LUN 1 backed by /srv/pool/v1.img") {
		t.Fatalf("Create = %v", err)
	}
}

func TestCreateSizeRefusedByTheFileSystem(t *testing.T) {
	e := newEnv(t, nil,
		lockCall("create", "v1"),
		scanCall("v1"),
		showCall(),
		hostexec.Call{Argv: helperArgv("create", poolDir+"/v1.img", "1073741824"), Code: 5, Stderr: "truncate: failed to truncate '/srv/pool/v1.img' at 1073741824 bytes: File too large\n"},
	)
	_, err := e.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: gib})
	if !errors.Is(err, sentinel.ErrInvalid) || !strings.Contains(err.Error(), "File too large") {
		t.Fatalf("Create = %v", err)
	}
}

func TestCHAPPasswordNeverInErrors(t *testing.T) {
	const password = "s3cret-s3cret"
	e := newEnv(t, func(c *Config) { c.CHAP = &iscsi.CHAP{Username: "bv", Password: password} },
		lockCall("create", "v1"),
		scanCall("v1"),
		showCall(),
		helperCall("create", poolDir+"/v1.img", "1073741824"),
		tgtCall("--mode", "target", "--op", "new", "--tid", "1", "--targetname", testPrefix+":v1"),
		tgtCall("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", poolDir+"/v1.img"),
		lunIDCall("1", testPrefix+":v1"),
		tgtRefusal("can't find the account", "--mode", "account", "--op", "bind", "--tid", "1", "--user", "bv"),
		hostexec.Call{Argv: tgtadm("--mode", "account", "--op", "new", "--user", "bv", "--password", password), Code: 22, Stderr: "tgtadm: invalid request " + password + "\n"},
		tgtCall("--mode", "target", "--op", "delete", "--tid", "1"),
		helperCall("remove", poolDir+"/v1.img"),
	)
	_, err := e.b.Create(ctx, backends.CreateRequest{Name: "v1", SizeBytes: gib})
	if err == nil || !strings.Contains(err.Error(), "create CHAP account bv") {
		t.Fatalf("Create = %v", err)
	}
	for e := error(err); e != nil; e = errors.Unwrap(e) {
		if strings.Contains(e.Error(), password) {
			t.Fatalf("error leaks the password: %v", e)
		}
		var ee *hostexec.ExitError
		if errors.As(e, &ee) {
			t.Fatalf("error carries the argv with the password: %#v", ee)
		}
	}
}

func TestAttachClaimsThenAllows(t *testing.T) {
	r := rec("v1")
	e := newEnv(t, nil,
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(exported(2, r)),
		writeCall(poolDir, claim(r)), // the claim first,
		tgtCall("--mode", "target", "--op", "bind", "--tid", "2", "--initiator-name", me), // then the grant
	)
	dev, err := e.b.Attach(ctx, "v1", backends.AttachOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "/dev/disk/by-path/ip-192.0.2.1:3260-iscsi-" + testPrefix + ":v1-lun-1"; dev != want {
		t.Fatalf("device %q, want %q", dev, want)
	}
	want := []iscsi.Target{{IQN: testPrefix + ":v1", Portals: []string{testPortal}, LUN: 1}}
	if !reflect.DeepEqual(e.ini.attached, want) {
		t.Fatalf("initiator attached %+v, want %+v", e.ini.attached, want)
	}
}

// TestAttachThroughEveryPortal: with more portals configured, the volume is
// logged in through the portal and each of them (multipath).
func TestAttachThroughEveryPortal(t *testing.T) {
	r := rec("v1")
	e := newEnv(t, func(c *Config) { c.Portals = []string{"192.0.2.2:3260", "192.0.2.3:3261"} },
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(exported(2, r)),
		writeCall(poolDir, claim(r)),
		tgtCall("--mode", "target", "--op", "bind", "--tid", "2", "--initiator-name", me),
	)
	if _, err := e.b.Attach(ctx, "v1", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	want := []iscsi.Target{{IQN: testPrefix + ":v1", Portals: []string{testPortal, "192.0.2.2:3260", "192.0.2.3:3261"}, LUN: 1}}
	if !reflect.DeepEqual(e.ini.attached, want) {
		t.Fatalf("initiator attached %+v, want %+v", e.ini.attached, want)
	}
}

// claim is r as this host's Attach claims it.
func claim(r record) record {
	r.Attached = &attachment{Host: "node1", Initiator: me, Since: t0}
	return r
}

func TestAttachIsIdempotent(t *testing.T) {
	r := attachedTo(rec("v1"), "node1", me)
	x := exported(2, r)
	x.acl = []string{me}
	x.sessions = []session{{id: 7, initiator: me, conns: []int{0}}}
	e := newEnv(t, nil,
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(x),
	)
	if _, err := e.b.Attach(ctx, "v1", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	if len(e.ini.attached) != 1 {
		t.Fatalf("initiator attached %d times", len(e.ini.attached))
	}
}

func TestAttachRefusedWhileAnotherHostHasIt(t *testing.T) {
	r := attachedTo(rec("v1"), "node2", other)
	x := exported(2, r)
	x.acl = []string{other}
	e := newEnv(t, nil,
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(x),
	)
	_, err := e.b.Attach(ctx, "v1", backends.AttachOptions{})
	if !errors.Is(err, sentinel.ErrInUse) {
		t.Fatalf("Attach = %v; want ErrInUse", err)
	}
	for _, want := range []string{"host node2 (initiator " + other + ") has it attached since", "preempt"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if len(e.ini.attached) != 0 {
		t.Fatal("the initiator logged in anyway")
	}
}

func TestAttachRefusedForAStrangerOnTheACL(t *testing.T) {
	// No record names a holder, but someone is on the ACL and logged in.
	r := rec("v1")
	x := exported(2, r)
	x.acl = []string{"192.0.2.66"}
	x.sessions = []session{{id: 3, initiator: "iqn.2000-01.stranger:x", conns: []int{0}}}
	e := newEnv(t, nil,
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(x),
	)
	_, err := e.b.Attach(ctx, "v1", backends.AttachOptions{})
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "initiator 192.0.2.66, iqn.2000-01.stranger:x may use its iSCSI target") {
		t.Fatalf("Attach = %v", err)
	}
}

func TestAttachPreemptFencesTheOtherHost(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   backends.AttachOptions
		config bool
	}{{"option", backends.AttachOptions{Preempt: true}, false}, {"config", backends.AttachOptions{}, true}} {
		t.Run(tc.name, func(t *testing.T) {
			r := attachedTo(rec("v1"), "node2", other)
			x := exported(2, r)
			x.acl = []string{other}
			x.sessions = []session{{id: 9, initiator: other, conns: []int{0, 1}}}
			after := exported(2, r)
			after.acl = []string{me}
			e := newEnv(t, func(c *Config) { c.Preempt = tc.config },
				lockCall("attach", "v1"),
				scanCall("v1", vol(poolDir, r)),
				showCall(x),
				// Fence: no new logins, then close the sessions.
				tgtCall("--mode", "target", "--op", "unbind", "--tid", "2", "--initiator-name", other),
				tgtCall("--mode", "conn", "--op", "delete", "--tid", "2", "--sid", "9", "--cid", "0"),
				tgtCall("--mode", "conn", "--op", "delete", "--tid", "2", "--sid", "9", "--cid", "1"),
				// Claim, then allow.
				writeCall(poolDir, claim(r)),
				tgtCall("--mode", "target", "--op", "bind", "--tid", "2", "--initiator-name", me),
				// A login in flight during the fence is closed too.
				showCall(after),
			)
			if _, err := e.b.Attach(ctx, "v1", tc.opts); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestAttachExportsAgainAfterATgtdRestart(t *testing.T) {
	// tgtd restarted: no targets. node2 holds v1; its ACL entry comes back
	// with the export, and node1 is refused.
	r := attachedTo(rec("v1"), "node2", other)
	e := newEnv(t, nil,
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(),
		tgtCall("--mode", "target", "--op", "new", "--tid", "1", "--targetname", r.IQN),
		tgtCall("--mode", "logicalunit", "--op", "new", "--tid", "1", "--lun", "1", "--backing-store", poolDir+"/v1.img"),
		lunIDCall("1", testPrefix+":v1"),
		tgtCall("--mode", "target", "--op", "bind", "--tid", "1", "--initiator-name", other),
	)
	_, err := e.b.Attach(ctx, "v1", backends.AttachOptions{})
	if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "node2") {
		t.Fatalf("Attach = %v", err)
	}
}

func TestAttachExportsAgainAndLogsIn(t *testing.T) {
	r := attachedTo(rec("v1"), "node1", me)
	e := newEnv(t, func(c *Config) { c.CHAP = &iscsi.CHAP{Username: "bv", Password: "pw"} },
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(target{tid: 4, iqn: "iqn.2000-01.other:x"}),
		tgtCall("--mode", "target", "--op", "new", "--tid", "5", "--targetname", r.IQN),
		tgtCall("--mode", "logicalunit", "--op", "new", "--tid", "5", "--lun", "1", "--backing-store", poolDir+"/v1.img"),
		lunIDCall("5", testPrefix+":v1"),
		tgtCall("--mode", "target", "--op", "bind", "--tid", "5", "--initiator-name", me),
		tgtCall("--mode", "account", "--op", "bind", "--tid", "5", "--user", "bv"),
	)
	if _, err := e.b.Attach(ctx, "v1", backends.AttachOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := e.ini.attached[0].CHAP; got == nil || *got != (iscsi.CHAP{Username: "bv", Password: "pw"}) {
		t.Fatalf("initiator CHAP %+v", got)
	}
}

func TestAttachUndoesAFailedLogin(t *testing.T) {
	r := rec("v1")
	allowed := exported(2, r)
	allowed.acl = []string{me}
	e := newEnv(t, nil,
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(exported(2, r)),
		writeCall(poolDir, claim(r)),
		tgtCall("--mode", "target", "--op", "bind", "--tid", "2", "--initiator-name", me),
		// undo
		lockCall("undo attach", "v1"),
		scanCall("v1", vol(poolDir, claim(r))),
		showCall(allowed),
		tgtCall("--mode", "target", "--op", "unbind", "--tid", "2", "--initiator-name", me),
		writeCall(poolDir, r),
	)
	e.ini.attach = func(context.Context, iscsi.Target) (string, error) {
		return "", errors.New("iSCSI login to ... failed: the target refused the login")
	}
	_, err := e.b.Attach(ctx, "v1", backends.AttachOptions{})
	if err == nil || !strings.Contains(err.Error(), "iSCSI login: ") {
		t.Fatalf("Attach = %v", err)
	}
	if len(e.ini.detached) != 1 {
		t.Fatalf("the failed login was not logged out (%d detaches)", len(e.ini.detached))
	}
}

func TestAttachUndoLeavesAVolumeTakenMeanwhile(t *testing.T) {
	r := rec("v1")
	e := newEnv(t, nil,
		lockCall("attach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(exported(2, r)),
		writeCall(poolDir, claim(r)),
		tgtCall("--mode", "target", "--op", "bind", "--tid", "2", "--initiator-name", me),
		lockCall("undo attach", "v1"),
		// node2 preempted us while our login failed.
		scanCall("v1", vol(poolDir, attachedTo(r, "node2", other))),
		showCall(target{tid: 2, iqn: r.IQN, file: poolDir + "/v1.img", acl: []string{other}}),
	)
	e.ini.attach = func(context.Context, iscsi.Target) (string, error) { return "", errors.New("login failed") }
	if _, err := e.b.Attach(ctx, "v1", backends.AttachOptions{}); err == nil {
		t.Fatal("Attach succeeded")
	}
}

func TestDetachLogsOutThenLeavesTheACL(t *testing.T) {
	r := claim(rec("v1"))
	x := exported(2, r)
	x.acl = []string{me}
	e := newEnv(t, nil,
		scanCall("v1", vol(poolDir, r)),
		lockCall("detach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(x),
		tgtCall("--mode", "target", "--op", "unbind", "--tid", "2", "--initiator-name", me),
		writeCall(poolDir, rec("v1")),
	)
	if err := e.b.Detach(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	want := []iscsi.Target{{IQN: r.IQN, Portals: []string{testPortal}, LUN: 1}}
	if !reflect.DeepEqual(e.ini.detached, want) {
		t.Fatalf("initiator detached %+v", e.ini.detached)
	}
}

func TestDetachKeepsTheGrantWhenTheLogoutFails(t *testing.T) {
	e := newEnv(t, nil, scanCall("v1", vol(poolDir, claim(rec("v1")))))
	e.ini.detachErr = errors.New("iSCSI LUN 1 of ... is still in use (mounted at /mnt)")
	err := e.b.Detach(ctx, "v1")
	if err == nil || !strings.Contains(err.Error(), "still in use") {
		t.Fatalf("Detach = %v", err)
	}
}

func TestDetachOfAVolumeTakenOverOnlyLogsOut(t *testing.T) {
	r := attachedTo(rec("v1"), "node2", other)
	x := exported(2, r)
	x.acl = []string{other}
	e := newEnv(t, nil,
		scanCall("v1", vol(poolDir, r)),
		lockCall("detach", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(x),
	)
	if err := e.b.Detach(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	if len(e.ini.detached) != 1 {
		t.Fatal("no logout")
	}
}

// The target host's record of the volume is gone: this host still logs
// out of the volume's target.
func TestDetachOfAGoneVolume(t *testing.T) {
	e := newEnv(t, nil, scanCall("v1"))
	if err := e.b.Detach(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
	want := []iscsi.Target{{IQN: testPrefix + ":v1", Portals: []string{testPortal}, LUN: 1}}
	if !reflect.DeepEqual(e.ini.detached, want) {
		t.Fatalf("initiator detached %+v, want %+v", e.ini.detached, want)
	}
}

// The target host cannot be reached: this host logs out all the same, and
// the error says only the target host's side is left to do.
func TestDetachWhenTheTargetHostIsUnreachable(t *testing.T) {
	scan := scanCall("v1")
	scan.Stdout, scan.Code, scan.Stderr = "", 255, "ssh: connect to host 10.0.0.9 port 22: Connection refused"
	e := newEnv(t, nil, scan)
	err := e.b.Detach(ctx, "v1")
	if err == nil || !strings.Contains(err.Error(), "logged out here") {
		t.Fatalf("Detach = %v; want the target host's side reported undone", err)
	}
	want := []iscsi.Target{{IQN: testPrefix + ":v1", Portals: []string{testPortal}, LUN: 1}}
	if !reflect.DeepEqual(e.ini.detached, want) {
		t.Fatalf("initiator detached %+v, want %+v", e.ini.detached, want)
	}
}

func TestRemoveDeletesTargetRecordAndFile(t *testing.T) {
	r := rec("v1")
	e := newEnv(t, nil,
		lockCall("remove", "v1"),
		scanCall("v1", vol(poolDir, r)),
		showCall(exported(2, r)),
		tgtCall("--mode", "target", "--op", "delete", "--tid", "2"),
		helperCall("remove", poolDir+"/v1.json", poolDir+"/v1.img"),
	)
	if err := e.b.Remove(ctx, "v1"); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveRefusals(t *testing.T) {
	t.Run("attached", func(t *testing.T) {
		e := newEnv(t, nil,
			lockCall("remove", "v1"),
			scanCall("v1", vol(poolDir, attachedTo(rec("v1"), "node2", other))),
		)
		err := e.b.Remove(ctx, "v1")
		if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "host node2 (initiator "+other+") has it attached") {
			t.Fatalf("Remove = %v", err)
		}
	})
	t.Run("logged in", func(t *testing.T) {
		x := exported(2, rec("v1"))
		x.sessions = []session{{id: 1, initiator: other, conns: []int{0}}}
		e := newEnv(t, nil,
			lockCall("remove", "v1"),
			scanCall("v1", vol(poolDir, rec("v1"))),
			showCall(x),
		)
		err := e.b.Remove(ctx, "v1")
		if !errors.Is(err, sentinel.ErrInUse) || !strings.Contains(err.Error(), "initiator "+other+" is still logged in") {
			t.Fatalf("Remove = %v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		e := newEnv(t, nil, lockCall("remove", "v1"), scanCall("v1"))
		if err := e.b.Remove(ctx, "v1"); !errors.Is(err, sentinel.ErrNotFound) {
			t.Fatalf("Remove = %v", err)
		}
	})
}

func TestGetReportsAMissingExportWithoutChangingIt(t *testing.T) {
	r := attachedTo(rec("v1"), "node2", other)
	e := newEnv(t, nil, scanCall("v1", vol(poolDir, r)), showCall())
	v, err := e.b.Get(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if s := v.Status["export"].(string); !strings.HasPrefix(s, "missing: ") || !strings.Contains(s, "next attach exports it again") {
		t.Fatalf("export status %q", s)
	}
	if v.Status["attached_to"] != "node2 (initiator "+other+")" {
		t.Fatalf("attached_to %v", v.Status["attached_to"])
	}
}

func TestGetDuringATgtdOutageStillFindsTheVolume(t *testing.T) {
	e := newEnv(t, nil,
		scanCall("v1", vol(poolDir, rec("v1"))),
		hostexec.Call{Argv: tgtadm("--mode", "target", "--op", "show"), Code: 107, Stderr: "tgtadm: failed to send request hdr to tgt daemon, Transport endpoint is not connected\n"},
	)
	v, err := e.b.Get(ctx, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if s := v.Status["export"].(string); !strings.Contains(s, "tgtd is not answering on control port 11") {
		t.Fatalf("export status %q", s)
	}
}

func TestGetNotFoundOnlyWhenReallyAbsent(t *testing.T) {
	e := newEnv(t, nil,
		scanCall("v1"),
		// A pool directory missing (a file system not mounted) is an
		// outage, never "not found": Docker would forget the volume.
		hostexec.Call{Argv: helperArgv("scan", "v1", poolDir, ssdDir), Stdout: "missing\x00" + ssdDir + "\x00\x00\x00"},
		// A record without its backing file, and a leftover backing file.
		scanCall("v1", []item{recItem(poolDir, rec("v1"))}),
		scanCall("v1", []item{imgItem(poolDir, "v1")}),
	)
	if _, err := e.b.Get(ctx, "v1"); !errors.Is(err, sentinel.ErrNotFound) {
		t.Fatalf("Get of nothing = %v", err)
	}
	if _, err := e.b.Get(ctx, "v1"); err == nil || errors.Is(err, sentinel.ErrNotFound) || !strings.Contains(err.Error(), "pool directory /srv/ssd does not exist on the target host") {
		t.Fatalf("Get with a missing pool = %v", err)
	}
	for range 2 {
		if _, err := e.b.Get(ctx, "v1"); !errors.Is(err, sentinel.ErrNotFound) {
			t.Fatalf("Get of debris = %v", err)
		}
	}
}

func TestListReadsEverythingOnce(t *testing.T) {
	a, b, c := rec("a"), rec("b"), rec("c")
	b.Type = "ssd"
	x := exported(1, a)
	x.sessions = []session{{id: 2, initiator: other, conns: []int{0}}}
	e := newEnv(t, nil,
		scanCall("", vol(poolDir, c), vol(poolDir, a), vol(ssdDir, b),
			[]item{{"record", poolDir, "broken", "{not json\n"}, imgItem(poolDir, "broken"), imgItem(poolDir, "debris")}),
		showCall(x),
	)
	vols, err := e.b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range vols {
		names = append(names, v.Name+":"+v.Status["export"].(string)[:2])
	}
	if want := []string{"a:ok", "b:mi", "c:mi"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("List = %v, want %v", names, want)
	}
	if vols[0].Status["sessions"] != other || vols[1].Status["file"] != ssdDir+"/b.img" {
		t.Fatalf("status %v %v", vols[0].Status, vols[1].Status)
	}
}

func TestSetMetaRewritesUnderTheLock(t *testing.T) {
	r := claim(rec("v1"))
	want := r
	want.Meta = map[string]string{"fstype": "xfs", "x": "it's $(hostile)\n"}
	e := newEnv(t, nil,
		lockCall("setmeta", "v1"),
		scanCall("v1", vol(poolDir, r)),
		writeCall(poolDir, want),
	)
	if err := e.b.SetMeta(ctx, "v1", want.Meta); err != nil {
		t.Fatal(err)
	}
}

func TestLockHeldTooLongNamesTheHolder(t *testing.T) {
	busy := lockCall("remove", "v1")
	busy.Stdout, busy.Code, busy.Stderr = "", 75, ""
	e := newEnv(t, nil,
		busy,
		hostexec.Call{Argv: helperArgv("owner", lockPath+".v1"), Stdout: "host node2 pid 77: attach volume v1 since 2024-01-02T03:00:00Z\n"},
	)
	err := e.b.Remove(ctx, "v1")
	if err == nil || !strings.Contains(err.Error(), "lock /srv/pool/.blockvol.lock.v1 is still held after 30s (holder: host node2 pid 77: attach volume v1 since 2024-01-02T03:00:00Z)") {
		t.Fatalf("Remove = %v", err)
	}
}

// An agent of an earlier version holds the one lock of every volume: its
// owner is named.
func TestLockHeldByAnEarlierVersionNamesIt(t *testing.T) {
	busy := lockCall("remove", "v1")
	busy.Stdout, busy.Code, busy.Stderr = "", 75, ""
	e := newEnv(t, nil,
		busy,
		hostexec.Call{Argv: helperArgv("owner", lockPath+".v1")},
		hostexec.Call{Argv: helperArgv("owner", lockPath), Stdout: "host old pid 9: attach volume v3 since 2024-01-02T03:00:00Z\n"},
	)
	err := e.b.Remove(ctx, "v1")
	if err == nil || !strings.Contains(err.Error(), "(holder: host old pid 9: attach volume v3 since 2024-01-02T03:00:00Z)") {
		t.Fatalf("Remove = %v", err)
	}
}

// Different volumes never wait for each other, in this process: a second
// volume's lock is taken while the first one's is held.
func TestLockOfAnotherVolumeDoesNotWait(t *testing.T) {
	e := newEnv(t, nil, lockCall("attach", "v1"), lockCall("remove", "v2"))
	held, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_ = e.b.withLock(ctx, "attach", "v1", func(context.Context) error {
			close(held)
			<-done
			return nil
		})
	}()
	<-held
	ran := false
	if err := e.b.withLock(ctx, "remove", "v2", func(context.Context) error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("withLock of v2 while v1's is held = %v (ran %v)", err, ran)
	}
	done <- struct{}{}
	<-done
}

func TestLockTakesTurnsWithinTheProcess(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.LockTimeout = 200 * time.Millisecond }, lockCall("attach", "v1"))
	e.b.lockWait = 30 * time.Second // the first waits as long as the script says
	held, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		_ = e.b.withLock(ctx, "attach", "v1", func(context.Context) error {
			close(held)
			<-done
			return nil
		})
	}()
	<-held
	e.b.lockWait = 200 * time.Millisecond
	err := e.b.withLock(ctx, "remove", "v1", func(context.Context) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "still held after 200ms by this host (host node1 pid 4242: attach volume v1 since 2024-01-02T03:04:05Z)") {
		t.Fatalf("withLock = %v", err)
	}
	done <- struct{}{}
	<-done
}

func TestLockWaitEndsBeforeTheCallsDeadline(t *testing.T) {
	e := newEnv(t, nil)
	rec := &waitRecorder{fakeHost: e.host}
	e.b.host = rec
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := e.b.withLock(cctx, "x", "v", func(context.Context) error {
		t.Error("the operation ran though the lock was refused")
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "take the target host's lock") {
		t.Fatalf("withLock with the lock refused = %v", err)
	}
	if len(rec.args) < 10 || rec.args[1] != "-w" || rec.args[8] != "-w" {
		t.Fatalf("the lock was never asked for with a wait: %q", rec.args)
	}
	if rec.args[2] != "4" || rec.args[9] != "4" {
		t.Errorf("lock waits %q and %q; want 4s (a second short of the call's 5s)", rec.args[2], rec.args[9])
	}
}

// waitRecorder records the arguments of the lock holder, then refuses.
type waitRecorder struct {
	*fakeHost
	args []string
}

func (w *waitRecorder) Hold(ctx context.Context, name string, args ...string) (string, func() error, error) {
	w.args = args
	return "", nil, errors.New("no")
}

func TestCheck(t *testing.T) {
	sys, err := os.ReadFile("testdata/tgtadm-sys-show.txt")
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, nil,
		helperCall("check", poolDir, ssdDir),
		hostexec.Call{Argv: tgtadm("--mode", "sys", "--op", "show"), Stdout: string(sys)},
		hostexec.Call{Argv: helperArgv("check", poolDir, ssdDir), Code: 1, Stderr: "pool directory /srv/ssd does not exist\n"},
		helperCall("check", poolDir, ssdDir),
		hostexec.Call{Argv: tgtadm("--mode", "sys", "--op", "show"), Code: 107, Stderr: "tgtadm: can't connect to tgt daemon, Connection refused\n"},
	)
	if err := e.b.Check(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.b.Check(ctx); err == nil || !strings.Contains(err.Error(), "pool directory /srv/ssd does not exist") {
		t.Fatalf("Check = %v", err)
	}
	if err := e.b.Check(ctx); err == nil || !strings.Contains(err.Error(), "tgtd is not answering on control port 11 of the target host (is it running?)") {
		t.Fatalf("Check = %v", err)
	}
}

func TestParseTgtShow(t *testing.T) {
	out, err := os.ReadFile("testdata/tgtadm-target-show.txt")
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseTgtShow(string(out))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]*export{
		"iqn.2024-01.test:a": {
			iqn: "iqn.2024-01.test:a", tid: 1, file: "/tmp/tgtexp/a.img",
			acl:      []string{"192.0.2.9", "iqn.2024-01.init:a"},
			accounts: []string{"u1"},
			sessions: []session{{id: 1, initiator: "iqn.2024-01.init:a", conns: []int{0}}},
		},
		"iqn.2024-01.test:b": {iqn: "iqn.2024-01.test:b", tid: 3},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parse =\n%+v\n%+v\nwant\n%+v\n%+v", got["iqn.2024-01.test:a"], got["iqn.2024-01.test:b"], want["iqn.2024-01.test:a"], want["iqn.2024-01.test:b"])
	}
	if _, err := parseTgtShow("garbage\n"); err == nil {
		t.Fatal("garbage parsed")
	}
}

func TestIQNFor(t *testing.T) {
	for name, want := range map[string]string{
		"db-1.data": testPrefix + ":db-1.data",
		"Data_1":    testPrefix + ":data-1-",
		"data-1":    testPrefix + ":data-1",
	} {
		got, err := iqnFor(testPrefix, name)
		if err != nil || !strings.HasPrefix(got, want) || (strings.HasSuffix(want, "-") && len(got) != len(want)+8) {
			t.Errorf("iqnFor(%q) = %q, %v; want %q...", name, got, err, want)
		}
	}
	a, _ := iqnFor(testPrefix, "Data_1")
	b, _ := iqnFor(testPrefix, "data_1")
	if a == b {
		t.Fatalf("Data_1 and data_1 share target name %s", a)
	}
}

// A host already holding maxHeldLocks locks queues the next one up to the
// call's deadline, without asking the target host.
func TestLockTurnsAreQueuedUpToTheCallsDeadline(t *testing.T) {
	e := newEnv(t, nil)
	for range maxHeldLocks {
		e.b.heldLocks <- struct{}{}
	}
	cctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err := e.b.withLock(cctx, "attach", "v1", func(context.Context) error {
		t.Error("the operation ran without a turn at the lock")
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wait for a turn at the target host's lock of volume v1") {
		t.Fatalf("withLock with every turn taken = %v", err)
	}
}

// TestLUNIdentity: each volume's LUN has its own identity, the same at
// every export, within tgt's 24-character scsi_id.
func TestLUNIdentity(t *testing.T) {
	a, b := lunIdentity(testPrefix+":v1"), lunIdentity(testPrefix+":v2")
	if a != "8b335000ec5282a343b7010d" {
		t.Errorf("identity of v1 = %q; want the one every earlier export gave it", a)
	}
	if a == b || len(b) != 24 {
		t.Errorf("identities %q and %q: want two different ones of 24 hex digits", a, b)
	}
	if got, want := lunParams(testPrefix+":v1"), "scsi_id="+a+",scsi_sn="+a; got != want {
		t.Errorf("lunParams = %q; want %q", got, want)
	}
}

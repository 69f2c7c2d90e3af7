package cinder

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/blockvol/blockvol/backends"
	"github.com/blockvol/blockvol/internal/sentinel"
)

func TestCloudCreateGetListRemove(t *testing.T) {
	requireCloud(t)
	b := newCloudBackend(t, adminConfig("host-a", AttachAuto), &fakeInitiator{name: "iqn.2024-01.test:host-a"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := volName(t)
	mustRemove(t, b, name)

	// A Meta value far beyond Cinder's 255 characters per value, with
	// multi-byte characters across the cut points.
	long := strings.Repeat("ünïcødé-", 90)
	meta := map[string]string{"blockvol.options": `{"fstype":"xfs"}`, "long": long}
	t0 := time.Now()
	vol, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 2 << 30, VolumeType: "fast", AvailabilityZone: "nova", Meta: meta})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("create took %s", time.Since(t0))
	if vol.Name != name || vol.SizeBytes != 2<<30 || vol.Status["type"] != "fast" || vol.Status["status"] != "available" || vol.Status["zone"] != "nova" {
		t.Errorf("created volume = %+v", vol)
	}
	cv := cinderVolume(t, b, name)
	if cv.Metadata[tagKey] != tagValue {
		t.Errorf("Cinder metadata %v lacks the blockvol tag", cv.Metadata)
	}
	for k, v := range cv.Metadata {
		if len(v) > 255 {
			t.Errorf("metadata %s has %d bytes, over Cinder's limit", k, len(v))
		}
	}

	got, err := b.Get(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if got.Meta["long"] != long || got.Meta["blockvol.options"] != meta["blockvol.options"] || len(got.Meta) != 2 {
		t.Errorf("Get Meta = %q, want %q", got.Meta, meta)
	}
	if got.SizeBytes != 2<<30 || got.Status["id"] != cv.ID || got.CreatedAt.IsZero() {
		t.Errorf("Get = %+v", got)
	}

	list, err := b.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, v := range list {
		found = found || v.Name == name && v.SizeBytes == 2<<30 && v.Status["type"] == "fast"
	}
	if !found {
		t.Errorf("List does not show %s with its size and type: %+v", name, list)
	}

	if err := b.SetMeta(ctx, name, map[string]string{"k": "v"}); err != nil {
		t.Fatal(err)
	}
	if got, err := b.Get(ctx, name); err != nil || len(got.Meta) != 1 || got.Meta["k"] != "v" {
		t.Errorf("after SetMeta: Get = %v, %v", got.Meta, err)
	}
	if md := cinderVolume(t, b, name).Metadata; md[tagKey] != tagValue || md[metaPrefix+"1"] != "" {
		t.Errorf("after SetMeta: metadata %v: tag lost or old pieces left", md)
	}

	if _, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30}); !errors.Is(err, sentinel.ErrExists) {
		t.Errorf("second Create = %v, want ErrExists", err)
	}
	if n := countNamed(t, b, name); n != 1 {
		t.Errorf("%d Cinder volumes named %s, want 1", n, name)
	}

	t0 = time.Now()
	if err := b.Remove(ctx, name); err != nil {
		t.Fatal(err)
	}
	t.Logf("remove took %s", time.Since(t0))
	if _, err := b.Get(ctx, name); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("Get after Remove = %v, want ErrNotFound", err)
	}
	if err := b.Remove(ctx, name); !errors.Is(err, sentinel.ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
}

func countNamed(t testing.TB, b *Backend, name string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := b.client(ctx)
	if err != nil {
		t.Fatal(err)
	}
	all, err := b.listVolumes(ctx, c, volumes.ListOpts{Name: name})
	if err != nil {
		t.Fatal(err)
	}
	return len(all)
}

func TestCloudCreateRefusals(t *testing.T) {
	requireCloud(t)
	b := newCloudBackend(t, adminConfig("host-a", AttachAuto), &fakeInitiator{name: "iqn.2024-01.test:host-a"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tc := range []struct {
		what string
		req  backends.CreateRequest
		want string
	}{
		{"unknown type", backends.CreateRequest{SizeBytes: 1 << 30, VolumeType: "no-such-type"}, "no-such-type"},
		{"unknown zone", backends.CreateRequest{SizeBytes: 1 << 30, AvailabilityZone: "no-such-zone"}, "no-such-zone"},
		{"iops", backends.CreateRequest{SizeBytes: 1 << 30, IOPS: 500}, "iops"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			tc.req.Name = volName(t)
			mustRemove(t, b, tc.req.Name)
			_, err := b.Create(ctx, tc.req)
			if !errors.Is(err, sentinel.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Create = %v, want ErrInvalid naming %q", err, tc.want)
			}
			if _, err := b.Get(ctx, tc.req.Name); !errors.Is(err, sentinel.ErrNotFound) {
				t.Errorf("after refused Create: Get = %v, want ErrNotFound", err)
			}
		})
	}
}

// A volume that Cinder puts in status error (here: a type whose backend
// does not exist) is reported with Cinder's reason and deleted.
func TestCloudCreateErrorIsDeleted(t *testing.T) {
	requireCloud(t)
	b := newCloudBackend(t, adminConfig("host-a", AttachAuto), &fakeInitiator{name: "iqn.2024-01.test:host-a"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := volName(t)
	mustRemove(t, b, name)
	_, err := b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30, VolumeType: "nowhere"})
	if err == nil || !strings.Contains(err.Error(), `status "error"`) || !strings.Contains(err.Error(), "backend") {
		t.Fatalf("Create = %v, want status error with Cinder's reason", err)
	}
	t.Log(err)
	if n := countNamed(t, b, name); n != 0 {
		t.Errorf("%d volumes named %s left behind, want 0", n, name)
	}
}

// Two hosts creating one name at the same moment end with one volume;
// each Create succeeds or reports ErrExists.
func TestCloudCreateRace(t *testing.T) {
	requireCloud(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bs := []*Backend{
		newCloudBackend(t, adminConfig("host-a", AttachAuto), &fakeInitiator{name: "iqn.2024-01.test:host-a"}),
		newCloudBackend(t, adminConfig("host-b", AttachAuto), &fakeInitiator{name: "iqn.2024-01.test:host-b"}),
	}
	name := volName(t)
	mustRemove(t, bs[0], name)
	// Both pass the check for an existing name before either creates it:
	// the race that check-then-create cannot close.
	var checked sync.WaitGroup
	checked.Add(len(bs))
	for _, b := range bs {
		b.beforeCreate = func() { checked.Done(); checked.Wait() }
	}
	var wg sync.WaitGroup
	errs := make([]error, len(bs))
	for i, b := range bs {
		wg.Go(func() {
			_, errs[i] = b.Create(ctx, backends.CreateRequest{Name: name, SizeBytes: 1 << 30})
		})
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, sentinel.ErrExists):
		default:
			t.Errorf("Create on host %d = %v", i, err)
		}
	}
	if ok != 1 {
		t.Errorf("%d Creates succeeded, want 1: %v", ok, errs)
	}
	// The loser has deleted its own volume before returning.
	if n := countNamed(t, bs[0], name); n != 1 {
		t.Errorf("%d volumes named %s, want 1", n, name)
	}
}

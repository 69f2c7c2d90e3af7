package cinder

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/blockvol/blockvol/internal/sentinel"
	"github.com/blockvol/blockvol/iscsi"
)

func TestMetaRoundTrip(t *testing.T) {
	for name, meta := range map[string]map[string]string{
		"nil":       nil,
		"short":     {"blockvol.options": `{"fstype":"ext4","size_bytes":1073741824}`},
		"long":      {"a": strings.Repeat("x", 1000), "b": "y"},
		"multibyte": {"k": strings.Repeat("€ü日本", 200)}, // 3- and 2-byte runes across the cuts
		"quotes":    {`we"ird\key`: "line\nbreak\t<tab>"},
	} {
		t.Run(name, func(t *testing.T) {
			pieces, err := encodeMeta(meta)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range pieces {
				if len(v) > 255 || !utf8.ValidString(v) || !strings.HasPrefix(k, metaPrefix) {
					t.Errorf("piece %s: %d bytes, valid UTF-8 %v", k, len(v), utf8.ValidString(v))
				}
			}
			// Stored alongside other keys, as on a real volume.
			md := map[string]string{"other": "kept", claimHostKey: "h", tagKey: tagValue, metaPrefix + "x": "not a piece"}
			for k, v := range pieces {
				md[k] = v
			}
			got, err := decodeMeta(md)
			if err != nil {
				t.Fatal(err)
			}
			if len(meta) == 0 && got == nil {
				return
			}
			if !reflect.DeepEqual(got, meta) {
				t.Errorf("round trip = %q, want %q", got, meta)
			}
		})
	}
}

func TestMetaDecodeErrors(t *testing.T) {
	pieces, _ := encodeMeta(map[string]string{"a": strings.Repeat("x", 600)})
	delete(pieces, metaPrefix+"1")
	if _, err := decodeMeta(pieces); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("decode with a missing piece = %v", err)
	}
	if _, err := decodeMeta(map[string]string{metaPrefix + "0": "{not json"}); err == nil {
		t.Error("garbled metadata decoded")
	}
	if got, err := decodeMeta(map[string]string{"blockvol": "1", metaPrefix + "x": "ignored", metaPrefix + "01": "ignored"}); err != nil || got != nil {
		t.Errorf("decode of foreign keys = %v, %v", got, err)
	}
	if _, err := encodeMeta(map[string]string{"a": strings.Repeat("x", maxMetaJSON)}); !errors.Is(err, sentinel.ErrInvalid) {
		t.Errorf("encode of a huge Meta = %v, want ErrInvalid", err)
	}
}

func TestParseConnInfo(t *testing.T) {
	for _, tc := range []struct {
		name      string
		json      string
		multipath bool
		want      iscsi.Target
		err       string
	}{
		{name: "legacy os-initialize_connection, CHAP",
			json: `{"driver_volume_type": "iscsi", "data": {"target_discovered": false, "target_portal": "127.0.0.1:3260",
				"target_iqn": "iqn.2010-10.org.openstack:volume-1", "target_lun": 1, "auth_method": "CHAP",
				"auth_username": "u", "auth_password": "p", "access_mode": "rw"}}`,
			want: iscsi.Target{IQN: "iqn.2010-10.org.openstack:volume-1", Portals: []string{"127.0.0.1:3260"}, LUN: 1, CHAP: &iscsi.CHAP{Username: "u", Password: "p"}}},
		{name: "attachments API, flat",
			json: `{"driver_volume_type": "iscsi", "target_portal": "10.0.0.1:3260", "target_iqn": "iqn.x", "target_lun": "0", "auth_method": "CHAP", "auth_username": "u", "auth_password": "p"}`,
			want: iscsi.Target{IQN: "iqn.x", Portals: []string{"10.0.0.1:3260"}, CHAP: &iscsi.CHAP{Username: "u", Password: "p"}}},
		{name: "no auth: CHAP not forced",
			json: `{"driver_volume_type": "iSCSI", "data": {"target_portal": "10.0.0.1:3260", "target_iqn": "iqn.x", "target_lun": 3}}`,
			want: iscsi.Target{IQN: "iqn.x", Portals: []string{"10.0.0.1:3260"}, LUN: 3}},
		{name: "discovery CHAP",
			json: `{"driver_volume_type": "iscsi", "data": {"target_portal": "10.0.0.1:3260", "target_iqn": "iqn.x", "target_lun": 0,
				"discovery_auth_method": "CHAP", "discovery_auth_username": "du", "discovery_auth_password": "dp"}}`,
			want: iscsi.Target{IQN: "iqn.x", Portals: []string{"10.0.0.1:3260"}, DiscoveryCHAP: &iscsi.CHAP{Username: "du", Password: "dp"}, Discovery: true}},
		{name: "multipath: portals of the same IQN and LUN",
			json: `{"driver_volume_type": "iscsi", "data": {"target_portal": "10.0.0.1:3260", "target_iqn": "iqn.x", "target_lun": 2,
				"target_portals": ["10.0.0.1:3260", "10.0.1.1:3260", "10.0.2.1:3260"], "target_iqns": ["iqn.x", "iqn.x", "iqn.y"], "target_luns": [2, 2, 2]}}`,
			multipath: true,
			want:      iscsi.Target{IQN: "iqn.x", Portals: []string{"10.0.0.1:3260", "10.0.1.1:3260"}, LUN: 2}},
		{name: "lists without multipath: primary only",
			json: `{"driver_volume_type": "iscsi", "data": {"target_portals": ["10.0.0.1:3260", "10.0.1.1:3260"], "target_iqns": ["iqn.x", "iqn.x"], "target_luns": [4, 4]}}`,
			want: iscsi.Target{IQN: "iqn.x", Portals: []string{"10.0.0.1:3260"}, LUN: 4}},
		{name: "fibre channel", json: `{"driver_volume_type": "fibre_channel", "data": {}}`, err: "iSCSI only"},
		{name: "encrypted", json: `{"driver_volume_type": "iscsi", "data": {"target_portal": "a:1", "target_iqn": "i", "encrypted": true}}`, err: "encrypted"},
		{name: "CHAP without password", json: `{"driver_volume_type": "iscsi", "data": {"target_portal": "a:1", "target_iqn": "i", "auth_method": "CHAP", "auth_username": "u"}}`, err: "no username or password"},
		{name: "no target", json: `{"driver_volume_type": "iscsi", "data": {}}`, err: "names no iSCSI target"},
		{name: "mismatched lists", json: `{"driver_volume_type": "iscsi", "data": {"target_portals": ["a:1", "b:1"], "target_iqns": ["i"]}}`, err: "target_portals"},
		{name: "null", json: `null`, err: "no connection_info"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseConnInfo(json.RawMessage(tc.json), tc.multipath)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("target = %+v\nwant     %+v", got, tc.want)
			}
		})
	}
}

func TestHostUUIDGeneratedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "host-uuid")
	id, err := hostUUID(path)
	if err != nil {
		t.Fatal(err)
	}
	if !uuidRE.MatchString(id) || id[14] != '4' {
		t.Errorf("generated %q, want a version 4 UUID", id)
	}
	again, err := hostUUID(path)
	if err != nil || again != id {
		t.Errorf("second read = %q, %v; want %q", again, err, id)
	}
	if err := os.WriteFile(path, []byte("not-a-uuid\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := hostUUID(path); err == nil || !strings.Contains(err.Error(), "not a UUID") {
		t.Errorf("garbled file = %v", err)
	}
}

func TestNewStoresHostUUID(t *testing.T) {
	f := newFakeCloud(t)
	cfg := f.config()
	cfg.HostUUID = ""
	cfg.HostUUIDFile = filepath.Join(t.TempDir(), "host-uuid")
	b1, _ := unitBackend(t, cfg, nil)
	b2, _ := unitBackend(t, cfg, nil)
	if b1.hostUUID == "" || b1.hostUUID != b2.hostUUID {
		t.Errorf("host UUIDs %q and %q, want one stored UUID", b1.hostUUID, b2.hostUUID)
	}
}

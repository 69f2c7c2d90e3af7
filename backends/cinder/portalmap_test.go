package cinder

import (
	"encoding/json"
	"slices"
	"testing"
)

// A portal in Config.PortalMap is dialled as mapped; others as given.
func TestPortalMap(t *testing.T) {
	b := &Backend{cfg: Config{Multipath: true, PortalMap: map[string]string{"127.0.0.1:3260": "10.213.0.1:3261"}}}
	info := json.RawMessage(`{"driver_volume_type":"iscsi","data":{"target_iqn":"iqn.x:v","target_lun":1,
		"target_portal":"127.0.0.1:3260","target_portals":["127.0.0.1:3260","127.0.0.2:3260"],"target_iqns":["iqn.x:v","iqn.x:v"],"target_luns":[1,1]}}`)
	tg, err := b.parseTarget(info)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"10.213.0.1:3261", "127.0.0.2:3260"}; !slices.Equal(tg.Portals, want) || tg.IQN != "iqn.x:v" || tg.LUN != 1 {
		t.Errorf("target %+v; want portals %v", tg, want)
	}
}

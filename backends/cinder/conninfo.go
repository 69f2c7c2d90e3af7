package cinder

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/blockvol/blockvol/iscsi"
)

// connInfo is the iSCSI part of Cinder's connection_info, as
// os-initialize_connection returns it ({"driver_volume_type": "iscsi",
// "data": {...}}) and as the attachments API returns it (the same keys,
// flat). Only what the initiator needs is decoded.
type connInfo struct {
	DriverVolumeType string `json:"driver_volume_type"`

	TargetPortal  string    `json:"target_portal"`
	TargetIQN     string    `json:"target_iqn"`
	TargetLUN     *flexInt  `json:"target_lun"`
	TargetPortals []string  `json:"target_portals"`
	TargetIQNs    []string  `json:"target_iqns"`
	TargetLUNs    []flexInt `json:"target_luns"`

	AuthMethod            string `json:"auth_method"`
	AuthUsername          string `json:"auth_username"`
	AuthPassword          string `json:"auth_password"`
	DiscoveryAuthMethod   string `json:"discovery_auth_method"`
	DiscoveryAuthUsername string `json:"discovery_auth_username"`
	DiscoveryAuthPassword string `json:"discovery_auth_password"`

	Encrypted  bool   `json:"encrypted"`
	AccessMode string `json:"access_mode"`
}

// flexInt accepts a JSON number or a string holding one (drivers differ).
type flexInt int

func (f *flexInt) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	n, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%s is not a whole number", b)
	}
	*f = flexInt(n)
	return nil
}

// parseTarget is parseConnInfo with this host's settings: multipath, and
// each portal replaced as Config.PortalMap says.
func (b *Backend) parseTarget(raw json.RawMessage) (iscsi.Target, error) {
	t, err := parseConnInfo(raw, b.cfg.Multipath)
	if err != nil {
		return t, err
	}
	for i, p := range t.Portals {
		if to, ok := b.cfg.PortalMap[p]; ok {
			t.Portals[i] = to
		}
	}
	return t, nil
}

// parseConnInfo turns Cinder's connection_info into the target our
// initiator logs in to: the portal, IQN and LUN as given, and CHAP and
// discovery CHAP exactly when Cinder asks for them (never forced). With
// multipath, every portal that serves the same IQN and LUN is used.
func parseConnInfo(raw json.RawMessage, multipath bool) (iscsi.Target, error) {
	if len(bytes.TrimSpace(raw)) == 0 || string(bytes.TrimSpace(raw)) == "null" {
		return iscsi.Target{}, fmt.Errorf("Cinder returned no connection_info")
	}
	var outer struct {
		DriverVolumeType string          `json:"driver_volume_type"`
		Data             json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &outer); err != nil {
		return iscsi.Target{}, fmt.Errorf("Cinder's connection_info is not a JSON object: %w", err)
	}
	var ci connInfo
	data := raw
	if len(outer.Data) > 0 && string(outer.Data) != "null" {
		data = outer.Data
	}
	if err := json.Unmarshal(data, &ci); err != nil {
		return iscsi.Target{}, fmt.Errorf("Cinder's connection_info is unreadable: %w", err)
	}
	if ci.DriverVolumeType == "" {
		ci.DriverVolumeType = outer.DriverVolumeType
	}
	if t := strings.ToLower(ci.DriverVolumeType); t != "iscsi" {
		return iscsi.Target{}, fmt.Errorf("Cinder attaches this volume over %q; the cinder backend supports iSCSI only", ci.DriverVolumeType)
	}
	if ci.Encrypted {
		return iscsi.Target{}, fmt.Errorf("the volume is encrypted by Cinder; the cinder backend does not support encrypted volume types")
	}
	t := iscsi.Target{IQN: ci.TargetIQN}
	if ci.TargetLUN != nil {
		t.LUN = int(*ci.TargetLUN)
	}
	if ci.TargetPortal != "" {
		t.Portals = []string{ci.TargetPortal}
	}
	// The lists, when given, must line up; use the first entry as the
	// primary path when the single keys are absent.
	if n := len(ci.TargetPortals); n > 0 {
		if len(ci.TargetIQNs) != 0 && len(ci.TargetIQNs) != n || len(ci.TargetLUNs) != 0 && len(ci.TargetLUNs) != n {
			return iscsi.Target{}, fmt.Errorf("Cinder's connection_info has %d target_portals but %d target_iqns and %d target_luns", n, len(ci.TargetIQNs), len(ci.TargetLUNs))
		}
		iqnAt := func(i int) string {
			if len(ci.TargetIQNs) == 0 {
				return t.IQN
			}
			return ci.TargetIQNs[i]
		}
		lunAt := func(i int) int {
			if len(ci.TargetLUNs) == 0 {
				return t.LUN
			}
			return int(ci.TargetLUNs[i])
		}
		if t.IQN == "" {
			t.IQN, t.LUN = iqnAt(0), lunAt(0)
		}
		if len(t.Portals) == 0 {
			t.Portals = []string{ci.TargetPortals[0]}
		}
		if multipath {
			for i, p := range ci.TargetPortals {
				if iqnAt(i) == t.IQN && lunAt(i) == t.LUN && p != t.Portals[0] {
					t.Portals = append(t.Portals, p)
				}
			}
		}
	}
	if t.IQN == "" || len(t.Portals) == 0 {
		return iscsi.Target{}, fmt.Errorf("Cinder's connection_info names no iSCSI target (target_iqn and target_portal are missing)")
	}
	var err error
	if t.CHAP, err = chapOf("", ci.AuthMethod, ci.AuthUsername, ci.AuthPassword); err != nil {
		return iscsi.Target{}, err
	}
	if t.DiscoveryCHAP, err = chapOf("discovery ", ci.DiscoveryAuthMethod, ci.DiscoveryAuthUsername, ci.DiscoveryAuthPassword); err != nil {
		return iscsi.Target{}, err
	}
	// Cinder asks for sendtargets discovery only by giving discovery
	// credentials; otherwise the node record is made directly.
	t.Discovery = t.DiscoveryCHAP != nil
	return t, nil
}

func chapOf(what, method, user, password string) (*iscsi.CHAP, error) {
	switch strings.ToUpper(method) {
	case "", "NONE":
		return nil, nil
	case "CHAP":
		if user == "" || password == "" {
			return nil, fmt.Errorf("Cinder asks for %sCHAP but gives no username or password", what)
		}
		return &iscsi.CHAP{Username: user, Password: password}, nil
	}
	return nil, fmt.Errorf("Cinder asks for %sauthentication method %q; only CHAP is supported", what, method)
}

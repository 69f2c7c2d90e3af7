package csi

import (
	"slices"

	"github.com/blockvol/blockvol/volumes"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// Topology: a backend with availability zones (cinder with `zone` set)
// gives nodes and volumes the segment "blockvol.csi/zone-<backend>" =
// zone. Backends without zones add nothing, and with none at all the
// plugin does not advertise VOLUME_ACCESSIBILITY_CONSTRAINTS.

func zoneKey(backend string) string { return "blockvol.csi/zone-" + backend }

// nodeTopology is this node's segments, nil when no backend has zones.
func (s *Server) nodeTopology() *csipb.Topology {
	zones := s.core.Zones()
	if len(zones) == 0 {
		return nil
	}
	t := &csipb.Topology{Segments: map[string]string{}}
	for bn, z := range zones {
		t.Segments[zoneKey(bn)] = z
	}
	return t
}

// pickZone chooses the zone of a new volume on a zoned backend from the
// request's accessibility requirements: the first preferred, else the
// first requisite, segment that names the backend's zone key; "" when none
// does (the backend's own default then).
func pickZone(reqs *csipb.TopologyRequirement, backend string) string {
	key := zoneKey(backend)
	for _, t := range slices.Concat(reqs.GetPreferred(), reqs.GetRequisite()) {
		if z := t.GetSegments()[key]; z != "" {
			return z
		}
	}
	return ""
}

// volumeTopology is where a volume of a zoned backend can be used.
func volumeTopology(info volumes.Info, zoned bool) []*csipb.Topology {
	if !zoned {
		return nil
	}
	z, _ := info.Status["zone"].(string)
	if z == "" && info.OptionsKnown {
		z = info.Options.AvailabilityZone
	}
	if z == "" {
		return nil
	}
	return []*csipb.Topology{{Segments: map[string]string{zoneKey(info.Backend): z}}}
}

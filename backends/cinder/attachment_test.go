package cinder

import (
	"reflect"
	"testing"

	"github.com/gophercloud/gophercloud/v2/openstack/blockstorage/v3/volumes"

	"github.com/blockvol/blockvol/backends"
)

// TestAttachmentFromTheClaim: the claim a core compares with itself to
// tell a volume taken over by another host (backends.Attachment).
func TestAttachmentFromTheClaim(t *testing.T) {
	b := &Backend{hostUUID: "uuid-a"}
	claim := func(host, uuid string) map[string]string {
		return map[string]string{claimHostKey: host, claimUUIDKey: uuid}
	}
	for _, tc := range []struct {
		name string
		v    volumes.Volume
		want *backends.Attachment
	}{
		{"claimed here", volumes.Volume{Status: "in-use", Metadata: claim("agent-a", "uuid-a")}, &backends.Attachment{Here: true}},
		{"taken over", volumes.Volume{Status: "in-use", Metadata: claim("agent-b", "uuid-b")}, &backends.Attachment{Holder: "agent-b"}},
		{"taken over, then released there", volumes.Volume{Status: "available"}, &backends.Attachment{}},
		{"attached by another tool: nothing can be said", volumes.Volume{Status: "in-use", Attachments: []volumes.Attachment{{HostName: "x"}}}, nil},
	} {
		if got := b.attachment(&tc.v); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: attachment = %+v; want %+v", tc.name, got, tc.want)
		}
	}
}

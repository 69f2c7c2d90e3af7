package state

import (
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// UUIDPattern matches a UUID in its textual form, either case.
var UUIDPattern = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// HostUUID returns this host's UUID (lower case): read from path, or
// generated (random, version 4) and stored there, atomically, the first
// time. Backends name this host by it; CSI uses it as the node id.
func HostUUID(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(data))
		if !UUIDPattern.MatchString(id) {
			return "", fmt.Errorf("host UUID file %s holds %q, not a UUID (delete it to have a new one generated)", path, id)
		}
		return strings.ToLower(id), nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read host UUID: %w", err)
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	id := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("store host UUID: %w", err)
	}
	if err := WriteFileAtomic(path, []byte(id+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("store host UUID: %w", err)
	}
	return id, nil
}

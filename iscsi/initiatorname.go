package iscsi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/blockvol/blockvol/internal/sentinel"
)

// InitiatorName returns this host's iSCSI initiator name: Config.InitiatorName
// when set, else the InitiatorName= line of Config.InitiatorNameFile
// (/etc/iscsi/initiatorname.iscsi). A target's ACL must allow this name.
func (i *Initiator) InitiatorName() (string, error) {
	if i.cfg.InitiatorName != "" {
		return i.cfg.InitiatorName, nil
	}
	return readInitiatorName(i.cfg.InitiatorNameFile)
}

// readInitiatorName parses an open-iscsi initiatorname file: lines of
// key=value, '#' comments and blank lines ignored, white space around key
// and value trimmed. The last InitiatorName line wins, as in iscsid.
func readInitiatorName(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("iSCSI initiator name file %s does not exist (install open-iscsi, or set the initiator name in the configuration): %w", path, err)
	}
	if err != nil {
		return "", fmt.Errorf("read iSCSI initiator name: %w", err)
	}
	return ParseInitiatorName(path, data)
}

// ParseInitiatorName parses the contents data of the initiator name file
// at path (named in errors).
func ParseInitiatorName(path string, data []byte) (string, error) {
	var name string
	found, generate := false, false
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "InitiatorName":
			name, found = strings.TrimSpace(value), true
		case "GenerateName":
			generate = strings.EqualFold(strings.TrimSpace(value), "yes")
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read iSCSI initiator name from %s: %w", path, err)
	}
	switch {
	case found && name != "":
		if strings.ContainsAny(name, " \t") {
			return "", fmt.Errorf("iSCSI initiator name %q in %s contains white space: %w", name, path, sentinel.ErrInvalid)
		}
		return name, nil
	case generate:
		return "", fmt.Errorf("iSCSI initiator name in %s is not generated yet (start iscsid once, or run iscsi-iname): %w", path, sentinel.ErrInvalid)
	case found:
		return "", fmt.Errorf("iSCSI initiator name in %s is empty (set InitiatorName=iqn....): %w", path, sentinel.ErrInvalid)
	}
	return "", fmt.Errorf("no InitiatorName= line in %s (set InitiatorName=iqn.... there, or in the configuration): %w", path, sentinel.ErrInvalid)
}

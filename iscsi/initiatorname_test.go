package iscsi

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/blockvol/blockvol/hostexec"
	"github.com/blockvol/blockvol/internal/sentinel"
)

func TestInitiatorNameFile(t *testing.T) {
	tests := []struct {
		name, content, want, errHas string
	}{{
		name: "debian file",
		content: "## DO NOT EDIT OR REMOVE THIS FILE!\n## If you remove this file, the iSCSI daemon will not start.\n" +
			"InitiatorName=iqn.1993-08.org.debian:01:3cedb9e44eaa\n",
		want: "iqn.1993-08.org.debian:01:3cedb9e44eaa",
	}, {
		name:    "white space, alias, CRLF, commented-out name",
		content: "# InitiatorName=iqn.commented:out\r\n\n   InitiatorName = iqn.2005-03.org.open-iscsi:abc  \r\nInitiatorAlias=host1\n",
		want:    "iqn.2005-03.org.open-iscsi:abc",
	}, {
		name:    "last line wins",
		content: "InitiatorName=iqn.a:1\nInitiatorName=iqn.b:2\n",
		want:    "iqn.b:2",
	}, {
		name:    "no name line",
		content: "# nothing here\nInitiatorAlias=host1\n",
		errHas:  "no InitiatorName= line",
	}, {
		name:    "empty name",
		content: "InitiatorName=\n",
		errHas:  "is empty",
	}, {
		name:    "not generated yet",
		content: "GenerateName=yes\n",
		errHas:  "not generated yet",
	}, {
		name:    "white space inside",
		content: "InitiatorName=iqn.a b\n",
		errHas:  "contains white space",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "initiatorname.iscsi")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			i, err := New(Config{InitiatorNameFile: path}, hostexec.NewFake(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			got, err := i.InitiatorName()
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) || !strings.Contains(err.Error(), path) {
					t.Fatalf("InitiatorName = %q, %v; want error containing %q and the path", got, err, tc.errHas)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("InitiatorName = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestInitiatorNameMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope")
	i, err := New(Config{InitiatorNameFile: path}, hostexec.NewFake(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = i.InitiatorName()
	if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "install open-iscsi") {
		t.Fatalf("err = %v", err)
	}
}

func TestInitiatorNameFromConfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "initiatorname.iscsi")
	if err := os.WriteFile(path, []byte("InitiatorName=iqn.file:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	i, err := New(Config{InitiatorName: "iqn.conf:1", InitiatorNameFile: path}, hostexec.NewFake(t), newLogger(logs))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := i.InitiatorName(); err != nil || got != "iqn.conf:1" {
		t.Fatalf("InitiatorName = %q, %v", got, err)
	}
	if !strings.Contains(logs.String(), "differs from the one iscsid uses") {
		t.Errorf("no warning about the mismatch:\n%s", logs)
	}
}

func TestNewRejects(t *testing.T) {
	if _, err := New(Config{}, nil, nil); !errors.Is(err, sentinel.ErrInvalid) {
		t.Errorf("nil runner: %v", err)
	}
	if _, err := New(Config{LoginTimeout: -1}, hostexec.NewFake(t), nil); !errors.Is(err, sentinel.ErrInvalid) {
		t.Errorf("negative timeout: %v", err)
	}
	i, err := New(Config{}, hostexec.NewFake(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := i.cfg
	if c.LoginTimeout != DefaultLoginTimeout || c.DeviceTimeout != DefaultDeviceTimeout || c.LogoutTimeout != DefaultLogoutTimeout ||
		c.PollInterval != DefaultPollInterval || c.SysRoot != "/sys" || c.DevRoot != "/dev" ||
		c.MountInfoPath != "/proc/self/mountinfo" || c.InitiatorNameFile != DefaultInitiatorNameFile {
		t.Errorf("defaults not applied: %+v", c)
	}
}

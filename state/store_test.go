package state

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

type rec struct {
	Users []string
	Phase string
}

func TestStoreRoundTripSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := rec{Users: []string{"a", "b"}, Phase: "mounted"}
	if err := s.Save("vol1", want); err != nil {
		t.Fatal(err)
	}
	// A crash in the middle of an earlier write leaves a temp file; a
	// reopened store removes it and never reports it as a record.
	if err := os.WriteFile(filepath.Join(dir, ".vol2.json.tmp-123"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	s2, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	names, err := s2.Names()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(names, []string{"vol1"}) {
		t.Fatalf("Names() = %v, want [vol1]", names)
	}
	var got rec
	if err := s2.Load("vol1", &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Load = %+v, want %+v", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, ".vol2.json.tmp-123")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("leftover temp file still there: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "vol1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("record mode %v, want 0600", fi.Mode().Perm())
	}
	if err := s2.Delete("vol1"); err != nil {
		t.Fatal(err)
	}
	if err := s2.Delete("vol1"); err != nil {
		t.Fatalf("second Delete: %v", err)
	}
	if err := s2.Load("vol1", &got); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Load after Delete = %v, want ErrNotFound", err)
	}
}

func TestWriteFileAtomicReplacesWhole(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := WriteFileAtomic(p, []byte("a long first version"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFileAtomic(p, []byte("short"), 0o644); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "short" {
		t.Fatalf("content %q, want %q", b, "short")
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want only the file", len(entries))
	}
}

func TestWriteFileAtomicMissingDir(t *testing.T) {
	err := WriteFileAtomic(filepath.Join(t.TempDir(), "no", "such", "f"), []byte("x"), 0o600)
	if err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// One holder at a time; the holder's Close removes the file; the next
// lockAt takes it again.
func TestLockAt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netns-1.lock")
	l, err := lockAt(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Errorf("lock file holds %q, %v; want this pid", b, err)
	}
	if _, err := lockAt(path); !errors.Is(err, errLocked) {
		t.Errorf("second lockAt = %v, want %v", err, errLocked)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file after Close: %v, want it removed", err)
	}
	l2, err := lockAt(path)
	if err != nil {
		t.Fatalf("lockAt after Close: %v", err)
	}
	defer l2.Close()
}

// A file that was opened before its holder removed it is not the lock any
// more: isFileAt tells, so lockAt never holds a lock on a removed file
// while another process holds the file at the path.
func TestIsFileAt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "netns-2.lock")
	l, err := lockAt(path)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := os.Open(path) // opened while the holder still runs
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	if !isFileAt(stale, path) {
		t.Fatal("isFileAt is false for the file at the path")
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if isFileAt(stale, path) {
		t.Error("isFileAt is true for a removed file")
	}
	l2, err := lockAt(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	if isFileAt(stale, path) {
		t.Error("isFileAt is true for a removed file after another took the path")
	}
}

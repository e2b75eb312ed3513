package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRotateLogKeepsAppendingWriterAndShiftsCopies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "task.log")
	// The writer holds the file open with O_APPEND, as tasks and shims do.
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for round := 1; round <= 4; round++ {
		if _, err := w.WriteString(strings.Repeat(string(rune('a'+round-1)), 100) + "\n"); err != nil {
			t.Fatal(err)
		}
		rotated, err := RotateLog(path, 50, 2)
		if err != nil || !rotated {
			t.Fatalf("round %d: rotated=%v err=%v", round, rotated, err)
		}
	}
	if _, err := w.WriteString("after\n"); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read(path); got != "after\n" {
		t.Errorf("current log = %q, want the write after rotation at its start", got)
	}
	if got := read(path + ".1"); !strings.HasPrefix(got, "dddd") || len(got) != 101 {
		t.Errorf(".1 = %q, want the last rotated content", got)
	}
	if got := read(path + ".2"); !strings.HasPrefix(got, "cccc") {
		t.Errorf(".2 = %q, want the one before", got)
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf(".3 exists beyond keep=2: %v", err)
	}
	if rotated, err := RotateLog(path, 50, 2); rotated || err != nil {
		t.Errorf("small log rotated=%v err=%v", rotated, err)
	}
	if rotated, err := RotateLog(filepath.Join(t.TempDir(), "missing"), 50, 2); rotated || err != nil {
		t.Errorf("missing log rotated=%v err=%v", rotated, err)
	}
	if _, err := RotateLog(path, 0, 2); err == nil {
		t.Error("max bytes 0 accepted")
	}
	RemoveRotatedLogs(path, 2)
	if _, err := os.Stat(path + ".1"); !os.IsNotExist(err) {
		t.Errorf(".1 left: %v", err)
	}
}

package node

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStreamLogPrintsTheLastLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.log")
	var content strings.Builder
	for i := 0; i < 5000; i++ {
		content.WriteString("line ")
		content.WriteString(strings.Repeat("x", i%50))
		content.WriteString("\n")
	}
	if err := os.WriteFile(path, []byte(content.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	all := strings.SplitAfter(content.String(), "\n")
	all = all[:len(all)-1]
	for _, tail := range []int{0, 1, 3, 100, 4999, 5000, 9000} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		if err := streamLog(context.Background(), f, logRequest{Tail: tail}, &out); err != nil {
			t.Fatal(err)
		}
		f.Close()
		want := strings.Join(all[len(all)-min(tail, len(all)):], "")
		if out.String() != want {
			t.Errorf("tail %d: got %d bytes, want %d", tail, out.Len(), len(want))
		}
	}
}

func TestTailOfAnUnterminatedLastLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.log")
	if err := os.WriteFile(path, []byte("a\nb\nc"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(path)
	defer f.Close()
	var out bytes.Buffer
	_ = streamLog(context.Background(), f, logRequest{Tail: 2}, &out)
	if out.String() != "b\nc" {
		t.Fatalf("got %q", out.String())
	}
}

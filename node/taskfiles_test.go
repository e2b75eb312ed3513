package node

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shoalmesh/shoal/api"
)

func TestVolumeDirRefusesPathsInNames(t *testing.T) {
	dir := t.TempDir()
	f := &taskFiles{runDir: filepath.Join(dir, "run"), dataDir: filepath.Join(dir, "data"), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range []struct {
		job, volume string
	}{
		{"web", "../../.."},
		{"web", "a/b"},
		{"..", "data"},
		{"web/../..", "data"},
	} {
		job := api.Job{ID: tc.job, Volumes: []api.Volume{{Name: tc.volume, Type: api.VolumePersistent}}}
		if got, err := f.volumeDir(job, "web-0", tc.volume); err == nil {
			t.Errorf("job %q volume %q: made %s", tc.job, tc.volume, got)
		}
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "data") {
			t.Errorf("something was created outside the data dir: %s", e.Name())
		}
	}
	job := api.Job{ID: "web", Volumes: []api.Volume{{Name: "data", Type: api.VolumePersistent}, {Name: "scratch"}}}
	for _, v := range []string{"data", "scratch"} {
		got, err := f.volumeDir(job, "web-0", v)
		if err != nil || !strings.HasPrefix(got, f.dataDir+string(filepath.Separator)) {
			t.Errorf("volume %s: %q, %v", v, got, err)
		}
	}
}

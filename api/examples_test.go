package api

import (
	"os"
	"path/filepath"
	"testing"
)

// The examples in examples/ (and the README, which shows web.yaml) must
// stay valid specs.
func TestExamplesAreValidJobs(t *testing.T) {
	files, _ := filepath.Glob("../examples/*.yaml")
	if len(files) == 0 {
		t.Fatal("no examples found")
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		j, err := ParseJob(raw, "application/yaml")
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		j.ApplyDefaults()
		if err := j.Validate(); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
}

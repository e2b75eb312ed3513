package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// walkthrough returns the command lines of the README's walkthrough, the
// fenced block between the walkthrough markers.
func walkthrough(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(raw)
	start := strings.Index(text, "<!-- walkthrough:")
	end := strings.Index(text, "<!-- /walkthrough -->")
	if start < 0 || end < start {
		t.Fatal("README.md has no walkthrough block")
	}
	block := text[start:end]
	block = block[strings.Index(block, "```sh\n")+len("```sh\n") : strings.LastIndex(block, "```")]
	var lines []string
	for _, line := range strings.Split(block, "\n") {
		if strings.TrimSpace(line) != "" {
			lines = append(lines, line)
		}
	}
	return lines
}

// TestReadmeWalkthrough runs the README's walkthrough line by line in one
// shell, from the repository root with the built binary, and checks what
// each step printed.
func TestReadmeWalkthrough(t *testing.T) {
	RequireRoot(t)
	lines := walkthrough(t)
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// The walkthrough runs bin/shoal; make it the binary under test.
	bin := binary(t)
	if want := filepath.Join(root, "bin", "shoal"); bin != want {
		t.Skipf("the walkthrough runs %s; SHOAL_BIN is %s (run through make test)", want, bin)
	}
	if out, err := exec.Command(bin, "dev", "status").CombinedOutput(); err == nil && strings.Contains(string(out), "shoal-dev-n1") {
		t.Skip("a dev cluster named dev is running on this machine; the walkthrough needs that name")
	}
	t.Cleanup(func() {
		if out, err := exec.Command(bin, "dev", "down").CombinedOutput(); err != nil {
			t.Errorf("dev down: %v\n%s", err, out)
		}
	})

	// One shell, so `source` and `export` carry over; each command's output
	// is framed by a marker line the test splits on.
	var script strings.Builder
	script.WriteString("set -eo pipefail\n")
	for i, line := range lines {
		script.WriteString("echo '@@step " + strings.Repeat("#", i) + "'\n")
		script.WriteString(line + "\n")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	steps := regexp.MustCompile(`(?m)^@@step #*\n`).Split(out.String(), -1)[1:]
	for i, step := range steps {
		t.Logf("$ %s\n%s", lines[i], step)
	}
	if runErr != nil {
		t.Fatalf("the walkthrough stopped at step %d (%s): %v", len(steps), lines[len(steps)-1], runErr)
	}
	if len(steps) != len(lines) {
		t.Fatalf("ran %d of %d steps", len(steps), len(lines))
	}
	output := func(prefix string, nth int) string {
		seen := 0
		for i, line := range lines {
			if strings.HasPrefix(line, prefix) {
				seen++
				if seen == nth {
					return steps[i]
				}
			}
		}
		t.Fatalf("no step %d starting with %q", nth, prefix)
		return ""
	}
	if got := output("shoal nodes", 1); strings.Count(got, " alive ") != 3 {
		t.Errorf("shoal nodes: want 3 alive nodes:\n%s", got)
	}
	if got := output("shoal wait web", 1); !strings.Contains(got, "3 of 3 replicas running and serving") {
		t.Errorf("first shoal wait:\n%s", got)
	}
	ps := output("shoal ps", 1)
	for _, n := range []string{" n1 ", " n2 ", " n3 "} {
		if !regexp.MustCompile(`web-\d\s+` + strings.TrimSpace(n) + `\s+running\s+10\.42\.`).MatchString(ps) {
			t.Errorf("first shoal ps: no running replica with an overlay IP on %s:\n%s", n, ps)
		}
	}
	if got := output("shoal services", 1); !regexp.MustCompile(`web\s+10\.43\.\d+\.\d+\s+80/tcp\s+30080\s+round_robin`).MatchString(got) {
		t.Errorf("shoal services:\n%s", got)
	}
	for nth := 1; nth <= 2; nth++ {
		if got := output("curl", nth); !strings.Contains(got, "hello from web-") {
			t.Errorf("curl %d: %q", nth, got)
		}
	}
	if got := output("shoal dev kill n3", 1); !strings.Contains(got, "sees n3 failed") {
		t.Errorf("shoal dev kill:\n%s", got)
	}
	if got := output("shoal wait web", 2); !strings.Contains(got, "3 of 3 replicas running and serving") {
		t.Errorf("second shoal wait:\n%s", got)
	}
	ps = output("shoal ps", 2)
	if regexp.MustCompile(`web-\d\s+n3\s+running`).MatchString(ps) {
		t.Errorf("second shoal ps still shows a replica running on n3:\n%s", ps)
	}
	for r := 0; r < 3; r++ {
		if !regexp.MustCompile(`web-` + string(rune('0'+r)) + `\s+n[12]\s+running`).MatchString(ps) {
			t.Errorf("second shoal ps: replica %d not running on n1 or n2:\n%s", r, ps)
		}
	}
	if got := output("shoal dev down", 1); !strings.Contains(got, "dev cluster dev removed") {
		t.Errorf("shoal dev down:\n%s", got)
	}
	if out, _ := exec.Command("ip", "netns", "list").CombinedOutput(); strings.Contains(string(out), "shoal-dev-") {
		t.Errorf("namespaces left after dev down:\n%s", out)
	}
}

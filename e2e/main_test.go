package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/shoalmesh/shoal/runtime/containerdtest"
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run()) // every test skips without root
	}
	RemoveStaleNamespaces()
	// One containerd for every agent of every test, as on a real machine;
	// each agent has its own namespace in it.
	if addr := os.Getenv(containerdtest.EnvAddress); addr != "" {
		ContainerdAddress = addr
		code := m.Run()
		for _, f := range atExit {
			f()
		}
		os.Exit(code)
	}
	d, err := containerdtest.StartDaemon()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	ContainerdAddress = d.Address
	code := m.Run()
	for _, f := range atExit {
		f()
	}
	if err := d.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: stop containerd:", err)
	}
	os.Exit(code)
}

package e2e

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	if os.Geteuid() == 0 {
		RemoveStaleNamespaces()
	}
	os.Exit(m.Run())
}

package overlay

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

var subnet7 = netip.MustParsePrefix("10.42.7.0/24")

func TestIPAMNeverHandsOutNetworkGatewayOrBroadcast(t *testing.T) {
	subnet := netip.MustParsePrefix("10.42.7.0/29") // .2 - .6 usable
	m, err := OpenIPAM("", subnet)
	if err != nil {
		t.Fatal(err)
	}
	got := map[netip.Addr]bool{}
	for i := range 5 {
		a, err := m.Allocate(fmt.Sprint("c", i))
		if err != nil {
			t.Fatal(err)
		}
		got[a] = true
	}
	for _, bad := range []string{"10.42.7.0", "10.42.7.1", "10.42.7.7"} {
		if got[netip.MustParseAddr(bad)] {
			t.Errorf("handed out %s", bad)
		}
	}
	if len(got) != 5 {
		t.Fatalf("5 owners got %d distinct addresses", len(got))
	}
	if _, err := m.Allocate("one-too-many"); !errors.Is(err, ErrSubnetFull) {
		t.Fatalf("full subnet: err = %v, want ErrSubnetFull", err)
	}
}

func TestIPAMAllocateIsIdempotentPerOwner(t *testing.T) {
	m, _ := OpenIPAM("", subnet7)
	a, _ := m.Allocate("web-1")
	b, _ := m.Allocate("web-1")
	if a != b {
		t.Fatalf("same owner got %s then %s", a, b)
	}
	if got, ok := m.Lookup("web-1"); !ok || got != a {
		t.Fatalf("Lookup = %s, %v", got, ok)
	}
	if _, ok := m.Lookup("nobody"); ok {
		t.Fatal("Lookup found an owner that never allocated")
	}
}

func TestIPAMDoesNotReuseAReleasedAddressAtOnce(t *testing.T) {
	m, _ := OpenIPAM("", subnet7)
	a, _ := m.Allocate("a")
	b, _ := m.Allocate("b")
	if err := m.Release("a"); err != nil {
		t.Fatal(err)
	}
	c, _ := m.Allocate("c")
	if c == a || c == b {
		t.Fatalf("after releasing %s, new owner got %s; want a fresh address", a, c)
	}
	// Round robin: a's address comes back only after the subnet wrapped:
	// 253 host addresses, b and c hold two, so the 251st is a's.
	seen := map[netip.Addr]string{}
	for i := range 251 {
		owner := fmt.Sprint("x", i)
		addr, err := m.Allocate(owner)
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		if prev, dup := seen[addr]; dup {
			t.Fatalf("%s handed to %s and %s", addr, prev, owner)
		}
		seen[addr] = owner
	}
	if seen[a] != "x250" {
		t.Fatalf("released %s went to %q; want it reused last, by x250", a, seen[a])
	}
	if err := m.Release("never-allocated"); err != nil {
		t.Fatalf("Release of an unknown owner: %v", err)
	}
}

func TestIPAMPersistsAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ipam.json")
	m, err := OpenIPAM(path, subnet7)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := m.Allocate("a")
	b, _ := m.Allocate("b")
	_ = m.Release("a")

	m2, err := OpenIPAM(path, subnet7)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := m2.Lookup("b"); !ok || got != b {
		t.Fatalf("after reopen b = %s, %v; want %s", got, ok, b)
	}
	if _, ok := m2.Lookup("a"); ok {
		t.Fatal("released owner came back after reopen")
	}
	// The cursor is persisted too: no immediate reuse across restarts.
	c, _ := m2.Allocate("c")
	if c == a {
		t.Fatalf("reopened IPAM reused just-released %s", a)
	}
	if l := m2.List(); len(l) != 2 || l[0].Owner != "b" || l[1].Owner != "c" {
		t.Fatalf("List = %v", l)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("state dir holds %d files (temp files left?)", len(entries))
	}
}

func TestIPAMDropsAllocationsOfAnOldSubnet(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	m, _ := OpenIPAM(path, subnet7)
	_, _ = m.Allocate("a")
	other := netip.MustParsePrefix("10.42.9.0/24")

	reopened, err := OpenIPAM(path, other)
	if err != nil {
		t.Fatal(err)
	}
	if len(reopened.List()) != 0 {
		t.Fatalf("reopening for %s kept %v", other, reopened.List())
	}
	a, _ := reopened.Allocate("a")
	if !other.Contains(a) {
		t.Fatalf("got %s outside %s", a, other)
	}

	dropped, err := reopened.SetSubnet(subnet7)
	if err != nil || len(dropped) != 1 || dropped[0].Owner != "a" {
		t.Fatalf("SetSubnet = %v, %v; want a dropped", dropped, err)
	}
	if again, _ := OpenIPAM(path, subnet7); len(again.List()) != 0 {
		t.Fatal("the subnet switch was not persisted")
	}
	if d, _ := reopened.SetSubnet(subnet7); d != nil {
		t.Fatal("setting the same subnet dropped allocations")
	}
}

func TestIPAMRejectsACorruptFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	for _, content := range []string{
		"{not json",
		`{"version":1,"subnet":"10.42.7.0/24","allocations":{"a":"10.42.7.1"}}`,
		`{"version":1,"subnet":"10.42.7.0/24","allocations":{"a":"10.42.7.5","b":"10.42.7.5"}}`,
		`{"version":9,"subnet":"10.42.7.0/24"}`,
	} {
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := OpenIPAM(path, subnet7); err == nil {
			t.Errorf("OpenIPAM accepted %s", content)
		}
	}
}

func TestIPAMIsSafeForConcurrentUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipam.json")
	m, _ := OpenIPAM(path, subnet7)
	const owners = 100
	var wg sync.WaitGroup
	results := make([][]netip.Addr, 4)
	for g := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Every goroutine allocates every owner: each owner must get
			// one address no matter who asked first.
			for i := range owners {
				a, err := m.Allocate(fmt.Sprint("c", i))
				if err != nil {
					t.Error(err)
					return
				}
				results[g] = append(results[g], a)
			}
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]int{}
	for i := range owners {
		for g := range results {
			if results[g][i] != results[0][i] {
				t.Fatalf("owner c%d got %s and %s", i, results[0][i], results[g][i])
			}
		}
		if prev, dup := seen[results[0][i]]; dup {
			t.Fatalf("c%d and c%d share %s", prev, i, results[0][i])
		}
		seen[results[0][i]] = i
	}
	// Concurrent releases and allocations of distinct owners.
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; i < owners; i += 4 {
				if err := m.Release(fmt.Sprint("c", i)); err != nil {
					t.Error(err)
				}
				if _, err := m.Allocate(fmt.Sprint("d", i)); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	reopened, err := OpenIPAM(path, subnet7)
	if err != nil {
		t.Fatal(err)
	}
	if l := reopened.List(); len(l) != owners {
		t.Fatalf("after concurrent churn the file holds %d allocations, want %d", len(l), owners)
	}
}

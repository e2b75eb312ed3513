package node

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/state"
)

func storedBody(t *testing.T, st *state.Store, name string) storedData {
	t.Helper()
	rec, ok := st.Get(api.KindSecret, name)
	if !ok {
		t.Fatalf("secret %s missing", name)
	}
	var body storedData
	if err := json.Unmarshal(rec.Body, &body); err != nil {
		t.Fatal(err)
	}
	return body
}

func TestSecretsSurviveKeyRotation(t *testing.T) {
	k1, k2 := []byte("0123456789abcdef"), []byte("fedcba9876543210")
	st, err := state.OpenMemory(state.Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	w := records{store: st}
	want := map[string]string{"password": "hunter2"}
	raw := sealed(t, [][]byte{k1}, api.KindSecret, "db", want)
	// A secret sealed before keys had ids: opened by trying each key.
	legacy := sealed(t, [][]byte{k1}, api.KindSecret, "old", want)
	var lb storedData
	_ = json.Unmarshal(legacy, &lb)
	lb.KeyID = ""
	if _, err := w.write(change{api.KindSecret, "db", json.RawMessage(raw)}, change{api.KindSecret, "old", lb}); err != nil {
		t.Fatal(err)
	}
	if got := storedBody(t, st, "db").KeyID; got != gossip.KeyID(k1) {
		t.Fatalf("sealed under key id %q, want k1's", got)
	}

	opens := func(ring [][]byte) {
		t.Helper()
		for _, name := range []string{"db", "old"} {
			rec, _ := st.Get(api.KindSecret, name)
			data, _, err := openData(ring, api.KindSecret, name, rec.Body)
			if err != nil || data["password"] != "hunter2" {
				t.Fatalf("%s with %d keys: %v %v", name, len(ring), data, err)
			}
		}
	}
	// install k2: k1 stays primary.
	opens([][]byte{k1, k2})
	// use k2: what k1 sealed still opens.
	ring := [][]byte{k2, k1}
	opens(ring)
	if under := secretsUnder(st, k1); len(under) != 2 {
		t.Fatalf("secrets under k1 before re-sealing: %v", under)
	}
	n, stuck, err := resealStored(w, ring)
	if err != nil || n != 2 || len(stuck) != 0 {
		t.Fatalf("reseal: %d %v %v", n, stuck, err)
	}
	if under := secretsUnder(st, k1); len(under) != 0 {
		t.Fatalf("secrets still under k1: %v", under)
	}
	if got := secretsByKey(st); got[gossip.KeyID(k2)] != 2 || len(got) != 1 {
		t.Fatalf("secrets by key after re-sealing: %v", got)
	}
	// remove k1: everything opens with k2 alone.
	opens([][]byte{k2})
	if n, _, _ := resealStored(w, ring); n != 0 {
		t.Fatalf("a second re-seal rewrote %d secrets", n)
	}
	// A node that only ever had k1 can no longer open them.
	rec, _ := st.Get(api.KindSecret, "db")
	if _, _, err := openData([][]byte{k1}, api.KindSecret, "db", rec.Body); err == nil {
		t.Fatal("the removed key opens a re-sealed secret")
	}
}

func TestResealReportsWhatNoKeyOpens(t *testing.T) {
	k1, k2 := []byte("0123456789abcdef"), []byte("fedcba9876543210")
	st, _ := state.OpenMemory(state.Options{Node: "a"})
	w := records{store: st}
	if _, err := w.write(change{api.KindSecret, "lost", json.RawMessage(sealed(t, [][]byte{k1}, api.KindSecret, "lost", map[string]string{"k": "v"}))}); err != nil {
		t.Fatal(err)
	}
	n, stuck, err := resealStored(w, [][]byte{k2})
	if err != nil || n != 0 || len(stuck) != 1 || stuck[0] != "lost" {
		t.Fatalf("reseal: %d %v %v", n, stuck, err)
	}
}

func keyRequest(t *testing.T, a *Agent, path string, key []byte) (KeysResponse, error) {
	t.Helper()
	c := api.NewClient(a.APIAddr(), "tok", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out KeysResponse
	var in any
	method := http.MethodGet
	if key != nil {
		in, method = KeyRequest{Key: base64.StdEncoding.EncodeToString(key)}, http.MethodPost
	}
	err := c.Do(ctx, method, path, in, &out)
	return out, err
}

func TestKeyRotationOverTheAPIKeepsSecrets(t *testing.T) {
	a := startAgent(t, "a", "tok")
	b := startAgent(t, "b", "tok")
	ctx := context.Background()
	seed := "127.0.0.1:" + strconv.Itoa(a.cfg.Gossip.GossipPort)
	if _, err := api.NewClient(b.APIAddr(), "tok", nil).Join(ctx, []string{seed}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "b alive at a", func() bool { return len(aliveNames(a.cluster.Members())) == 2 })
	if _, err := api.NewClient(a.APIAddr(), "tok", nil).PutData(ctx, api.KindSecret, "db", api.Data{Data: map[string]string{"password": "hunter2"}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "secret at b", func() bool { _, ok := b.store.Get(api.KindSecret, "db"); return ok })

	k1 := a.cfg.Gossip.GossipKey
	k2 := []byte("fedcba9876543210")
	out, err := keyRequest(t, b, "/v1/keys", k2)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if len(out.Keys) != 2 || out.Nodes != 2 {
		t.Fatalf("after install: %+v", out)
	}
	if _, err := keyRequest(t, b, "/v1/keys/remove", k1); err == nil {
		t.Fatal("removed the primary key")
	}
	out, err = keyRequest(t, b, "/v1/keys/use", k2)
	if err != nil {
		t.Fatalf("use: %v", err)
	}
	if out.Resealed != 1 {
		t.Fatalf("use re-sealed %d secrets, want 1", out.Resealed)
	}
	waitUntil(t, "re-sealed secret at a", func() bool {
		return storedBody(t, a.store, "db").KeyID == gossip.KeyID(k2)
	})
	if _, err := keyRequest(t, a, "/v1/keys/remove", k1); err != nil {
		t.Fatalf("remove: %v", err)
	}
	out, err = keyRequest(t, a, "/v1/keys", nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(out.Keys) != 1 || out.Keys[0].ID != gossip.KeyID(k2) || out.Keys[0].Installed != 2 || out.Keys[0].Primary != 2 || out.Keys[0].Secrets != 1 {
		t.Fatalf("after remove: %+v", out)
	}
	for _, n := range []*Agent{a, b} {
		data, err := n.openStoredData(api.KindSecret, "db")
		if err != nil || data["password"] != "hunter2" {
			t.Fatalf("%s: %v %v", n.cfg.Gossip.NodeName, data, err)
		}
	}
	// Bad input is refused with a JSON error.
	var se *api.StatusError
	if _, err := keyRequest(t, a, "/v1/keys", []byte("short")); !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Fatalf("short key: %v", err)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

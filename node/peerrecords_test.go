package node

import (
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/state"
)

// testIdentity is a node's p2p identity, as gossip.LoadIdentity makes one.
type testIdentity struct {
	key crypto.PrivKey
	id  string
}

func newIdentity(t testing.TB) testIdentity {
	t.Helper()
	k, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return testIdentity{key: k, id: id.String()}
}

func (i testIdentity) sign(r state.Record) state.Record {
	r.Sig, _ = i.key.Sign(r.SignedBytes())
	return r
}

// testPeers is a membership of named identities.
type testPeers map[string]testIdentity

func (p testPeers) verify(node string, r state.Record) error {
	id, ok := p[node]
	if !ok {
		return gossip.ErrUnknownSigner
	}
	return gossip.VerifyRecordFrom(id.id, r)
}

// storedJob is a job as the API stores it: parsed, completed with its
// defaults, with the server-kept fields set.
func storedJob(t testing.TB, edit func(*api.Job)) []byte {
	t.Helper()
	raw, err := os.ReadFile("../api/testdata/valid/full.json")
	if err != nil {
		t.Fatal(err)
	}
	j, err := api.ParseJob(raw, "application/json")
	if err != nil {
		t.Fatal(err)
	}
	j.ApplyDefaults()
	j.Version = ""
	prev := j.Clone().Task
	prev.Image = "ghcr.io/example/api:1.2.2"
	j.Rollout = &api.Rollout{PreviousTask: &prev, Since: planNow}
	j.Service.VIP = "10.43.0.7"
	j.Service.ClaimedAt = planNow
	if edit != nil {
		edit(&j)
	}
	body, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func rec(kind, id, writer string, body []byte) state.Record {
	return state.Record{Kind: kind, ID: id, Version: state.Version{WallNanos: planNow.UnixNano(), Node: writer}, Body: body}
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sealed(t testing.TB, keys [][]byte, kind, name string, data map[string]string) []byte {
	t.Helper()
	b, err := sealData(keys, kind, name, api.Data{Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPeerRecordsAreCheckedLikeAPIInput(t *testing.T) {
	// The ring after `use k3`: k1 is still installed, k2 never was.
	k1, k2, k3 := []byte("0123456789abcdef"), []byte("fedcba9876543210"), []byte("0123456789ABCDEF")
	ring := [][]byte{k3, k1}
	b, mallory := newIdentity(t), newIdentity(t)
	peers := testPeers{"b": b}
	check := peerCheck{verify: peers.verify, keys: func() [][]byte { return ring }}

	ep := Endpoint{Job: "web", Replica: 0, Node: "b", State: StateRunning, IP: "10.42.1.5", Ports: map[string]int{"http": 8080}}
	epRec := rec(kindEndpoint, "web.0.b", "b", mustJSON(t, ep))
	usage := usageRecord{Job: "web", Node: "b", Replicas: 1, CPUMillis: 10, At: planNow}
	usageRec := rec(kindUsage, "web.b", "b", mustJSON(t, usage))
	withIP := func(ip string) []byte { e := ep; e.IP = ip; return mustJSON(t, e) }
	replayed := b.sign(epRec)
	replayed.Version.WallNanos++
	plainSecret := mustJSON(t, storedData{Plain: map[string]string{"pw": "x"}, Keys: []string{"pw"}, Bytes: 3})

	tests := []struct {
		name string
		rec  state.Record
		want error // nil: accepted; errAny: refused for any reason
	}{
		{"valid job", rec(kindJob, "api", "a", storedJob(t, nil)), nil},
		{"job id differs from its body", rec(kindJob, "web", "a", storedJob(t, nil)), errAny},
		{"job that fails validation", rec(kindJob, "api", "a", storedJob(t, func(j *api.Job) { j.Task.Resources.CPUMillis = -1 })), errAny},
		{"job with a privileged driver name", rec(kindJob, "api", "a", storedJob(t, func(j *api.Job) { j.Task.Driver = "host" })), errAny},
		{"volume named ../../..", rec(kindJob, "api", "a", storedJob(t, func(j *api.Job) {
			j.Volumes[0].Name = "../../.."
			j.Task.Mounts[0].Volume = "../../.."
		})), errAny},
		{"previous task mounting ../../..", rec(kindJob, "api", "a", storedJob(t, func(j *api.Job) {
			j.Rollout.PreviousTask.Mounts = []api.Mount{{Volume: "../../..", Path: "/data"}}
		})), errAny},
		{"previous task of another driver kind", rec(kindJob, "api", "a", storedJob(t, func(j *api.Job) {
			j.Rollout.PreviousTask.Driver = "host"
		})), errAny},
		{"previous task mounting a removed volume", rec(kindJob, "api", "a", storedJob(t, func(j *api.Job) {
			j.Rollout.PreviousTask.Mounts = []api.Mount{{Volume: "old", Path: "/old"}}
		})), nil},
		{"job with an unknown field", rec(kindJob, "api", "a", []byte(strings.Replace(string(storedJob(t, nil)), `{"id":"api",`, `{"id":"api","privileged":true,`, 1))), errAny},
		{"job that is not JSON of a job", rec(kindJob, "api", "a", []byte(`[1]`)), errAny},
		{"valid secret", rec(api.KindSecret, "db", "a", sealed(t, [][]byte{k3}, api.KindSecret, "db", map[string]string{"password": "hunter2"})), nil},
		{"secret sealed under an old key still in the ring", rec(api.KindSecret, "db", "a", sealed(t, [][]byte{k1}, api.KindSecret, "db", map[string]string{"password": "x"})), nil},
		{"secret key that is a path", rec(api.KindSecret, "db", "a", sealed(t, [][]byte{k1}, api.KindSecret, "db", map[string]string{"../../etc/passwd": "x"})), errAny},
		{"secret named like a path", rec(api.KindSecret, "../db", "a", sealed(t, [][]byte{k1}, api.KindSecret, "../db", map[string]string{"pw": "x"})), errAny},
		{"secret moved to another name", rec(api.KindSecret, "other", "a", sealed(t, [][]byte{k1}, api.KindSecret, "db", map[string]string{"pw": "x"})), errAny},
		{"secret sealed under a key not in the ring", rec(api.KindSecret, "db", "a", sealed(t, [][]byte{k2}, api.KindSecret, "db", map[string]string{"pw": "x"})), errAny},
		{"secret in the clear", rec(api.KindSecret, "db", "a", plainSecret), errAny},
		{"valid config", rec(api.KindConfig, "app", "a", sealed(t, nil, api.KindConfig, "app", map[string]string{"app.yaml": "a: 1"})), nil},
		{"config key that is a path", rec(api.KindConfig, "app", "a", mustJSON(t, storedData{Plain: map[string]string{"../x": "1"}, Keys: []string{"../x"}, Bytes: 5})), errAny},
		{"config listing other keys", rec(api.KindConfig, "app", "a", mustJSON(t, storedData{Plain: map[string]string{"x": "1"}, Keys: []string{"y"}, Bytes: 2})), errAny},
		{"config without data", rec(api.KindConfig, "app", "a", []byte(`{"keys":[]}`)), errAny},
		{"endpoint signed by its node", b.sign(epRec), nil},
		{"endpoint signed by another key", mallory.sign(epRec), gossip.ErrBadSignature},
		{"endpoint unsigned", epRec, gossip.ErrBadSignature},
		{"endpoint signature replayed under a newer version", replayed, gossip.ErrBadSignature},
		{"endpoint written by another node", b.sign(rec(kindEndpoint, "web.0.b", "c", mustJSON(t, ep))), gossip.ErrBadSignature},
		{"endpoint of a node not yet seen", mallory.sign(rec(kindEndpoint, "web.0.ghost", "ghost", mustJSON(t, Endpoint{Job: "web", Node: "ghost"}))), gossip.ErrUnknownSigner},
		{"endpoint whose id names another node", b.sign(rec(kindEndpoint, "web.0.c", "b", mustJSON(t, ep))), errAny},
		{"endpoint with a bad address", b.sign(rec(kindEndpoint, "web.0.b", "b", withIP("10.42.1.5; drop"))), errAny},
		{"usage signed by its node", b.sign(usageRec), nil},
		{"usage signed by another key", mallory.sign(usageRec), gossip.ErrBadSignature},
		{"scale record", rec(kindScale, "web", "a", mustJSON(t, scaleRecord{Job: "web", Replicas: 3})), nil},
		{"scale record far over the replica limit", rec(kindScale, "web", "a", mustJSON(t, scaleRecord{Job: "web", Replicas: 1 << 30})), errAny},
		{"scale record of another job", rec(kindScale, "web", "a", mustJSON(t, scaleRecord{Job: "db"})), errAny},
		{"rollout mark", rec(kindRolloutMark, "web", "a", mustJSON(t, rolloutMark{Job: "web", Done: true})), nil},
		{"rollout mark of another job", rec(kindRolloutMark, "web", "a", mustJSON(t, rolloutMark{Job: "db"})), errAny},
		{"tombstone of another node's endpoint", state.Record{Kind: kindEndpoint, ID: "web.0.b", Version: state.Version{WallNanos: 1, Node: "c"}, Deleted: true}, nil},
		{"record of a kind this version does not know", rec("image", "sha256-x", "a", []byte(`{}`)), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := check.accept(tt.rec)
			t.Logf("%v", err)
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want == errAny && err == nil:
				t.Fatal("accepted")
			case tt.want != nil && tt.want != errAny && !errors.Is(err, tt.want):
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
}

// errAny marks a record that must be refused, for whatever reason.
var errAny = errors.New("any error")

func TestLocalEndpointAndUsageWritesAreSigned(t *testing.T) {
	id := newIdentity(t)
	store, err := state.OpenMemory(state.Options{Node: "b"})
	if err != nil {
		t.Fatal(err)
	}
	w := records{store: store, sign: func(b []byte) ([]byte, error) { return id.key.Sign(b) }}
	ep := Endpoint{Job: "web", Replica: 0, Node: "b", State: StateRunning}
	recs, err := w.write(
		change{kindEndpoint, endpointID("web", 0, "b"), ep},
		change{kindUsage, usageID("web", "b"), usageRecord{Job: "web", Node: "b", At: time.Now()}},
		change{kindJob, "web", api.Job{ID: "web"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	check := peerCheck{verify: testPeers{"b": id}.verify, keys: func() [][]byte { return nil }}
	for _, r := range recs[:2] {
		if err := check.accept(r); err != nil {
			t.Errorf("%s as written here is refused by a peer: %v", r.Key(), err)
		}
	}
	if recs[2].Sig != nil {
		t.Error("a job record was signed: any node may write jobs")
	}
	// The body stays the plain document readers decode (and compare).
	if string(recs[0].Body) != string(mustJSON(t, ep)) {
		t.Errorf("endpoint body changed by signing: %s", recs[0].Body)
	}
}

func TestRecordsStoredUnsignedAreSignedAtStart(t *testing.T) {
	id := newIdentity(t)
	store, err := state.OpenMemory(state.Options{Node: "b"})
	if err != nil {
		t.Fatal(err)
	}
	old := records{store: store}
	if _, err := old.write(
		change{kindEndpoint, endpointID("web", 0, "b"), Endpoint{Job: "web", Node: "b"}},
		change{kindEndpoint, endpointID("web", 1, "c"), Endpoint{Job: "web", Replica: 1, Node: "c"}},
	); err != nil {
		t.Fatal(err)
	}
	w := records{store: store, sign: func(b []byte) ([]byte, error) { return id.key.Sign(b) }}
	if err := w.signUnsigned("b"); err != nil {
		t.Fatal(err)
	}
	mine, _ := store.Get(kindEndpoint, endpointID("web", 0, "b"))
	if err := gossip.VerifyRecordFrom(id.id, mine); err != nil {
		t.Fatalf("own record not signed: %v", err)
	}
	// A record whose body names another node is not this node's to sign.
	if theirs, _ := store.Get(kindEndpoint, endpointID("web", 1, "c")); theirs.Sig != nil {
		t.Fatal("signed another node's record")
	}
}

func FuzzPeerRecordCheck(f *testing.F) {
	b := newIdentity(f)
	key := []byte("0123456789abcdef")
	check := peerCheck{verify: testPeers{"b": b}.verify, keys: func() [][]byte { return [][]byte{key} }}
	kinds := []string{kindJob, api.KindSecret, api.KindConfig, kindEndpoint, kindUsage, kindScale, kindRolloutMark}
	f.Add(uint8(0), "api", storedJob(f, nil), []byte(nil))
	f.Add(uint8(1), "db", sealed(f, [][]byte{key}, api.KindSecret, "db", map[string]string{"pw": "x"}), []byte(nil))
	f.Add(uint8(2), "app", sealed(f, nil, api.KindConfig, "app", map[string]string{"a": "b"}), []byte(nil))
	f.Add(uint8(3), "web.0.b", []byte(`{"job":"web","replica":0,"node":"b","ip":"10.42.0.2"}`), make([]byte, 64))
	f.Add(uint8(4), "web.b", []byte(`{"job":"web","node":"b"}`), []byte{1})
	f.Add(uint8(5), "web", []byte(`{"job":"web","replicas":2}`), []byte(nil))
	f.Add(uint8(6), "web", []byte(`{"job":"web","done":true}`), []byte(nil))
	f.Fuzz(func(t *testing.T, kind uint8, id string, body, sig []byte) {
		r := state.Record{Kind: kinds[int(kind)%len(kinds)], ID: id, Version: state.Version{WallNanos: 1, Node: "b"}, Body: body, Sig: sig}
		if r.Validate() != nil {
			return // the wire decoder never hands such a record on
		}
		if check.accept(r) != nil {
			return
		}
		// Whatever is accepted, the typed layer reads.
		switch r.Kind {
		case kindJob:
			j, err := decodeJob(r)
			if err != nil {
				t.Fatalf("accepted job does not decode: %v", err)
			}
			if err := j.Validate(); err != nil {
				t.Fatalf("accepted job does not validate: %v", err)
			}
		case api.KindSecret, api.KindConfig:
			data, _, err := openData([][]byte{key}, r.Kind, r.ID, r.Body)
			if err != nil {
				t.Fatalf("accepted %s does not open: %v", r.Kind, err)
			}
			if ferr := api.ValidateData(r.ID, api.Data{Data: data}); ferr != nil {
				t.Fatalf("accepted %s does not validate: %v", r.Kind, ferr)
			}
		case kindEndpoint, kindUsage:
			t.Fatalf("accepted a %s record without its owner's signature", r.Kind)
		}
	})
}

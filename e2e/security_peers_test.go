package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	be "encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	yamux "github.com/libp2p/go-libp2p/p2p/muxer/yamux"
	"github.com/libp2p/go-libp2p/p2p/security/noise"
	tcp "github.com/libp2p/go-libp2p/p2p/transport/tcp"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/node"
	shoalrt "github.com/shoalmesh/shoal/runtime"
	"github.com/shoalmesh/shoal/state"
)

// nsDialer dials from inside a network namespace, so a libp2p host in the
// test process reaches the agents as a machine on their network would.
type nsDialer struct{ ns string }

func (d nsDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	return shoalrt.DialInNetNS(ctx, "/run/netns/"+d.ns, network, addr)
}

// keyHolderHost is a libp2p host holding the cluster's private-network
// key, as anyone with the gossip key can make one, dialling from the hub
// namespace. It is no member.
func keyHolderHost(t *testing.T, c *Cluster) host.Host {
	t.Helper()
	raw, err := gossip.ParseKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	psk, err := gossip.DerivePSK(raw)
	if err != nil {
		t.Fatal(err)
	}
	h, err := libp2p.New(
		libp2p.NoListenAddrs,
		libp2p.Transport(tcp.NewTCPTransport, tcp.WithDialerForAddr(func(ma.Multiaddr) (tcp.ContextDialer, error) {
			return nsDialer{ns: c.hub}, nil
		})),
		libp2p.Security(noise.ID, noise.New),
		libp2p.Muxer(yamux.ID, yamux.DefaultTransport),
		libp2p.PrivateNetwork(psk),
		libp2p.DisableRelay(),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	return h
}

// pushRecords sends recs to n on the state push protocol, framed as
// agents frame them, and waits until n has applied them.
func pushRecords(t *testing.T, h host.Host, n *Node, peerID string, recs []state.Record) {
	t.Helper()
	pid, err := peer.Decode(peerID)
	if err != nil {
		t.Fatal(err)
	}
	addr, err := ma.NewMultiaddr(fmt.Sprintf("/ip4/%s/tcp/%d", n.IP, gossip.DefaultP2PPort))
	if err != nil {
		t.Fatal(err)
	}
	h.Peerstore().AddAddr(pid, addr, peerstore.TempAddrTTL)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	st, err := h.NewStream(ctx, pid, gossip.ProtocolStatePush)
	if err != nil {
		t.Fatalf("open a push stream to %s as a key holder: %v", n.Name, err)
	}
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(15 * time.Second))
	payload := state.EncodeRecords(recs)
	frame := be.BigEndian.AppendUint32(nil, uint32(len(payload)))
	frame = append(frame, payload...)
	frame = be.BigEndian.AppendUint32(frame, 0)
	if _, err := st.Write(frame); err != nil {
		t.Fatal(err)
	}
	_ = st.CloseWrite()
	_, _ = io.Copy(io.Discard, st)
}

func peerIDs(t *testing.T, n *Node) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	nodes, err := n.Client().Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range nodes {
		out[m.Name] = m.PeerID
	}
	return out
}

func jobRecord(t *testing.T, j api.Job) state.Record {
	t.Helper()
	j.ApplyDefaults()
	body, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	return state.Record{Kind: "job", ID: j.ID, Version: state.Version{WallNanos: time.Now().UnixNano(), Node: "n2"}, Body: body}
}

func hasJob(n *Node, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := n.Client().Job(ctx, id)
	var se *api.StatusError
	if errors.As(err, &se) && se.Code == 404 {
		return false, nil
	}
	return err == nil, err
}

func TestKeyHolderCannotForgeRecords(t *testing.T) {
	c := startCluster(t, 2)
	n1 := c.Nodes[0]
	ctx := context.Background()
	if _, err := n1.Client().PutJob(ctx, webJob("web", 0)); err != nil {
		t.Fatal(err)
	}
	ids := peerIDs(t, n1)
	mallory := keyHolderHost(t, c)

	// n2's endpoint, signed with the key holder's own key: it would send
	// web's traffic to an address of the key holder's choosing.
	ep, _ := json.Marshal(map[string]any{"job": "web", "replica": 0, "node": "n2", "state": "running", "ip": "10.99.0.66", "ports": map[string]int{"http": 8080}})
	forged := state.Record{Kind: "endpoint", ID: "web.0.n2", Version: state.Version{WallNanos: time.Now().UnixNano(), Node: "n2"}, Body: ep}
	forged.Sig, _ = mallory.Peerstore().PrivKey(mallory.ID()).Sign(forged.SignedBytes())
	unsigned := forged
	unsigned.ID, unsigned.Sig = "web.1.n2", nil
	unsigned.Body, _ = json.Marshal(map[string]any{"job": "web", "replica": 1, "node": "n2", "state": "running", "ip": "10.99.0.66"})
	// A volume named ../../.. would be made and chmod'ed outside the data
	// directory.
	evil := webJob("evil", 1)
	evil.Volumes = []api.Volume{{Name: "../../..", Type: api.VolumeEphemeral}}
	evil.Task.Mounts = []api.Mount{{Volume: "../../..", Path: "/host"}}
	// A record whose id is not its body's.
	renamed := jobRecord(t, webJob("other", 0))
	renamed.ID = "renamed"
	// And one a node would accept from any peer: the push itself works.
	fine := jobRecord(t, webJob("peer-ok", 0))

	pushRecords(t, mallory, n1, ids["n1"], []state.Record{forged, unsigned, jobRecord(t, evil), renamed, fine})

	Eventually(t, 15*time.Second, "the valid record reaches both nodes", func() (bool, string) {
		for _, n := range c.Nodes {
			if ok, err := hasJob(n, "peer-ok"); !ok {
				return false, fmt.Sprintf("%s: %v", n.Name, err)
			}
		}
		return true, ""
	})
	for _, n := range c.Nodes {
		for _, id := range []string{"evil", "renamed", "other"} {
			if ok, _ := hasJob(n, id); ok {
				t.Errorf("%s stored the refused job %s", n.Name, id)
			}
		}
		st, err := n.Client().Job(ctx, "web")
		if err != nil {
			t.Fatal(err)
		}
		for _, al := range st.Allocations {
			if al.IP == "10.99.0.66" {
				t.Errorf("%s lists the forged endpoint: %+v", n.Name, al)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(n1.DataDir, "volumes", "ephemeral")); err == nil {
		entries, _ := os.ReadDir(filepath.Join(n1.DataDir, "volumes", "ephemeral"))
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "evil") {
				t.Errorf("a task of the refused job got volumes: %s", e.Name())
			}
		}
	}
	// Counted and logged where they arrived.
	log := n1.Log()
	if !strings.Contains(log, "dropped a record from a peer") {
		t.Errorf("n1 did not log the dropped records:\n%s", tail(log, 30))
	}
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, "dropped a record") {
			t.Log(line)
		}
	}
}

func TestGossipKeyRotationKeepsSecretsAndRestarts(t *testing.T) {
	c := startCluster(t, 2)
	n1, n2 := c.Nodes[0], c.Nodes[1]
	ctx := context.Background()
	if _, err := n1.Client().PutData(ctx, api.KindSecret, "db", api.Data{Data: map[string]string{"password": "hunter2"}}); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 15*time.Second, "the secret at n2", func() (bool, string) {
		_, err := n2.Client().GetData(ctx, api.KindSecret, "db")
		return err == nil, fmt.Sprint(err)
	})
	newKey := make([]byte, 32)
	_, _ = rand.Read(newKey)
	newFile := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(newFile, []byte(base64.StdEncoding.EncodeToString(newKey)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	oldFile := c.Creds.Path(node.GossipKeyFile)
	for _, step := range [][]string{
		{"keys", "install", newFile},
		{"keys", "use", newFile},
		{"keys", "remove", oldFile},
	} {
		out, err := n2.Shoal(step...)
		if err != nil {
			t.Fatalf("shoal %s: %v\n%s", strings.Join(step, " "), err, out)
		}
		t.Logf("shoal %s:\n%s", strings.Join(step, " "), out)
	}
	out, err := n1.Shoal("keys", "list")
	if err != nil || strings.Count(out, "\n") != 2 || !strings.Contains(out, gossip.KeyID(newKey)+"  2/2") {
		t.Fatalf("keys list after rotation: %v\n%s", err, out)
	}
	for _, n := range c.Nodes {
		if _, err := n.Client().GetData(ctx, api.KindSecret, "db"); err != nil {
			t.Errorf("%s cannot open the secret after rotation: %v", n.Name, err)
		}
		if raw, _ := os.ReadFile(filepath.Join(n.DataDir, "serf.keyring")); strings.Contains(string(raw), c.Key) {
			t.Errorf("%s's saved keyring still holds the removed key", n.Name)
		}
	}
	// n2 restarts with the old key still in its key file: the saved
	// keyring and network key bring it back.
	if err := n2.Terminate(); err != nil {
		t.Fatalf("stop n2: %v", err)
	}
	n2.Start()
	waitStatuses(t, c.Nodes, map[string]string{"n1": "alive", "n2": "alive"}, 30*time.Second)
	if _, err := n1.Client().PutJob(ctx, webJob("after-rotation", 0)); err != nil {
		t.Fatal(err)
	}
	Eventually(t, 15*time.Second, "a write at n1 reaches the restarted n2", func() (bool, string) {
		ok, err := hasJob(n2, "after-rotation")
		return ok, fmt.Sprint(err)
	})
	if _, err := n2.Client().GetData(ctx, api.KindSecret, "db"); err != nil {
		t.Errorf("restarted n2 cannot open the secret: %v", err)
	}
}

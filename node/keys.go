package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
)

// Gossip key rotation through the API. serf carries each step to every
// member (gossip.Cluster.InstallKey, UseKey, RemoveKey); this node adds
// what serf does not know about: secrets sealed under a key. After `use`
// the node that served the request seals every secret again under the new
// primary key (one writer, like any API write), and `remove` first does
// the same and then refuses while a secret is still sealed under the key
// being removed, so that removing a key never strands a secret.
//
// The key material travels only in request bodies (never in a path, a
// log line or a response); responses name keys by gossip.KeyID.

// KeyRequest is the body of POST /v1/keys (install), /v1/keys/use and
// /v1/keys/remove.
type KeyRequest struct {
	// Key is the gossip key, base64 (as `shoal keygen` writes it).
	Key string `json:"key"`
}

// KeyInfo is one gossip key as the cluster holds it.
type KeyInfo struct {
	ID string `json:"id"`
	// Installed and Primary count the members that hold the key and
	// that encrypt with it.
	Installed int `json:"installed"`
	Primary   int `json:"primary"`
	// Secrets counts the secrets sealed under the key, in this node's
	// store.
	Secrets int `json:"secrets"`
}

// KeysResponse answers every /v1/keys request: the keyring after the
// operation.
type KeysResponse struct {
	Keys []KeyInfo `json:"keys"`
	// Nodes is how many members were asked, Responded how many answered.
	Nodes     int `json:"nodes"`
	Responded int `json:"responded"`
	// Messages maps a member to what it reported, if anything.
	Messages map[string]string `json:"messages,omitempty"`
	// Resealed counts the secrets this request sealed again under the
	// primary key.
	Resealed int `json:"resealed,omitempty"`
	// Unopenable names secrets no key of this node's keyring opens.
	Unopenable []string `json:"unopenable,omitempty"`
}

// resealMu serialises re-sealing, so two key requests on one node do not
// write the same secrets twice.
var resealMu sync.Mutex

func (a *Agent) handleListKeys(w http.ResponseWriter, _ *http.Request) {
	a.answerKeys(w, KeysResponse{})
}

func (a *Agent) handleInstallKey(w http.ResponseWriter, r *http.Request) {
	key, ok := readKey(w, r)
	if !ok {
		return
	}
	res, err := a.cluster.InstallKey(key)
	if err != nil {
		writeKeyError(w, err, res)
		return
	}
	a.log.Info("gossip key installed", "key_id", gossip.KeyID(key), "nodes", res.Nodes)
	a.answerKeys(w, KeysResponse{})
}

func (a *Agent) handleUseKey(w http.ResponseWriter, r *http.Request) {
	key, ok := readKey(w, r)
	if !ok {
		return
	}
	res, err := a.cluster.UseKey(key)
	if err != nil {
		writeKeyError(w, err, res)
		return
	}
	a.log.Info("gossip key made primary", "key_id", gossip.KeyID(key), "nodes", res.Nodes)
	n, stuck, err := a.resealSecrets()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "the new key is primary, but sealing secrets again failed (retry shoal keys use): %v", err)
		return
	}
	a.answerKeys(w, KeysResponse{Resealed: n, Unopenable: stuck})
}

func (a *Agent) handleRemoveKey(w http.ResponseWriter, r *http.Request) {
	key, ok := readKey(w, r)
	if !ok {
		return
	}
	keys := a.gossipKeys()
	if len(keys) > 0 && string(keys[0]) == string(key) {
		writeError(w, http.StatusConflict, "key %s is the primary key: make another key primary first (shoal keys use)", gossip.KeyID(key))
		return
	}
	n, _, err := a.resealSecrets()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "seal secrets under the primary key before removing %s: %v", gossip.KeyID(key), err)
		return
	}
	if under := secretsUnder(a.store, key); len(under) > 0 {
		writeError(w, http.StatusConflict, "secrets still sealed under key %s: %s; they could not be sealed again (written meanwhile, or unreadable here); retry, or rewrite them",
			gossip.KeyID(key), strings.Join(under, ", "))
		return
	}
	res, err := a.cluster.RemoveKey(key)
	if err != nil {
		writeKeyError(w, err, res)
		return
	}
	a.log.Info("gossip key removed", "key_id", gossip.KeyID(key), "nodes", res.Nodes)
	a.answerKeys(w, KeysResponse{Resealed: n})
}

// readKey decodes and checks the key of a request, answering the client
// itself when it is unusable.
func readKey(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	var req KeyRequest
	if !decodeJSON(w, r, maxSmallBody, &req) {
		return nil, false
	}
	key, err := gossip.ParseKey(strings.TrimSpace(req.Key))
	if err != nil {
		writeError(w, http.StatusBadRequest, "key: %v", err)
		return nil, false
	}
	return key, true
}

func writeKeyError(w http.ResponseWriter, err error, res gossip.KeyResult) {
	if errors.Is(err, gossip.ErrNoKeyring) {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	msg := err.Error()
	if len(res.Messages) > 0 {
		var parts []string
		for _, node := range slices.Sorted(maps.Keys(res.Messages)) {
			parts = append(parts, node+": "+res.Messages[node])
		}
		msg += " (" + strings.Join(parts, "; ") + ")"
	}
	writeError(w, http.StatusBadGateway, "%s", msg)
}

// answerKeys writes the keyring as the members report it.
func (a *Agent) answerKeys(w http.ResponseWriter, out KeysResponse) {
	list, err := a.cluster.ListKeys()
	if errors.Is(err, gossip.ErrNoKeyring) {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	out.Nodes, out.Responded = list.Nodes, list.Responded
	out.Messages = list.Messages
	sealed := secretsByKey(a.store)
	ids := map[string]bool{}
	for id := range list.Installed {
		ids[id] = true
	}
	for id := range sealed {
		ids[id] = true
	}
	for id := range ids {
		out.Keys = append(out.Keys, KeyInfo{ID: id, Installed: list.Installed[id], Primary: list.Primary[id], Secrets: sealed[id]})
	}
	sort.Slice(out.Keys, func(i, j int) bool {
		if out.Keys[i].Primary != out.Keys[j].Primary {
			return out.Keys[i].Primary > out.Keys[j].Primary
		}
		return out.Keys[i].ID < out.Keys[j].ID
	})
	if err != nil && len(out.Messages) == 0 {
		out.Messages = map[string]string{"": err.Error()}
	}
	writeJSON(w, http.StatusOK, out)
}

// secretsByKey counts the stored secrets by the id of the key they are
// sealed under ("" for those sealed before keys had ids).
func secretsByKey(st recordStore) map[string]int {
	out := map[string]int{}
	for _, rec := range st.List(api.KindSecret) {
		var body storedData
		if json.Unmarshal(rec.Body, &body) == nil && body.Sealed != nil {
			out[body.KeyID]++
		}
	}
	return out
}

// secretsUnder names the stored secrets that only key may open: sealed
// under its id, or sealed without an id and opened by it.
func secretsUnder(st recordStore, key []byte) []string {
	id := gossip.KeyID(key)
	var out []string
	for _, rec := range st.List(api.KindSecret) {
		var body storedData
		if json.Unmarshal(rec.Body, &body) != nil || body.Sealed == nil {
			continue
		}
		if body.KeyID == id {
			out = append(out, rec.ID)
			continue
		}
		if body.KeyID == "" {
			if _, err := openWith(key, api.KindSecret, rec.ID, body.Sealed); err == nil {
				out = append(out, rec.ID)
			}
		}
	}
	return out
}

// resealSecrets seals every stored secret not under the primary key
// again under it; see resealStored.
func (a *Agent) resealSecrets() (int, []string, error) {
	resealMu.Lock()
	defer resealMu.Unlock()
	keys := a.gossipKeys()
	n, stuck, err := resealStored(a.records, keys)
	if n > 0 {
		a.log.Info("secrets sealed under the primary gossip key", "key_id", gossip.KeyID(keys[0]), "secrets", n)
	}
	if len(stuck) > 0 {
		a.log.Warn("secrets that no gossip key of this node opens", "secrets", strings.Join(stuck, ","))
	}
	return n, stuck, err
}

// resealStored seals every stored secret that is not under keys[0] (the
// primary) again under it, and returns how many it rewrote and the sorted
// names of those no key opens. A secret written by someone else meanwhile
// is left alone: its writer sealed it, and a later call picks it up if
// needed.
func resealStored(recs records, keys [][]byte) (int, []string, error) {
	if len(keys) == 0 {
		return 0, nil, nil
	}
	primary := gossip.KeyID(keys[0])
	var stuck []string
	n := 0
	for _, rec := range recs.store.List(api.KindSecret) {
		var body storedData
		if json.Unmarshal(rec.Body, &body) != nil || body.Sealed == nil || body.KeyID == primary {
			continue
		}
		data, _, err := openData(keys, api.KindSecret, rec.ID, rec.Body)
		if err != nil {
			stuck = append(stuck, rec.ID)
			continue
		}
		raw, err := sealData(keys, api.KindSecret, rec.ID, api.Data{Data: data})
		if err != nil {
			return n, stuck, fmt.Errorf("seal secret %s: %w", rec.ID, err)
		}
		// Compare-and-set on the version read: a user's write since then
		// wins and is not overwritten with older data.
		if cur, ok := recs.store.Get(api.KindSecret, rec.ID); !ok || cur.Version != rec.Version {
			continue
		}
		if _, err := recs.write(change{api.KindSecret, rec.ID, json.RawMessage(raw)}); err != nil {
			return n, stuck, fmt.Errorf("store secret %s: %w", rec.ID, err)
		}
		n++
	}
	slices.Sort(stuck)
	return n, stuck, nil
}

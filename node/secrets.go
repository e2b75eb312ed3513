package node

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"

	"github.com/shoalmesh/shoal/api"
	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/state"
)

// Secrets and configs are replicated records like jobs: written at any
// node, on every node. A secret's data is sealed with AES-GCM under a key
// derived from the primary gossip key, and names that key by its id, so
// state files and sync traffic carry no plaintext (dev mode, without a
// gossip key, stores it in the clear) and any key of the keyring opens it
// during a rotation (see keys.go); the API never returns a secret's
// values. A replica gets them as read-only files, written when it starts
// under /run/shoal (tmpfs on most hosts).

// storedData is the record body of a secret or config.
type storedData struct {
	// Sealed is nonce||ciphertext of the JSON of Data; Plain holds the
	// data of configs, and of secrets in dev mode.
	Sealed []byte `json:"sealed,omitempty"`
	// KeyID names the gossip key Sealed is sealed under
	// (gossip.KeyID); empty in records written before key rotation
	// existed, which are opened by trying every key.
	KeyID string            `json:"key_id,omitempty"`
	Plain map[string]string `json:"plain,omitempty"`
	Keys  []string          `json:"keys"`
	Bytes int               `json:"bytes"`
}

// secretsAEAD derives the AEAD that seals secrets from one gossip key.
func secretsAEAD(gossipKey []byte) (cipher.AEAD, error) {
	key, err := hkdf.Key(sha256.New, gossipKey, nil, "shoal secrets at rest v1", 32)
	if err != nil {
		return nil, fmt.Errorf("derive secrets key: %w", err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("secrets cipher: %w", err)
	}
	return cipher.NewGCM(block)
}

// gossipKeys are the keys of this node's gossip keyring, primary first;
// nil in dev mode.
func (a *Agent) gossipKeys() [][]byte {
	if a.cluster == nil {
		return nil
	}
	return a.cluster.Keys()
}

func (a *Agent) seal(kind, name string, d api.Data) ([]byte, error) {
	return sealData(a.gossipKeys(), kind, name, d)
}

// sealData encodes a secret or config as stored: a secret sealed under
// keys[0] (the primary gossip key), a config, or anything without keys,
// in the clear.
func sealData(keys [][]byte, kind, name string, d api.Data) ([]byte, error) {
	body := storedData{Keys: d.SortedKeys()}
	for k, v := range d.Data {
		body.Bytes += len(k) + len(v)
	}
	if kind == api.KindConfig || len(keys) == 0 {
		body.Plain = d.Data
		return json.Marshal(body)
	}
	aead, err := secretsAEAD(keys[0])
	if err != nil {
		return nil, err
	}
	plain, err := json.Marshal(d.Data)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	// The name is authenticated: a sealed value cannot be moved to another
	// secret.
	body.Sealed = aead.Seal(nonce, nonce, plain, []byte(kind+"/"+name))
	body.KeyID = gossip.KeyID(keys[0])
	return json.Marshal(body)
}

func (a *Agent) openData(kind, name string, raw []byte) (map[string]string, storedData, error) {
	return openData(a.gossipKeys(), kind, name, raw)
}

// openData decodes a stored secret or config and opens it with whichever
// of keys it was sealed under.
func openData(keys [][]byte, kind, name string, raw []byte) (map[string]string, storedData, error) {
	var body storedData
	if err := json.Unmarshal(raw, &body); err != nil {
		return nil, body, fmt.Errorf("decode %s %s: %w", kind, name, err)
	}
	if body.Sealed == nil {
		return body.Plain, body, nil
	}
	if len(keys) == 0 {
		return nil, body, fmt.Errorf("%s %s is sealed and this node has no gossip key to open it", kind, name)
	}
	var lastErr error
	for _, key := range keys {
		if body.KeyID != "" && body.KeyID != gossip.KeyID(key) {
			continue
		}
		data, err := openWith(key, kind, name, body.Sealed)
		if err == nil {
			return data, body, nil
		}
		lastErr = err
	}
	if lastErr == nil {
		return nil, body, fmt.Errorf("%s %s is sealed under gossip key %s, which is not in this node's keyring", kind, name, body.KeyID)
	}
	return nil, body, fmt.Errorf("%s %s: cannot open (written with another gossip key?): %w", kind, name, lastErr)
}

func openWith(key []byte, kind, name string, sealed []byte) (map[string]string, error) {
	aead, err := secretsAEAD(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, errors.New("sealed data too short")
	}
	nonce, ct := sealed[:aead.NonceSize()], sealed[aead.NonceSize():]
	plain, err := aead.Open(nil, nonce, ct, []byte(kind+"/"+name))
	if err != nil {
		return nil, err
	}
	var data map[string]string
	if err := json.Unmarshal(plain, &data); err != nil {
		return nil, fmt.Errorf("decode sealed data: %w", err)
	}
	return data, nil
}

func (a *Agent) handlePutData(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { a.putData(w, r, kind) }
}

func (a *Agent) putData(w http.ResponseWriter, r *http.Request, kind string) {
	name := r.PathValue("name")
	var d api.Data
	if !decodeJSON(w, r, api.MaxDataBytes*2+maxSmallBody, &d) {
		return
	}
	if err := api.ValidateData(name, d); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	raw, err := a.seal(kind, name, d)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "seal %s: %v", kind, err)
		return
	}
	rec, err := a.store.Write(kind, name, raw, false)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "store %s: %v", kind, err)
		return
	}
	a.sync.Publish([]state.Record{rec})
	info, _ := a.dataInfo(kind, rec, false)
	writeJSON(w, http.StatusOK, info)
}

func (a *Agent) dataInfo(kind string, rec state.Record, withValues bool) (api.DataInfo, error) {
	data, body, err := a.openData(kind, rec.ID, rec.Body)
	info := api.DataInfo{Name: rec.ID, Keys: body.Keys, Bytes: body.Bytes, Version: formatVersion(rec.Version)}
	if withValues && kind == api.KindConfig {
		info.Values = data
	}
	return info, err
}

func (a *Agent) handleListData(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { a.listData(w, kind) }
}

func (a *Agent) listData(w http.ResponseWriter, kind string) {
	out := []api.DataInfo{}
	for _, rec := range a.store.List(kind) {
		info, _ := a.dataInfo(kind, rec, false)
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func (a *Agent) handleGetData(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { a.getData(w, r.PathValue("name"), kind) }
}

func (a *Agent) getData(w http.ResponseWriter, name, kind string) {
	rec, ok := a.store.Get(kind, name)
	if !ok {
		writeError(w, http.StatusNotFound, "no %s named %q", kind, name)
		return
	}
	info, err := a.dataInfo(kind, rec, true)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "%v", err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (a *Agent) handleDeleteData(kind string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { a.deleteData(w, r.PathValue("name"), kind) }
}

func (a *Agent) deleteData(w http.ResponseWriter, name, kind string) {
	if _, ok := a.store.Get(kind, name); !ok {
		writeError(w, http.StatusNotFound, "no %s named %q", kind, name)
		return
	}
	rec, err := a.store.Delete(kind, name)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "delete %s: %v", kind, err)
		return
	}
	a.sync.Publish([]state.Record{rec})
	writeJSON(w, http.StatusOK, api.DeleteResponse{ID: name, Deleted: true, Version: formatVersion(rec.Version)})
}

// openStoredData returns the data of a stored secret or config, for the
// files a replica mounts.
func (a *Agent) openStoredData(kind, name string) (map[string]string, error) {
	rec, ok := a.store.Get(kind, name)
	if !ok {
		return nil, fmt.Errorf("%s %q does not exist (create it with shoal %s set)", kind, name, kind)
	}
	data, _, err := a.openData(kind, name, rec.Body)
	return data, err
}

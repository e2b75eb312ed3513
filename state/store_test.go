package state

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestWriteSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", "state.db")
	s, err := Open(path, Options{Node: "a"})
	if err != nil {
		t.Fatal(err)
	}
	w, err := s.Write("job", "web", []byte(`{"image":"nginx"}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete("job", "gone"); err != nil {
		t.Fatal(err)
	}
	before := s.Digest()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openFile(t, path, "a", nil)
	got, ok := s.Get("job", "web")
	if !ok || !sameRecord(got, w) {
		t.Fatalf("after reopen Get = %+v, %v; want %+v", got, ok, w)
	}
	if s.Digest() != before {
		t.Fatal("digest changed across reopen: the tombstone or a record was lost")
	}
	if st := s.Stats(); st != (Stats{Live: 1, Tombstones: 1}) {
		t.Fatalf("stats after reopen %+v", st)
	}
}

func TestWriteAfterRestartWinsEvenIfClockWentBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	clock := newFakeClock()
	s, err := Open(path, Options{Node: "a", Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.Write("job", "web", []byte(`{"v":1}`), false)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()

	clock.Advance(-time.Hour)
	s = openFile(t, path, "a", clock.Now)
	second, err := s.Write("job", "other", []byte(`{"v":2}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if !first.Version.Less(second.Version) {
		t.Fatalf("write after restart %v is not newer than %v from before", second.Version, first.Version)
	}
}

func TestWriteStampsNodeAndNewerVersions(t *testing.T) {
	s := openMemory(t, "node-a", newFakeClock().Now)
	r1, err := s.Write("job", "web", []byte(`{}`), false)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := s.Write("job", "web", []byte(`{"v":2}`), false)
	if err != nil {
		t.Fatal(err)
	}
	if r1.Version.Node != "node-a" || !r1.Version.Less(r2.Version) {
		t.Fatalf("versions %v then %v", r1.Version, r2.Version)
	}
	if got, _ := s.Get("job", "web"); !sameRecord(got, r2) {
		t.Fatalf("Get = %+v, want the second write", got)
	}
}

func TestWriteRejectsInvalidInput(t *testing.T) {
	s := openMemory(t, "a", nil)
	for _, tt := range []struct{ kind, id, body string }{
		{"", "web", `{}`},
		{"job", "", `{}`},
		{"job", "web", `not json`},
	} {
		if _, err := s.Write(tt.kind, tt.id, []byte(tt.body), false); !errors.Is(err, ErrInvalidRecord) {
			t.Errorf("Write(%q, %q, %q) = %v, want ErrInvalidRecord", tt.kind, tt.id, tt.body, err)
		}
	}
}

func TestWriteCopiesTheCallersBody(t *testing.T) {
	s := openMemory(t, "a", nil)
	body := []byte(`{"v":1}`)
	if _, err := s.Write("job", "web", body, false); err != nil {
		t.Fatal(err)
	}
	copy(body, `{"v":2}`)
	if got, _ := s.Get("job", "web"); string(got.Body) != `{"v":1}` {
		t.Fatalf("stored body changed with the caller's slice: %s", got.Body)
	}
}

func TestLocalWriteWinsOverEverythingSeenBefore(t *testing.T) {
	clock := newFakeClock()
	s := openMemory(t, "a", clock.Now)
	// As fast as the drift bound lets a peer be.
	future := Record{Kind: "job", ID: "web", Version: Version{WallNanos: clock.Now().Add(DefaultMaxClockDrift).UnixNano(), Node: "z"}, Body: []byte(`{}`)}
	if _, err := s.Put(future); err != nil {
		t.Fatal(err)
	}
	del, err := s.Delete("job", "web")
	if err != nil {
		t.Fatal(err)
	}
	if !future.Version.Less(del.Version) {
		t.Fatalf("delete %v lost to a record from a fast clock %v", del.Version, future.Version)
	}
	if _, ok := s.Get("job", "web"); ok {
		t.Fatal("record still visible after delete")
	}
}

func TestApplyReturnsOnlyRecordsThatChangedTheStore(t *testing.T) {
	clock := newFakeClock()
	s := openMemory(t, "a", clock.Now)
	v := func(wall int64, node string) Version {
		return Version{WallNanos: clock.Now().UnixNano() + wall, Node: node}
	}
	held := Record{Kind: "job", ID: "web", Version: v(10, "b"), Body: []byte(`{"v":1}`)}
	if _, err := s.Put(held); err != nil {
		t.Fatal(err)
	}
	older := Record{Kind: "job", ID: "web", Version: v(9, "b"), Body: []byte(`{"v":0}`)}
	newer := Record{Kind: "job", ID: "web", Version: v(11, "c"), Body: []byte(`{"v":2}`)}
	newest := Record{Kind: "job", ID: "web", Version: v(12, "c"), Deleted: true}
	fresh := Record{Kind: "job", ID: "db", Version: v(1, "c"), Body: []byte(`{}`)}

	changed, err := s.Apply([]Record{older, held, fresh, newer, newest, newer})
	if err != nil {
		t.Fatal(err)
	}
	want := []Record{fresh, newest}
	if len(changed) != len(want) {
		t.Fatalf("changed = %+v, want %+v", changed, want)
	}
	for i := range want {
		if !sameRecord(changed[i], want[i]) {
			t.Fatalf("changed[%d] = %+v, want %+v", i, changed[i], want[i])
		}
	}
	if again, _ := s.Apply([]Record{older, held, fresh, newer, newest}); len(again) != 0 {
		t.Fatalf("re-applying the same records changed %+v", again)
	}
}

func TestApplyAppliesNothingIfOneRecordIsInvalid(t *testing.T) {
	s := openMemory(t, "a", nil)
	good := Record{Kind: "job", ID: "web", Version: Version{WallNanos: 1, Node: "b"}, Body: []byte(`{}`)}
	bad := Record{Kind: "job", ID: "x", Version: Version{WallNanos: 1}} // no node
	if _, err := s.Apply([]Record{good, bad}); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("got %v, want ErrInvalidRecord", err)
	}
	if _, ok := s.Get("job", "web"); ok {
		t.Fatal("the valid record of a rejected batch was applied")
	}
}

func TestListExcludesTombstonesAndSortsByID(t *testing.T) {
	s := openMemory(t, "a", nil)
	for _, id := range []string{"c", "a", "d", "b"} {
		if _, err := s.Write("job", id, []byte(`{}`), false); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Write("endpoint", "x", []byte(`{}`), false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Delete("job", "b"); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, r := range s.List("job") {
		ids = append(ids, r.ID)
	}
	if fmt.Sprint(ids) != "[a c d]" {
		t.Fatalf("List(job) ids = %v, want [a c d]", ids)
	}
	if _, ok := s.Get("job", "b"); ok {
		t.Fatal("Get returned a deleted record")
	}
}

func TestDeleteLeavesATombstoneForPeers(t *testing.T) {
	a, b := openMemory(t, "a", nil), openMemory(t, "b", nil)
	w, err := a.Write("job", "web", []byte(`{}`), false)
	if err != nil {
		t.Fatal(err)
	}
	b.Put(w)
	del, err := a.Delete("job", "web")
	if err != nil {
		t.Fatal(err)
	}
	if !del.Deleted || del.Body != nil {
		t.Fatalf("delete returned %+v, want a bodiless tombstone", del)
	}
	recs := a.BucketRecords(BucketOf("job", "web"))
	if len(recs) != 1 || !recs[0].Deleted {
		t.Fatalf("bucket holds %+v, want the tombstone", recs)
	}
	if _, err := b.Apply(recs); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Get("job", "web"); ok {
		t.Fatal("peer still sees the record after receiving the tombstone")
	}
}

func TestGCDropsOnlyExpiredTombstones(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	clock := newFakeClock()
	s, err := Open(path, Options{Node: "a", Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	mustWrite := func(id string, deleted bool) {
		t.Helper()
		if _, err := s.Write("job", id, []byte(`{}`), deleted); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("old-live", false)
	mustWrite("old-dead", true)
	clock.Advance(2 * time.Hour)
	mustWrite("new-dead", true)
	clock.Advance(30 * time.Minute)

	n, err := s.GC(clock.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("GC dropped %d tombstones, want 1", n)
	}
	if _, err := s.GC(clock.Now(), 0); err == nil {
		t.Fatal("GC accepted a zero expiry")
	}
	s.Close()

	s = openFile(t, path, "a", clock.Now)
	if st := s.Stats(); st != (Stats{Live: 1, Tombstones: 1}) {
		t.Fatalf("after GC and reopen: %+v, want 1 live and the young tombstone", st)
	}
	for _, r := range s.BucketRecords(BucketOf("job", "old-dead")) {
		if r.ID == "old-dead" {
			t.Fatal("collected tombstone came back after reopen")
		}
	}
}

func TestApplyDoesNotResurrectCollectedTombstones(t *testing.T) {
	clock := newFakeClock()
	s, err := OpenMemory(Options{Node: "a", Clock: clock.Now, TombstoneExpiry: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	at := func(ago time.Duration) Version {
		return Version{WallNanos: clock.Now().Add(-ago).UnixNano(), Node: "b"}
	}
	live := Record{Kind: "job", ID: "web", Version: at(3 * time.Hour), Body: []byte(`{}`)}
	if _, err := s.Put(live); err != nil {
		t.Fatal(err)
	}
	// An expired tombstone for an unknown key is not stored.
	ghost := Record{Kind: "job", ID: "ghost", Version: at(2 * time.Hour), Deleted: true}
	if changed, _ := s.Put(ghost); changed {
		t.Fatal("an expired tombstone for an unknown record was stored")
	}
	// An expired tombstone newer than a live record still deletes it,
	// and leaves no tombstone behind.
	kill := Record{Kind: "job", ID: "web", Version: at(2 * time.Hour), Deleted: true}
	if changed, _ := s.Put(kill); !changed {
		t.Fatal("an expired tombstone did not delete the older live record")
	}
	if st := s.Stats(); st != (Stats{}) {
		t.Fatalf("store holds %+v, want nothing", st)
	}
	// A young tombstone is kept.
	young := Record{Kind: "job", ID: "db", Version: at(time.Minute), Deleted: true}
	if changed, _ := s.Put(young); !changed {
		t.Fatal("a young tombstone was dropped")
	}
}

func TestOpenFailsWhileAnotherStoreHoldsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	openFile(t, path, "a", nil)
	start := time.Now()
	if _, err := Open(path, Options{Node: "a", LockTimeout: 50 * time.Millisecond}); err == nil {
		t.Fatal("second Open of a held file succeeded")
	}
	if time.Since(start) > 5*time.Second {
		t.Fatal("Open waited far past its lock timeout")
	}
}

func TestOpenRejectsACorruptRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.db")
	s := openFile(t, path, "a", nil)
	if _, err := s.Write("job", "web", []byte(`{}`), false); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(recordsBucket).Put(diskKey("job", "web"), []byte{1, 2, 3})
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{Node: "a"}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Open of a corrupt file = %v, want ErrMalformed", err)
	}
}

func TestOpenRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(filepath.Join(dir, "s.db"), Options{}); err == nil {
		t.Error("Open without a node name succeeded")
	}
	if _, err := Open("", Options{Node: "a"}); err == nil {
		t.Error("Open with an empty path succeeded")
	}
}

func TestWritesAfterCloseFail(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "state.db"), "a", nil)
	s.Close()
	if _, err := s.Write("job", "web", nil, false); !errors.Is(err, ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
	if _, err := s.Apply(sampleRecords()); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
	if _, err := s.GC(time.Now(), time.Hour); !errors.Is(err, ErrClosed) {
		t.Errorf("GC after Close = %v, want ErrClosed", err)
	}
}

func TestConcurrentUseIsSafe(t *testing.T) {
	s := openFile(t, filepath.Join(t.TempDir(), "state.db"), "a", nil)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 25 {
				id := fmt.Sprintf("w%d-%d", w, i)
				if _, err := s.Write("job", id, []byte(`{}`), i%5 == 0); err != nil {
					t.Error(err)
					return
				}
				s.Get("job", id)
				s.List("job")
				s.Digest()
				s.BucketRecords(i)
			}
		})
	}
	wg.Wait()
	if st := s.Stats(); st.Live+st.Tombstones != 100 {
		t.Fatalf("stats %+v, want 100 records", st)
	}
}

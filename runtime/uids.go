package runtime

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// UIDRange is a range of user ids the exec driver hands out, one per
// task, used as the task's group id too. Tasks with distinct users cannot
// signal, trace or read the /proc files of each other's processes, nor
// each other's working directories.
type UIDRange struct {
	First uint32
	Count uint32
}

// DefaultTaskUIDs is 2000000000-2000065535: far above the ranges
// distributions hand to people (1000-60000) and to rootless containers in
// /etc/subuid (from 100000 up, 65536 per user), inside the block systemd
// leaves unused (0x70000000-0x7FFDFFFF), and below 2^31, which some tools
// mishandle.
var DefaultTaskUIDs = UIDRange{First: 2_000_000_000, Count: 65536}

// maxTaskUID is the largest uid the kernel allows ((uid_t)-1 means
// "unset").
const maxTaskUID = 1<<32 - 2

// String formats r as FIRST-LAST, the form ParseUIDRange reads.
func (r UIDRange) String() string {
	return fmt.Sprintf("%d-%d", r.First, uint64(r.First)+uint64(r.Count)-1)
}

// ParseUIDRange reads FIRST-LAST (inclusive), e.g. "2000000000-2000065535".
func ParseUIDRange(s string) (UIDRange, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return UIDRange{}, fmt.Errorf("%w: uid range %q: want FIRST-LAST", ErrInvalidSpec, s)
	}
	first, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 32)
	last, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 32)
	if err1 != nil || err2 != nil || last < first {
		return UIDRange{}, fmt.Errorf("%w: uid range %q: want FIRST-LAST, two uids with FIRST <= LAST", ErrInvalidSpec, s)
	}
	r := UIDRange{First: uint32(first), Count: uint32(min(last-first+1, 1<<32-1))}
	return r, r.Validate()
}

// Validate reports a range that could hand out root, nobody or an
// invalid uid.
func (r UIDRange) Validate() error {
	last := uint64(r.First) + uint64(r.Count) - 1
	switch {
	case r.Count == 0:
		return fmt.Errorf("%w: task uid range: empty", ErrInvalidSpec)
	case r.First == 0:
		return fmt.Errorf("%w: task uid range %s: must not contain 0 (root)", ErrInvalidSpec, r)
	case last > maxTaskUID:
		return fmt.Errorf("%w: task uid range %s: the largest uid is %d", ErrInvalidSpec, r, uint64(maxTaskUID))
	case r.First <= nobody && uint64(nobody) <= last:
		return fmt.Errorf("%w: task uid range %s: must not contain %d (nobody, shared by many)", ErrInvalidSpec, r, nobody)
	}
	return nil
}

// uidClaimsDir holds one file per task uid in use on this machine, named
// by the uid and holding "<namespace>/<task id>". It is shared by every
// agent on the machine (and by `shoal dev` clusters), so two agents with
// overlapping ranges never give one uid to two tasks. Its name cannot be
// a namespace (those start with a letter or digit).
var uidClaimsDir = filepath.Join(RunDir, "_task-uids")

func claimOwner(ns, id string) string { return ns + "/" + id }

// claimUID takes the lowest free uid of r for owner.
func claimUID(r UIDRange, owner string) (uint32, error) {
	if err := os.MkdirAll(uidClaimsDir, 0o700); err != nil {
		return 0, fmt.Errorf("claim task uid: %w", err)
	}
	entries, err := os.ReadDir(uidClaimsDir)
	if err != nil {
		return 0, fmt.Errorf("claim task uid: %w", err)
	}
	taken := make(map[uint64]bool, len(entries))
	for _, e := range entries {
		if n, err := strconv.ParseUint(e.Name(), 10, 32); err == nil {
			taken[n] = true
		}
	}
	last := uint64(r.First) + uint64(r.Count) - 1
	for uid := uint64(r.First); uid <= last; uid++ {
		if taken[uid] {
			continue
		}
		err := writeClaim(uint32(uid), owner)
		if errors.Is(err, fs.ErrExist) {
			continue // taken since the listing
		}
		if err != nil {
			return 0, fmt.Errorf("claim task uid: %w", err)
		}
		return uint32(uid), nil
	}
	return 0, fmt.Errorf("claim task uid: all %d uids of %s are in use by tasks on this machine", r.Count, r)
}

func writeClaim(uid uint32, owner string) error {
	f, err := os.OpenFile(claimPath(uid), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	for range 3 {
		if !errors.Is(err, fs.ErrNotExist) {
			break
		}
		// Another agent removed the directory, seeing it empty.
		if err = os.MkdirAll(uidClaimsDir, 0o700); err == nil {
			f, err = os.OpenFile(claimPath(uid), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		}
	}
	if err != nil {
		return err
	}
	_, err = f.WriteString(owner + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(claimPath(uid))
	}
	return err
}

func claimPath(uid uint32) string {
	return filepath.Join(uidClaimsDir, strconv.FormatUint(uint64(uid), 10))
}

// claimHolder reads who holds uid ("" if nobody).
func claimHolder(uid uint32) (string, error) {
	raw, err := os.ReadFile(claimPath(uid))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read task uid claim: %w", err)
	}
	return strings.TrimSpace(string(raw)), nil
}

// releaseUID gives uid back if owner holds it.
func releaseUID(uid uint32, owner string) error {
	holder, err := claimHolder(uid)
	if err != nil || holder != owner {
		return err
	}
	if err := os.Remove(claimPath(uid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("release task uid %d: %w", uid, err)
	}
	return nil
}

// reclaimUID makes sure an adopted task's uid is still recorded as its
// own, e.g. after /run was emptied under running tasks. A uid that
// another task holds meanwhile is only reported: both run on.
func reclaimUID(uid uint32, owner string, log *slog.Logger) {
	holder, err := claimHolder(uid)
	switch {
	case err != nil:
		log.Warn("check task uid claim", "uid", uid, "task", owner, "err", err)
	case holder == "":
		if err := writeClaim(uid, owner); err != nil && !errors.Is(err, fs.ErrExist) {
			log.Warn("restore task uid claim", "uid", uid, "task", owner, "err", err)
		}
	case holder != owner:
		log.Warn("task uid is claimed by another task too", "uid", uid, "task", owner, "other", holder)
	}
}

// uidClaimsOf lists the uids claimed by tasks of namespace ns, by task id.
func uidClaimsOf(ns string) (map[string]uint32, error) {
	entries, err := os.ReadDir(uidClaimsDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list task uid claims: %w", err)
	}
	out := map[string]uint32{}
	for _, e := range entries {
		n, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		holder, err := claimHolder(uint32(n))
		if err != nil {
			return nil, err
		}
		if id, ok := strings.CutPrefix(holder, ns+"/"); ok {
			out[id] = uint32(n)
		}
	}
	return out, nil
}

// releaseClaimsOf gives back the uids of every task of ns but those in
// keep.
func releaseClaimsOf(ns string, keep map[string]bool) error {
	claims, err := uidClaimsOf(ns)
	if err != nil {
		return err
	}
	var errs []error
	for id, uid := range claims {
		if !keep[id] {
			errs = append(errs, releaseUID(uid, claimOwner(ns, id)))
		}
	}
	// The directory goes once no agent uses it.
	_ = unix.Rmdir(uidClaimsDir)
	return errors.Join(errs...)
}

package devcluster

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lockBaseDir serialises `dev up` and `dev down` on this machine. Without
// it, two concurrent ups of one name would both pass checkNotUp, and the
// loser's clean-up would tear down the winner's cluster. The lock is an
// flock on BaseDir, so it leaves nothing behind and dies with its holder.
func lockBaseDir(say func(string, ...any)) (unlock func(), err error) {
	if err := os.MkdirAll(BaseDir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", BaseDir, err)
	}
	f, err := os.Open(BaseDir)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", BaseDir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", BaseDir, err)
		}
		say("waiting for another shoal dev up or down to finish")
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", BaseDir, err)
		}
	}
	return func() { f.Close() }, nil // closing releases the lock
}

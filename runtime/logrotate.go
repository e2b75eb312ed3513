package runtime

import (
	"fmt"
	"io"
	"os"
	"strconv"
)

// RotateLog rotates a task's log file once it is larger than maxBytes: the
// older copies shift up (path.1 becomes path.2, ... up to keep), the
// current content is copied to path.1 and the file is truncated in place.
// Copy-and-truncate, not rename, because the writer (the task itself for
// exec, containerd's shim for containers) holds the file open with
// O_APPEND and cannot be told to reopen it: its next write lands at the
// start of the emptied file. Lines written between the copy and the
// truncation are lost; the window is one copy of at most maxBytes plus
// what one poll lets the file grow. It reports whether it rotated.
func RotateLog(path string, maxBytes int64, keep int) (bool, error) {
	if maxBytes <= 0 || keep < 1 {
		return false, fmt.Errorf("rotate log %s: %w: max bytes and keep must be positive", path, ErrInvalidSpec)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if os.IsNotExist(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	if info.Size() <= maxBytes {
		return false, nil
	}
	for i := keep - 1; i >= 1; i-- {
		err := os.Rename(path+"."+strconv.Itoa(i), path+"."+strconv.Itoa(i+1))
		if err != nil && !os.IsNotExist(err) {
			return false, fmt.Errorf("rotate log: %w", err)
		}
	}
	dst, err := os.OpenFile(path+".1", os.O_WRONLY|os.O_CREATE|os.O_TRUNC, info.Mode().Perm())
	if err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	if _, err := io.Copy(dst, f); err != nil {
		dst.Close()
		return false, fmt.Errorf("rotate log: copy to %s.1: %w", path, err)
	}
	if err := dst.Close(); err != nil {
		return false, fmt.Errorf("rotate log: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		return false, fmt.Errorf("rotate log: truncate: %w", err)
	}
	return true, nil
}

// RemoveRotatedLogs removes path's rotated copies (path.1 ... path.keep).
func RemoveRotatedLogs(path string, keep int) {
	for i := 1; i <= keep; i++ {
		_ = os.Remove(path + "." + strconv.Itoa(i))
	}
}

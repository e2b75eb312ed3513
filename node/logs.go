package node

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/protocol"

	"github.com/shoalmesh/shoal/gossip"
	"github.com/shoalmesh/shoal/runtime"
)

// protocolLogs streams a replica's log from the node that runs it.
const protocolLogs = protocol.ID("/shoal/logs/1.0.0")

// Log request limits.
const (
	defaultLogTail = 100
	maxLogTail     = 100000
	maxLogRequest  = 4 << 10
	logPoll        = 250 * time.Millisecond
)

// logRequest is what a node asks of the replica's node.
type logRequest struct {
	Task   string `json:"task"`
	Tail   int    `json:"tail"`
	Follow bool   `json:"follow"`
}

// handleLogs serves GET /v1/jobs/{id}/logs?replica=N&tail=100&follow=true
// from any node: the replica's own node reads its log file, every other
// node relays it over a libp2p stream.
func (a *Agent) handleLogs(w http.ResponseWriter, r *http.Request) {
	id, ok := pathJobID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	replica, tail := 0, defaultLogTail
	var err error
	if v := q.Get("replica"); v != "" {
		if replica, err = strconv.Atoi(v); err != nil || replica < 0 {
			writeError(w, http.StatusBadRequest, "replica: want a replica index >= 0, got %q", v)
			return
		}
	}
	if v := q.Get("tail"); v != "" {
		if tail, err = strconv.Atoi(v); err != nil || tail < 0 || tail > maxLogTail {
			writeError(w, http.StatusBadRequest, "tail: want 0..%d lines, got %q", maxLogTail, v)
			return
		}
	}
	follow := false
	if v := q.Get("follow"); v != "" {
		if follow, err = strconv.ParseBool(v); err != nil {
			writeError(w, http.StatusBadRequest, "follow: want true or false, got %q", v)
			return
		}
	}
	if _, found := a.store.Get(kindJob, id); !found {
		writeError(w, http.StatusNotFound, "job %q not found", id)
		return
	}
	owner := a.replicaNode(id, replica)
	if owner == "" {
		writeError(w, http.StatusNotFound, "job %q has no replica %d on any alive node", id, replica)
		return
	}
	req := logRequest{Task: taskID(id, replica), Tail: tail, Follow: follow}
	if owner == a.cfg.Gossip.NodeName {
		f, err := a.openLog(req.Task)
		if err != nil {
			writeError(w, http.StatusNotFound, "log of %s: %v", req.Task, err)
			return
		}
		defer f.Close()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_ = streamLog(r.Context(), f, req, flushWriter{w})
		return
	}
	var member gossip.Member
	for _, m := range a.cluster.Members() {
		if m.Name == owner {
			member = m
		}
	}
	st, err := a.host.Open(r.Context(), member, protocolLogs)
	if err != nil {
		writeError(w, http.StatusBadGateway, "reach %s for the log: %v", owner, err)
		return
	}
	defer st.Close()
	go func() {
		// The client went away: stop the remote side too.
		<-r.Context().Done()
		_ = st.Reset()
	}()
	raw, _ := json.Marshal(req)
	if _, err := st.Write(append(raw, '\n')); err != nil {
		writeError(w, http.StatusBadGateway, "ask %s for the log: %v", owner, err)
		return
	}
	_ = st.CloseWrite()
	// The first line is the remote's status: "ok" or an error.
	br := bufio.NewReader(st)
	// ReadSlice bounds the status line by the reader's buffer.
	line, err := br.ReadSlice('\n')
	if err != nil {
		writeError(w, http.StatusBadGateway, "read log from %s: %v", owner, err)
		return
	}
	if status := string(line); status != "ok\n" {
		writeError(w, http.StatusNotFound, "log of %s on %s: %s", req.Task, owner, status[:len(status)-1])
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.Copy(flushWriter{w}, br)
}

// replicaNode picks the node whose copy of the replica to read: a running
// copy on an alive node first, then any copy on an alive node.
func (a *Agent) replicaNode(job string, replica int) string {
	alive := map[string]bool{}
	for _, m := range a.cluster.Members() {
		alive[m.Name] = m.Status == gossip.StatusAlive
	}
	best := ""
	for _, al := range a.allocations(job) {
		if al.Replica != replica || al.Node == "" || !alive[al.Node] {
			continue
		}
		if al.State == StateRunning {
			return al.Node
		}
		if best == "" {
			best = al.Node
		}
	}
	return best
}

func (a *Agent) openLog(task string) (*os.File, error) {
	// The task id comes from a peer: it must be an id, never a path.
	if err := runtime.ValidateTaskID(task); err != nil {
		return nil, err
	}
	f, err := os.Open(a.tasks.LogPath(task))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("no log on this node")
	}
	return f, err
}

// serveLogs answers a peer's log request over a libp2p stream.
func (a *Agent) serveLogs(st network.Stream) {
	defer st.Close()
	_ = st.SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(io.LimitReader(st, maxLogRequest)).ReadBytes('\n')
	var req logRequest
	if err != nil || json.Unmarshal(line, &req) != nil || req.Tail < 0 || req.Tail > maxLogTail {
		_, _ = io.WriteString(st, "malformed log request\n")
		return
	}
	f, err := a.openLog(req.Task)
	if err != nil {
		_, _ = fmt.Fprintf(st, "%v\n", err)
		return
	}
	defer f.Close()
	if _, err := io.WriteString(st, "ok\n"); err != nil {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		// The asker half-closes after its request (EOF, keep going); a
		// reset means it went away and ends a follow.
		if _, err := io.Copy(io.Discard, st); err != nil {
			cancel()
		}
	}()
	_ = streamLog(ctx, f, req, st)
}

// streamLog writes the last req.Tail lines of f, then, when following,
// what is appended until ctx ends.
func streamLog(ctx context.Context, f *os.File, req logRequest, w io.Writer) error {
	off, err := tailOffset(f, req.Tail)
	if err != nil {
		return err
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return err
	}
	for {
		if _, err := io.Copy(w, f); err != nil {
			return err
		}
		if !req.Follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(logPoll):
		}
		// Rotation truncates the file in place: start again at its top.
		pos, err := f.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}
		if info, err := f.Stat(); err == nil && info.Size() < pos {
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				return err
			}
		}
	}
}

// tailOffset returns where the last n lines of f begin.
func tailOffset(f *os.File, n int) (int64, error) {
	info, err := f.Stat()
	if err != nil {
		return 0, err
	}
	end := info.Size()
	if n == 0 {
		return end, nil
	}
	buf := make([]byte, 32<<10)
	pos, lines := end, 0
	// A final newline ends the last line rather than starting a new one.
	skipLast := true
	for pos > 0 {
		size := int64(len(buf))
		if pos < size {
			size = pos
		}
		pos -= size
		if _, err := f.ReadAt(buf[:size], pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := size - 1; i >= 0; i-- {
			if buf[i] != '\n' {
				skipLast = false
				continue
			}
			if skipLast {
				skipLast = false
				continue
			}
			lines++
			if lines == n {
				return pos + i + 1, nil
			}
		}
	}
	return 0, nil
}

// flushWriter flushes after every write so a followed log reaches the
// client as it is written.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if fl, ok := f.w.(http.Flusher); ok {
		fl.Flush()
	}
	return n, err
}

package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Layout of an exec driver's state directory.
const (
	tasksSubdir = "tasks" // <id>.json status files
	logsSubdir  = "logs"  // <id>.log, stdout and stderr of each task
	workSubdir  = "work"  // <id>/, each task's working directory
	lockFile    = "lock"  // flock'ed while a driver uses the directory
	recordExt   = ".json"

	recordVersion = 1
	// stateStarting marks a record written before the process is started;
	// one found on adoption means the agent died mid-start.
	stateStarting State = "starting"
)

// taskRecord is the status file of one task: enough to adopt a running
// task after an agent restart, and to clean up a dead one.
type taskRecord struct {
	Version   int      `json:"version"`
	Namespace string   `json:"namespace"`
	Spec      TaskSpec `json:"spec"`
	State     State    `json:"state"`
	PID       int      `json:"pid"`
	// StartTicks is field 22 of /proc/<pid>/stat when the task started;
	// a live pid with another start time is a different process.
	StartTicks uint64 `json:"startTicks"`
	// UID is the task's own user and group id, claimed from the driver's
	// range; 0 in records of older agents, whose tasks ran as nobody.
	UID        uint32    `json:"uid,omitempty"`
	ExitCode   int       `json:"exitCode"`
	StartedAt  time.Time `json:"startedAt"`
	FinishedAt time.Time `json:"finishedAt"`
	NetNS      string    `json:"netns"`
	LogPath    string    `json:"logPath"`
	WorkDir    string    `json:"workDir"`
}

func (r taskRecord) status() TaskStatus {
	st := TaskStatus{
		ID: r.Spec.ID, Job: r.Spec.Job, Replica: r.Spec.Replica,
		State: r.State, PID: r.PID, ExitCode: r.ExitCode,
		StartedAt: r.StartedAt, FinishedAt: r.FinishedAt,
		NetNS: r.NetNS, SpecHash: r.Spec.SpecHash, LogPath: r.LogPath,
		Driver: DriverExec,
	}
	if st.State != StateRunning {
		st.State = StateExited
	}
	return st
}

func (e *Exec) recordPath(id string) string {
	return filepath.Join(e.cfg.StateDir, tasksSubdir, id+recordExt)
}

// saveRecord replaces the status file atomically.
func (e *Exec) saveRecord(rec taskRecord) error {
	data, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("save status of task %s: %w", rec.Spec.ID, err)
	}
	dir := filepath.Join(e.cfg.StateDir, tasksSubdir)
	tmp, err := os.CreateTemp(dir, "."+rec.Spec.ID+".tmp-*")
	if err != nil {
		return fmt.Errorf("save status of task %s: %w", rec.Spec.ID, err)
	}
	_, err = tmp.Write(append(data, '\n'))
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), e.recordPath(rec.Spec.ID))
	}
	if err != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("save status of task %s: %w", rec.Spec.ID, err)
	}
	return nil
}

func (e *Exec) removeRecord(id string) error {
	if err := os.Remove(e.recordPath(id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove status of task %s: %w", id, err)
	}
	return nil
}

// loadRecords reads every status file. Unreadable ones are returned by
// task ID in bad, so the caller can still report and clean them up.
func (e *Exec) loadRecords() (recs []taskRecord, bad map[string]error, err error) {
	dir := filepath.Join(e.cfg.StateDir, tasksSubdir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("read task status files: %w", err)
	}
	bad = map[string]error{}
	for _, ent := range entries {
		name := ent.Name()
		if strings.HasPrefix(name, ".") { // an interrupted saveRecord
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		id, ok := strings.CutSuffix(name, recordExt)
		if !ok || ValidateTaskID(id) != nil {
			continue // not ours
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			bad[id] = err
			continue
		}
		var rec taskRecord
		switch err := json.Unmarshal(data, &rec); {
		case err != nil:
			bad[id] = err
		case rec.Spec.ID != id:
			bad[id] = fmt.Errorf("file holds task %q", rec.Spec.ID)
		case rec.Namespace != e.cfg.Namespace:
			return nil, nil, fmt.Errorf("state dir %s holds task %s of namespace %q, not %q: use one state dir per namespace",
				e.cfg.StateDir, id, rec.Namespace, e.cfg.Namespace)
		default:
			recs = append(recs, rec)
		}
	}
	return recs, bad, nil
}

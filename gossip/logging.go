package gossip

import (
	"bytes"
	"context"
	"log"
	"log/slog"
)

// newStdLogger adapts serf's and memberlist's "[LEVEL] text" log lines to
// slog, keeping their level.
func newStdLogger(l *slog.Logger) *log.Logger {
	return log.New(levelWriter{l}, "", 0)
}

type levelWriter struct{ l *slog.Logger }

func (w levelWriter) Write(p []byte) (int, error) {
	line := bytes.TrimSpace(p)
	level := slog.LevelInfo
	for prefix, lv := range map[string]slog.Level{
		"[DEBUG]": slog.LevelDebug,
		"[TRACE]": slog.LevelDebug,
		"[INFO]":  slog.LevelInfo,
		"[WARN]":  slog.LevelWarn,
		"[ERR]":   slog.LevelError,
		"[ERROR]": slog.LevelError,
	} {
		if rest, ok := bytes.CutPrefix(line, []byte(prefix)); ok {
			level, line = lv, bytes.TrimSpace(rest)
			break
		}
	}
	w.l.Log(context.Background(), level, string(line))
	return len(p), nil
}

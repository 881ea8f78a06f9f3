package supervisor

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
)

func TestParseTermDisposition(t *testing.T) {
	for _, tc := range []struct {
		status string
		want   termAction
	}{
		{"SigIgn:\t0000000000000000\nSigCgt:\t0000000000004000\n", termHandled}, // bit 15: SIGTERM
		{"SigIgn:\t0000000000004000\nSigCgt:\t0000000000000000\n", termIgnored},
		{"SigIgn:\t0000000000000004\nSigCgt:\t0000000000010002\n", termDefault}, // sleep(1)
		{"", termDefault},
	} {
		if got := parseTermDisposition(tc.status); got != tc.want {
			t.Errorf("parseTermDisposition(%q) = %d, want %d", tc.status, got, tc.want)
		}
	}
}

func TestListenEnv(t *testing.T) {
	env := []string{"PATH=/bin", "LISTEN_PID=4711", "LISTEN_FDS=2", "LISTEN_FDNAMES=a:b", "LISTEN_FDSX=keep"}
	got := listenEnv(env, 2)
	want := []string{"PATH=/bin", "LISTEN_FDNAMES=a:b", "LISTEN_FDSX=keep", "LISTEN_PID=1", "LISTEN_FDS=2"}
	if !slices.Equal(got, want) {
		t.Errorf("listenEnv = %q, want %q", got, want)
	}
	if got := listenEnv(env, 0); slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, "LISTEN_PID=") }) {
		t.Errorf("listenEnv with no descriptors keeps LISTEN_PID: %q", got)
	}
}

func TestFailingProtection(t *testing.T) {
	st := Status{FailingSince: time.Date(2026, 12, 1, 22, 0, 0, 0, time.UTC), FailingCause: "checkpoint skipped: process 7 is stopped"}
	want := "unprotected: checkpoints failing since 2026-12-01T22:00:00Z: checkpoint skipped: process 7 is stopped"
	if got := st.FailingProtection(); got != want {
		t.Errorf("FailingProtection = %q, want %q", got, want)
	}
}

func TestSetAsideSyncedAndPutBack(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "rows")
	write := func(p, data string) {
		t.Helper()
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func() string {
		t.Helper()
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(data)
	}
	s := &Supervisor{log: slog.New(slog.DiscardHandler), aside: map[string]bool{}}
	files := []checkpoint.SyncedFile{{Path: path}}

	// A link older than the checkpoint being restored is a leftover: replaced.
	write(path+crashSuffix, "stale")
	write(path, "at the crash")
	s.setAsideSynced(files, time.Now().Add(time.Hour))
	// The restore puts an epoch's copy in place.
	write(path+".new", "epoch 7")
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
	// A second restore of the same recovery keeps the crash-time file aside.
	s.setAsideSynced(files, time.Now().Add(time.Hour))
	s.putBackSynced()
	if got := read(); got != "at the crash" {
		t.Errorf("after the fresh start the file says %q, want the crash-time content", got)
	}
	if _, err := os.Lstat(path + crashSuffix); err == nil {
		t.Errorf("the crash-time link is still there")
	}

	// A committed checkpoint after the recovery makes the link worthless.
	s.setAsideSynced(files, time.Now().Add(-time.Hour))
	s.dropAside()
	if _, err := os.Lstat(path + crashSuffix); err == nil || read() != "at the crash" {
		t.Errorf("dropAside: link left or file changed")
	}
}

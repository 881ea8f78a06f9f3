package supervisor

import (
	"slices"
	"strings"
	"testing"
	"time"
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

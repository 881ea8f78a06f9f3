package watchdog

import (
	"testing"
	"time"
)

func TestShouldPing(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	const tol = 5 * time.Second
	ago := func(d time.Duration) time.Time { return t0.Add(-d) }
	tests := []struct {
		name   string
		in     WatchdogInput
		wantOK bool
		why    string
	}{
		{
			name:   "running, fresh checkpoint",
			in:     WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(time.Second), Since: ago(time.Minute), Tolerance: tol, Now: t0},
			wantOK: true,
		},
		{
			// The case that used to cost a restart: one failed dump right after a
			// good one must not withhold a ping.
			name:   "one failed checkpoint after a fresh one is tolerated",
			in:     WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(1100 * time.Millisecond), LastError: "Failed to lock TCP connection", Since: ago(time.Minute), Tolerance: tol, Now: t0},
			wantOK: true,
		},
		{
			name:   "a checkpoint exactly Tolerance old is still fine",
			in:     WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(tol), LastError: "x", Since: ago(time.Minute), Tolerance: tol, Now: t0},
			wantOK: true,
		},
		{
			name: "checkpoints failing for longer than Tolerance: the cause is given",
			in:   WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(6234567891 * time.Nanosecond), LastError: "no space left on device", Since: ago(time.Minute), Tolerance: tol, Now: t0},
			why:  "no checkpoint committed for 6.2s (tolerance 5s): no space left on device",
		},
		{
			name: "stale without a recorded error (checkpoints not even attempted)",
			in:   WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(8 * time.Second), Since: ago(time.Minute), Tolerance: tol, Now: t0},
			why:  "no checkpoint committed for 8s (tolerance 5s)",
		},
		{
			name: "program down and nothing recovering it",
			in:   WatchdogInput{Program: ProgramDown, LastCheckpointOK: t0, Since: t0, Tolerance: tol, Now: t0},
			why:  "program not running and not being recovered",
		},
		{
			name:   "recovering is vouched for even with a stale checkpoint",
			in:     WatchdogInput{Program: ProgramRecovering, LastCheckpointOK: ago(time.Minute), LastError: "program not running", Since: ago(time.Minute), Tolerance: tol, Now: t0},
			wantOK: true,
		},
		{
			name:   "first checkpoint still being waited for, within Tolerance",
			in:     WatchdogInput{Program: ProgramRunning, Since: ago(4 * time.Second), Tolerance: tol, Now: t0},
			wantOK: true,
		},
		{
			name: "no first checkpoint after Tolerance",
			in:   WatchdogInput{Program: ProgramRunning, Since: ago(7 * time.Second), LastError: "criu: dump failed", Tolerance: tol, Now: t0},
			why:  "no checkpoint yet 7s after start (tolerance 5s): criu: dump failed",
		},
		{
			name:   "restored program: grace counts from the restore, not the old checkpoint",
			in:     WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(40 * time.Second), Since: ago(2 * time.Second), Tolerance: tol, Now: t0},
			wantOK: true,
		},
		{
			name: "restored program that never checkpoints again",
			in:   WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(40 * time.Second), Since: ago(9 * time.Second), LastError: "process 7 is stopped", Tolerance: tol, Now: t0},
			why:  "no checkpoint 9s after the program came back (tolerance 5s): process 7 is stopped",
		},
		{
			name: "sub-second ages are rounded to milliseconds",
			in:   WatchdogInput{Program: ProgramRunning, LastCheckpointOK: ago(900123456 * time.Nanosecond), Since: ago(time.Minute), Tolerance: 500 * time.Millisecond, Now: t0},
			why:  "no checkpoint committed for 900ms (tolerance 500ms)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, why := ShouldPing(tt.in)
			if ok != tt.wantOK || why != tt.why {
				t.Errorf("ShouldPing = (%v, %q), want (%v, %q)", ok, why, tt.wantOK, tt.why)
			}
		})
	}
}

// TestPingMargin plays the epoch loop against systemd's deadline: pings every
// WatchdogSec/4, one checkpoint per second, and a run of failed checkpoints.
// Up to Tolerance of failures never lets the deadline pass; a persistent failure
// does, within Tolerance + WatchdogSec.
func TestPingMargin(t *testing.T) {
	const (
		watchdogSec = 10 * time.Second
		interval    = time.Second
	)
	tol := Tolerance(interval, 150*time.Millisecond)
	t0 := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	// run returns when systemd's watchdog would fire (zero: never, within horizon).
	run := func(failFrom, failUntil time.Duration) time.Duration {
		var lastOK time.Time
		lastPing := time.Duration(0)
		lastErr := ""
		step := 50 * time.Millisecond
		for now := time.Duration(0); now < 2*time.Minute; now += step {
			if now%interval == 0 {
				if now >= failFrom && now < failUntil {
					lastErr = "Failed to lock TCP connection"
				} else {
					lastOK, lastErr = t0.Add(now), ""
				}
			}
			if now%(watchdogSec/4) == 0 {
				if ok, _ := ShouldPing(WatchdogInput{Program: ProgramRunning, LastCheckpointOK: lastOK, LastError: lastErr,
					Since: t0, Tolerance: tol, Now: t0.Add(now)}); ok {
					lastPing = now
				}
			}
			if now-lastPing > watchdogSec {
				return now
			}
		}
		return 0
	}
	for _, fails := range []time.Duration{interval, 2 * interval, 3 * interval, 4 * interval} {
		if fired := run(30*time.Second, 30*time.Second+fails); fired != 0 {
			t.Errorf("%s of failed checkpoints: watchdog fired at %s, want never", fails, fired)
		}
	}
	fired := run(30*time.Second, time.Hour)
	if fired == 0 || fired > 30*time.Second+tol+watchdogSec {
		t.Errorf("persistent failure from 30s: watchdog fired at %s, want by %s", fired, 30*time.Second+tol+watchdogSec)
	}
}

func TestTolerance(t *testing.T) {
	if got := Tolerance(time.Second, 200*time.Millisecond); got != 5*time.Second {
		t.Errorf("Tolerance(1s, 200ms) = %s, want 5s", got)
	}
	if got := Tolerance(100*time.Millisecond, 3*time.Second); got != 11*time.Second {
		t.Errorf("Tolerance(100ms, 3s) = %s, want 11s (a slow checkpoint stretches it)", got)
	}
}

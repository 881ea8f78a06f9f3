package watchdog

import (
	"testing"
	"time"
)

func TestShouldPing(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	const maxAge = 3 * time.Second
	tests := []struct {
		name   string
		in     WatchdogInput
		wantOK bool
		why    string
	}{
		{
			name:   "alive and fresh checkpoint",
			in:     WatchdogInput{Alive: true, LastCheckpointOK: t0.Add(-time.Second), Started: t0.Add(-time.Minute), MaxCheckpointAge: maxAge, Now: t0},
			wantOK: true,
		},
		{
			name:   "checkpoint exactly max age old is still fine",
			in:     WatchdogInput{Alive: true, LastCheckpointOK: t0.Add(-maxAge), Started: t0.Add(-time.Minute), MaxCheckpointAge: maxAge, Now: t0},
			wantOK: true,
		},
		{
			name: "program not running",
			in:   WatchdogInput{Alive: false, LastCheckpointOK: t0, Started: t0, MaxCheckpointAge: maxAge, Now: t0},
			why:  "program not running",
		},
		{
			name: "dead wins over a failed checkpoint",
			in:   WatchdogInput{Alive: false, LastCheckpointErr: true, MaxCheckpointAge: maxAge, Now: t0},
			why:  "program not running",
		},
		{
			name: "last checkpoint failed even though an older one is fresh",
			in:   WatchdogInput{Alive: true, LastCheckpointOK: t0.Add(-100 * time.Millisecond), LastCheckpointErr: true, Started: t0.Add(-time.Minute), MaxCheckpointAge: maxAge, Now: t0},
			why:  "last checkpoint failed",
		},
		{
			name: "stale checkpoint",
			in:   WatchdogInput{Alive: true, LastCheckpointOK: t0.Add(-3200 * time.Millisecond), Started: t0.Add(-time.Minute), MaxCheckpointAge: maxAge, Now: t0},
			why:  "no checkpoint for 3.2s (max 3s)",
		},
		{
			name: "stale checkpoint reason is rounded",
			in:   WatchdogInput{Alive: true, LastCheckpointOK: t0.Add(-3234567891 * time.Nanosecond), Started: t0.Add(-time.Minute), MaxCheckpointAge: maxAge, Now: t0},
			why:  "no checkpoint for 3.2s (max 3s)",
		},
		{
			name:   "no checkpoint yet, within grace",
			in:     WatchdogInput{Alive: true, Started: t0.Add(-2 * time.Second), MaxCheckpointAge: maxAge, Now: t0},
			wantOK: true,
		},
		{
			name:   "no checkpoint yet, grace exactly used up",
			in:     WatchdogInput{Alive: true, Started: t0.Add(-maxAge), MaxCheckpointAge: maxAge, Now: t0},
			wantOK: true,
		},
		{
			name: "no checkpoint yet, grace over",
			in:   WatchdogInput{Alive: true, Started: t0.Add(-4 * time.Second), MaxCheckpointAge: maxAge, Now: t0},
			why:  "no checkpoint yet after 4s (max 3s)",
		},
		{
			name: "first checkpoint failed during grace",
			in:   WatchdogInput{Alive: true, LastCheckpointErr: true, Started: t0, MaxCheckpointAge: maxAge, Now: t0},
			why:  "last checkpoint failed",
		},
		{
			name: "sub-second reason keeps milliseconds",
			in:   WatchdogInput{Alive: true, LastCheckpointOK: t0.Add(-250 * time.Millisecond), Started: t0.Add(-time.Minute), MaxCheckpointAge: 200 * time.Millisecond, Now: t0},
			why:  "no checkpoint for 250ms (max 200ms)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok, why := ShouldPing(tt.in)
			if ok != tt.wantOK || why != tt.why {
				t.Errorf("ShouldPing() = (%v, %q), want (%v, %q)", ok, why, tt.wantOK, tt.why)
			}
		})
	}
}

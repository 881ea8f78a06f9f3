package watchdog

import (
	"testing"
	"time"
)

func TestDetector(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 12, 0, 0, 0, time.UTC)
	const timeout = 500 * time.Millisecond
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

	type step struct {
		heard   bool // Heard(now) before checking
		now     int  // ms after t0
		silence time.Duration
		expired bool
		dead    time.Time // Deadline after the step
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{
			name: "start counts as heard",
			steps: []step{
				{now: 0, silence: 0, dead: at(500)},
				{now: 499, silence: 499 * time.Millisecond, dead: at(500)},
				{now: 500, silence: timeout, expired: false, dead: at(500)},
				{now: 501, silence: 501 * time.Millisecond, expired: true, dead: at(500)},
			},
		},
		{
			name: "heartbeats keep the peer alive",
			steps: []step{
				{heard: true, now: 400, silence: 0, dead: at(900)},
				{heard: true, now: 800, silence: 0, dead: at(1300)},
				{now: 1200, silence: 400 * time.Millisecond, dead: at(1300)},
				{now: 1301, silence: 501 * time.Millisecond, expired: true, dead: at(1300)},
			},
		},
		{
			name: "a late heartbeat revives an expired peer",
			steps: []step{
				{now: 700, silence: 700 * time.Millisecond, expired: true, dead: at(500)},
				{heard: true, now: 710, silence: 0, dead: at(1210)},
			},
		},
		{
			name: "an out-of-order heard does not move time back",
			steps: []step{
				{heard: true, now: 300, silence: 0, dead: at(800)},
				{heard: true, now: 100, silence: 0, dead: at(800)},
				{now: 801, silence: 501 * time.Millisecond, expired: true, dead: at(800)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDetector(timeout, t0)
			for i, s := range tt.steps {
				now := at(s.now)
				if s.heard {
					d.Heard(now)
				}
				if got := d.Silence(now); got != s.silence {
					t.Errorf("step %d: Silence(+%dms) = %v, want %v", i, s.now, got, s.silence)
				}
				if got := d.Expired(now); got != s.expired {
					t.Errorf("step %d: Expired(+%dms) = %v, want %v", i, s.now, got, s.expired)
				}
				if got := d.Deadline(); !got.Equal(s.dead) {
					t.Errorf("step %d: Deadline() = +%v, want +%v", i, got.Sub(t0), s.dead.Sub(t0))
				}
			}
		})
	}
}

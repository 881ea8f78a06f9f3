package failover

import (
	"strings"
	"testing"
	"time"
)

func TestTakeOver(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cases := []struct {
		name      string
		lastHeard time.Time
		now       time.Time
		committed uint64
		live      bool
		want      bool
		why       string
	}{
		{"primary alive", t0, t0.Add(500 * time.Millisecond), 5, false, false, "alive"},
		{"exactly at the timeout is still alive", t0, t0.Add(time.Second), 5, false, false, "alive"},
		{"silent past the timeout", t0, t0.Add(1100 * time.Millisecond), 5, false, true, "silent for 1.1s"},
		{"never heard since start", time.Time{}, t0, 5, false, false, "not heard"},
		{"nothing committed", t0, t0.Add(time.Hour), 0, false, false, "no committed epoch"},
		{"already live", t0, t0.Add(time.Hour), 5, true, false, "already live"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, why := TakeOver(tc.now, tc.lastHeard, time.Second, tc.committed, tc.live)
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Fatalf("TakeOver = %v %q, want %v containing %q", got, why, tc.want, tc.why)
			}
		})
	}
}

package supervisor

import (
	"strings"
	"testing"
)

func TestMayCheckpoint(t *testing.T) {
	cases := []struct {
		name       string
		alive      bool
		stoppedPid int
		healthFail int
		want       bool
		wantWhy    []string // substrings of the reason
	}{
		{name: "running and healthy", alive: true, want: true},
		{name: "not running", alive: false, wantWhy: []string{"not running"}},
		{name: "not running beats stopped", alive: false, stoppedPid: 77, healthFail: 2, wantWhy: []string{"not running"}},
		{name: "a process is stopped", alive: true, stoppedPid: 77, wantWhy: []string{"77", "stopped"}},
		{name: "stopped beats failing health", alive: true, stoppedPid: 77, healthFail: 3, wantWhy: []string{"77", "stopped"}},
		{name: "health failing once", alive: true, healthFail: 1, wantWhy: []string{"health check failing", "1 in a row"}},
		{name: "health failing repeatedly", alive: true, healthFail: 5, wantWhy: []string{"5 in a row"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ok, why := mayCheckpoint(tc.alive, tc.stoppedPid, tc.healthFail)
			if ok != tc.want {
				t.Fatalf("mayCheckpoint(%v, %d, %d) = %v (%q), want %v", tc.alive, tc.stoppedPid, tc.healthFail, ok, why, tc.want)
			}
			if ok && why != "" {
				t.Errorf("allowed with a reason %q", why)
			}
			if !ok && why == "" {
				t.Error("refused without a reason")
			}
			for _, s := range tc.wantWhy {
				if !strings.Contains(why, s) {
					t.Errorf("reason %q does not mention %q", why, s)
				}
			}
		})
	}
}

func TestDumpLogLevel(t *testing.T) {
	if got := dumpLogLevel(false); got != 3 {
		t.Errorf("dumps that succeed log at %d, want 3 (info: no debug lines while frozen)", got)
	}
	if got := dumpLogLevel(true); got != 4 {
		t.Errorf("the dump after a failure logs at %d, want 4 (debug: the whole story)", got)
	}
}

package supervisor

import (
	"strings"
	"testing"
	"time"
)

// step is one event fed to the ladder in a scripted scenario.
type step struct {
	at         time.Duration // since t0
	event      string        // "crash", "fail", "commit"
	candidates []uint64
	wantRung   Rung
	wantEpoch  uint64
	wantDelay  time.Duration
	wantReason string // substring
}

func TestLadderScenarios(t *testing.T) {
	pol := LadderPolicy{Burst: 5, Window: time.Minute, BackoffBase: 100 * time.Millisecond, BackoffMax: time.Second}
	cases := []struct {
		name   string
		policy LadderPolicy
		steps  []step
	}{
		{"first crash restores newest at once", pol, []step{
			{event: "crash", candidates: []uint64{9, 8, 7}, wantRung: RungRestore, wantEpoch: 9, wantReason: "newest"},
		}},
		{"corrupt newest falls back to older, then fresh, then give up", pol, []step{
			{event: "crash", candidates: []uint64{9, 8}, wantRung: RungRestore, wantEpoch: 9},
			{event: "fail", candidates: []uint64{9, 8}, wantRung: RungRestore, wantEpoch: 8, wantReason: "older"},
			{event: "fail", candidates: []uint64{9, 8}, wantRung: RungFresh, wantReason: "state is lost"},
			{event: "fail", candidates: []uint64{9, 8}, wantRung: RungGiveUp, wantReason: "fresh start did not hold"},
		}},
		{"crash before next commit escalates with backoff", pol, []step{
			{event: "crash", candidates: []uint64{5, 4}, wantRung: RungRestore, wantEpoch: 5},
			{at: time.Second, event: "crash", candidates: []uint64{5, 4}, wantRung: RungRestore, wantEpoch: 4, wantDelay: 100 * time.Millisecond, wantReason: "crashed again"},
			{at: 2 * time.Second, event: "crash", candidates: []uint64{5, 4}, wantRung: RungFresh, wantDelay: 200 * time.Millisecond},
			{at: 3 * time.Second, event: "crash", candidates: []uint64{5, 4}, wantRung: RungGiveUp},
		}},
		{"commit ends the episode: next crash starts from newest again", pol, []step{
			{event: "crash", candidates: []uint64{5}, wantRung: RungRestore, wantEpoch: 5},
			{event: "commit"},
			{at: 10 * time.Second, event: "crash", candidates: []uint64{6, 5}, wantRung: RungRestore, wantEpoch: 6, wantDelay: 0},
		}},
		{"burst limit gives up even if each recovery held", pol, []step{
			{at: 0, event: "crash", candidates: []uint64{1}, wantRung: RungRestore, wantEpoch: 1},
			{event: "commit"},
			{at: 1 * time.Second, event: "crash", candidates: []uint64{2}, wantRung: RungRestore, wantEpoch: 2},
			{event: "commit"},
			{at: 2 * time.Second, event: "crash", candidates: []uint64{3}, wantRung: RungRestore, wantEpoch: 3},
			{event: "commit"},
			{at: 3 * time.Second, event: "crash", candidates: []uint64{4}, wantRung: RungRestore, wantEpoch: 4},
			{event: "commit"},
			{at: 4 * time.Second, event: "crash", candidates: []uint64{5}, wantRung: RungRestore, wantEpoch: 5},
			{event: "commit"},
			{at: 5 * time.Second, event: "crash", candidates: []uint64{6}, wantRung: RungGiveUp, wantReason: "6 times within 1m0s"},
		}},
		{"crashes outside the window are forgotten", pol, []step{
			{at: 0, event: "crash", candidates: []uint64{1}, wantRung: RungRestore, wantEpoch: 1},
			{event: "commit"},
			{at: 20 * time.Second, event: "crash", candidates: []uint64{2}, wantRung: RungRestore, wantEpoch: 2},
			{event: "commit"},
			{at: 40 * time.Second, event: "crash", candidates: []uint64{3}, wantRung: RungRestore, wantEpoch: 3},
			{event: "commit"},
			{at: 61 * time.Second, event: "crash", candidates: []uint64{4}, wantRung: RungRestore, wantEpoch: 4},
			{event: "commit"},
			{at: 81 * time.Second, event: "crash", candidates: []uint64{5}, wantRung: RungRestore, wantEpoch: 5},
			{event: "commit"},
			{at: 101 * time.Second, event: "crash", candidates: []uint64{6}, wantRung: RungRestore, wantEpoch: 6},
		}},
		{"no checkpoint yet: fresh start", pol, []step{
			{event: "crash", wantRung: RungFresh, wantReason: "no checkpoint yet"},
		}},
		{"no-fresh with nothing to restore gives up", LadderPolicy{Burst: 5, Window: time.Minute, NoFresh: true}, []step{
			{event: "crash", wantRung: RungGiveUp, wantReason: "--no-fresh"},
		}},
		{"no-fresh exhausts checkpoints then gives up", LadderPolicy{Burst: 5, Window: time.Minute, NoFresh: true}, []step{
			{event: "crash", candidates: []uint64{2, 1}, wantRung: RungRestore, wantEpoch: 2},
			{event: "fail", candidates: []uint64{2, 1}, wantRung: RungRestore, wantEpoch: 1},
			{event: "fail", candidates: []uint64{2, 1}, wantRung: RungGiveUp, wantReason: "every checkpoint was tried"},
		}},
		{"backoff is capped", LadderPolicy{Burst: 50, Window: time.Minute, BackoffBase: 400 * time.Millisecond, BackoffMax: time.Second}, []step{
			{event: "crash", candidates: []uint64{4, 3, 2, 1}, wantRung: RungRestore, wantEpoch: 4},
			{event: "crash", candidates: []uint64{4, 3, 2, 1}, wantRung: RungRestore, wantEpoch: 3, wantDelay: 400 * time.Millisecond},
			{event: "crash", candidates: []uint64{4, 3, 2, 1}, wantRung: RungRestore, wantEpoch: 2, wantDelay: 800 * time.Millisecond},
			{event: "crash", candidates: []uint64{4, 3, 2, 1}, wantRung: RungRestore, wantEpoch: 1, wantDelay: time.Second},
		}},
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := NewLadder(tc.policy)
			for i, s := range tc.steps {
				var a Attempt
				switch s.event {
				case "crash":
					a = l.Crashed(t0.Add(s.at), s.candidates)
				case "fail":
					a = l.Failed(s.candidates, "attempt failed")
				case "commit":
					l.Committed()
					continue
				default:
					t.Fatalf("bad event %q", s.event)
				}
				if a.Rung != s.wantRung || a.Epoch != s.wantEpoch || a.Delay != s.wantDelay {
					t.Fatalf("step %d (%s): got %v epoch %d delay %v (%q), want %v epoch %d delay %v",
						i, s.event, a.Rung, a.Epoch, a.Delay, a.Reason, s.wantRung, s.wantEpoch, s.wantDelay)
				}
				if !strings.Contains(a.Reason, s.wantReason) {
					t.Fatalf("step %d: reason %q lacks %q", i, a.Reason, s.wantReason)
				}
			}
		})
	}
}

// A restore whose CRIU was killed from outside is tried once more on the same epoch
// before the ladder climbs to an older one; any other failure climbs at once.
func TestLadderRetriesWhenCriuDied(t *testing.T) {
	l := NewLadder(DefaultLadderPolicy)
	cands := []uint64{9, 8}
	a := l.Crashed(time.Unix(0, 0), cands)
	if a.Rung != RungRestore || a.Epoch != 9 {
		t.Fatalf("first attempt %+v", a)
	}
	a = l.RestoreFailed(cands, 9, "restore failed", true)
	if a.Rung != RungRestore || a.Epoch != 9 {
		t.Fatalf("after CRIU died: %+v, want epoch 9 again", a)
	}
	a = l.RestoreFailed(cands, 9, "restore failed", true)
	if a.Rung != RungRestore || a.Epoch != 8 {
		t.Fatalf("after CRIU died twice: %+v, want epoch 8", a)
	}
	a = l.RestoreFailed(cands, 8, "restore failed", false)
	if a.Rung != RungFresh {
		t.Fatalf("after a failure of the checkpoint: %+v, want a fresh start", a)
	}
	l.Committed()
	a = l.Crashed(time.Unix(1, 0), cands)
	if b := l.RestoreFailed(cands, a.Epoch, "restore failed", true); b.Epoch != a.Epoch {
		t.Fatalf("a new episode does not retry: %+v", b)
	}
}

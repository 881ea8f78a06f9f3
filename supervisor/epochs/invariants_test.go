package epochs

import (
	"math/rand/v2"
	"testing"
)

// k's ack releases k's output while the dump of k+1 is in progress (cut, not yet
// committed): the release waits for nothing the loop does.
func TestAckReleasesWhileNextDumpRuns(t *testing.T) {
	m := New(Config{Mode: Standby, Standby: true})
	for _, ev := range []Event{LinkUp{}, Incarnation{}, Cut{Epoch: 1}, Committed{Epoch: 1}, Cut{Epoch: 2}} {
		if _, err := m.Step(ev); err != nil {
			t.Fatal(err)
		}
	}
	rd, err := m.Step(Acked{Epoch: 1})
	if err != nil || rd.Release != 1 {
		t.Fatalf("ack of 1 during the dump of 2: %v, %v; want release 1", rd, err)
	}
}

// Whatever the events, a release never goes backwards, never past the newest cut of
// its gate nor the rule's safe epoch, and never to an epoch at or before the start of
// the incarnation whose gate it releases.
func TestReleaseInvariants(t *testing.T) {
	releases := 0
	for seed := range uint64(200) {
		r := rand.New(rand.NewPCG(seed, 1))
		mode := []Mode{Standby, Local, Off}[r.IntN(3)]
		m := New(Config{Mode: mode, Standby: mode == Standby || r.IntN(2) == 0})
		next := uint64(1) // the loop's next epoch number
		var shipped []uint64
		var lastRelease, after uint64
		for step := 0; step < 300; step++ {
			var ev Event
			switch r.IntN(9) {
			case 0:
				ev = Cut{Epoch: next}
			case 1:
				ev = Committed{Epoch: next}
			case 2:
				ev = Durable{Epoch: uint64(r.IntN(int(next)))}
			case 3:
				if len(shipped) > 0 {
					ev = Acked{Epoch: shipped[r.IntN(len(shipped))]}
				} else {
					ev = LinkUp{}
				}
			case 4:
				ev = Nacked{Epoch: next, Full: r.IntN(2) == 0}
			case 5:
				ev = LinkUp{}
			case 6:
				ev = LinkDown{Why: "gone"}
			case 7:
				if r.IntN(6) > 0 {
					continue
				}
				ev = Incarnation{After: next - 1, Takeover: r.IntN(8) == 0}
			case 8:
				ev = Abandoned{Epoch: next}
			default:
				continue
			}
			before := m.released
			rd, err := m.Step(ev)
			// An abandoned epoch's output waits, and stalls only while nothing
			// that may still commit is in flight.
			if m.Stalled() && (m.released >= m.cut || m.abandoned != m.cut) {
				t.Fatalf("seed %d: stalled with released %d, cut %d, abandoned %d", seed, m.released, m.cut, m.abandoned)
			}
			if m.Stalled() && m.Drained() && m.released != m.known() {
				t.Fatalf("seed %d: stalled and drained with released %d, known %d", seed, m.released, m.known())
			}
			if c, ok := ev.(Committed); ok && err == nil {
				next = c.Epoch + 1
			}
			if i, ok := ev.(Incarnation); ok {
				after, lastRelease = i.After, i.After
			}
			if rd.Ship > 0 {
				shipped = append(shipped, rd.Ship)
			}
			if rd.Release == 0 {
				continue
			}
			switch {
			case rd.Release <= before || rd.Release <= lastRelease:
				t.Fatalf("seed %d: %T released %d after %d", seed, ev, rd.Release, lastRelease)
			case rd.Release > m.cut || rd.Release > m.Safe():
				t.Fatalf("seed %d: released %d beyond cut %d or safe %d", seed, rd.Release, m.cut, m.Safe())
			case rd.Release <= after:
				t.Fatalf("seed %d: released %d in a gate for epochs after %d", seed, rd.Release, after)
			case mode == Off:
				t.Fatalf("seed %d: released %d with no gate", seed, rd.Release)
			}
			lastRelease = rd.Release
			releases++
		}
	}
	if releases < 500 {
		t.Fatalf("only %d releases: the events hardly exercise the rule", releases)
	}
}

package gate

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// step is one operation on a ledger in a table test, with what it must yield.
type step struct {
	op     string // arrive, cut, release, discard, plan (release planned, never committed), advance, check
	id     uint32 // arrive
	length int    // arrive
	epoch  uint64 // cut, release, plan
	d      time.Duration

	usedEpoch uint64       // cut: the epoch actually used
	rose      bool         // arrive: Pressure became true
	errHas    string       // arrive: the error wanted
	plan      *verdictPlan // release, discard, plan: the plan wanted
	stats     *Stats       // check: the whole snapshot wanted
	pressure  *bool        // check
}

func arrive(id uint32, length int) step { return step{op: "arrive", id: id, length: length} }
func cut(epoch uint64) step             { return step{op: "cut", epoch: epoch, usedEpoch: epoch} }
func advance(d time.Duration) step      { return step{op: "advance", d: d} }
func check(st Stats) step               { return step{op: "check", stats: &st} }
func release(epoch uint64, p verdictPlan) step {
	p.kind, p.epoch = verdictAccept, epoch
	return step{op: "release", epoch: epoch, plan: &p}
}
func discard(p verdictPlan) step {
	p.kind = verdictDrop
	return step{op: "discard", plan: &p}
}
func pressureIs(b bool) step { return step{op: "check", pressure: &b} }

func TestLedger(t *testing.T) {
	const maxP, maxB = 100, 1 << 20
	bounds := func(st Stats) Stats { st.MaxPackets, st.MaxBytes = maxP, maxB; return st }
	cases := []struct {
		name       string
		maxPackets int
		maxBytes   int64
		steps      []step
	}{
		{
			name: "cut then release lets out exactly the cut epoch",
			steps: []step{
				arrive(1, 100), arrive(2, 200), arrive(3, 300),
				check(bounds(Stats{HeldPackets: 3, HeldBytes: 600})),
				cut(1),
				check(bounds(Stats{HeldPackets: 3, HeldBytes: 600, CutEpoch: 1})),
				release(1, verdictPlan{need: true, upTo: 3, packets: 3, bytes: 600}),
				check(bounds(Stats{ReleasedPackets: 3, ReleasedBytes: 600, CutEpoch: 1, ReleasedEpoch: 1})),
			},
		},
		{
			name: "release with nothing held needs no verdict",
			steps: []step{
				release(1, verdictPlan{}),
				check(bounds(Stats{ReleasedEpoch: 1})),
				cut(2),
				release(2, verdictPlan{}),
				check(bounds(Stats{CutEpoch: 2, ReleasedEpoch: 2})),
			},
		},
		{
			name: "release never lets out packets not yet cut",
			steps: []step{
				arrive(1, 10), arrive(2, 10),
				release(9, verdictPlan{heldPackets: 2, heldBytes: 20}),
				check(bounds(Stats{HeldPackets: 2, HeldBytes: 20, ReleasedEpoch: 9})),
			},
		},
		{
			name: "packets arriving between cut and release stay held",
			steps: []step{
				arrive(1, 10), arrive(2, 10),
				cut(1),
				arrive(3, 30), arrive(4, 30),
				release(1, verdictPlan{need: true, upTo: 2, packets: 2, bytes: 20, heldPackets: 2, heldBytes: 60}),
				check(bounds(Stats{HeldPackets: 2, HeldBytes: 60, ReleasedPackets: 2, ReleasedBytes: 20, CutEpoch: 1, ReleasedEpoch: 1})),
				cut(2),
				release(2, verdictPlan{need: true, upTo: 4, packets: 2, bytes: 60}),
				check(bounds(Stats{ReleasedPackets: 4, ReleasedBytes: 80, CutEpoch: 2, ReleasedEpoch: 2})),
			},
		},
		{
			name: "repeated cut for the same epoch extends it",
			steps: []step{
				arrive(1, 10),
				cut(1),
				arrive(2, 20),
				cut(1), // the checkpoint of epoch 1 was retried
				arrive(3, 40),
				release(1, verdictPlan{need: true, upTo: 2, packets: 2, bytes: 30, heldPackets: 1, heldBytes: 40}),
				check(bounds(Stats{HeldPackets: 1, HeldBytes: 40, ReleasedPackets: 2, ReleasedBytes: 30, CutEpoch: 1, ReleasedEpoch: 1})),
			},
		},
		{
			name: "release of a later epoch covers every earlier one, and no further",
			steps: []step{
				arrive(1, 1), cut(1),
				arrive(2, 2), cut(2),
				arrive(3, 4), cut(3),
				arrive(4, 8), cut(4),
				arrive(5, 16),
				release(3, verdictPlan{need: true, upTo: 3, packets: 3, bytes: 7, heldPackets: 2, heldBytes: 24}),
				release(3, verdictPlan{heldPackets: 2, heldBytes: 24}), // again: nothing left
				check(bounds(Stats{HeldPackets: 2, HeldBytes: 24, ReleasedPackets: 3, ReleasedBytes: 7, CutEpoch: 4, ReleasedEpoch: 3})),
				release(2, verdictPlan{heldPackets: 2, heldBytes: 24}), // an old ack arriving late
				check(bounds(Stats{HeldPackets: 2, HeldBytes: 24, ReleasedPackets: 3, ReleasedBytes: 7, CutEpoch: 4, ReleasedEpoch: 3})),
			},
		},
		{
			name: "cut with no packet held still counts, and an empty epoch is skipped",
			steps: []step{
				cut(1),
				arrive(1, 5),
				cut(2), cut(3),
				release(2, verdictPlan{need: true, upTo: 1, packets: 1, bytes: 5}),
				check(bounds(Stats{ReleasedPackets: 1, ReleasedBytes: 5, CutEpoch: 3, ReleasedEpoch: 2})),
			},
		},
		{
			name: "a cut that goes backwards is raised to the last cut",
			steps: []step{
				arrive(1, 5), cut(5),
				arrive(2, 5),
				{op: "cut", epoch: 3, usedEpoch: 5},
				release(4, verdictPlan{heldPackets: 2, heldBytes: 10}),
				release(5, verdictPlan{need: true, upTo: 2, packets: 2, bytes: 10}),
			},
		},
		{
			name: "discard drops cut and uncut packets",
			steps: []step{
				arrive(1, 10), cut(1), arrive(2, 20), cut(2), arrive(3, 40),
				discard(verdictPlan{need: true, upTo: 3, packets: 3, bytes: 70}),
				check(bounds(Stats{DroppedPackets: 3, DroppedBytes: 70, CutEpoch: 2})),
				discard(verdictPlan{}), // nothing left: no verdict
				arrive(4, 1), cut(3),
				release(3, verdictPlan{need: true, upTo: 4, packets: 1, bytes: 1}),
				check(bounds(Stats{ReleasedPackets: 1, ReleasedBytes: 1, DroppedPackets: 3, DroppedBytes: 70, CutEpoch: 3, ReleasedEpoch: 3})),
			},
		},
		{
			name: "a planned verdict the kernel refused changes nothing",
			steps: []step{
				arrive(1, 10), cut(1),
				{op: "plan", epoch: 1, plan: &verdictPlan{kind: verdictAccept, epoch: 1, need: true, upTo: 1, packets: 1, bytes: 10}},
				check(bounds(Stats{HeldPackets: 1, HeldBytes: 10, CutEpoch: 1})),
			},
		},
		{
			name: "oldest age follows the oldest held packet",
			steps: []step{
				check(bounds(Stats{})),
				arrive(1, 1), advance(2 * time.Second), arrive(2, 1), cut(1),
				advance(time.Second), arrive(3, 1),
				advance(time.Second),
				check(bounds(Stats{HeldPackets: 3, HeldBytes: 3, OldestAge: 4 * time.Second, CutEpoch: 1})),
				release(1, verdictPlan{need: true, upTo: 2, packets: 2, bytes: 2, heldPackets: 1, heldBytes: 1}),
				check(bounds(Stats{HeldPackets: 1, HeldBytes: 1, OldestAge: time.Second, ReleasedPackets: 2, ReleasedBytes: 2, CutEpoch: 1, ReleasedEpoch: 1})),
				discard(verdictPlan{need: true, upTo: 3, packets: 1, bytes: 1}),
				check(bounds(Stats{ReleasedPackets: 2, ReleasedBytes: 2, DroppedPackets: 1, DroppedBytes: 1, CutEpoch: 1, ReleasedEpoch: 1})),
			},
		},
		{
			name:       "pressure on packets at 3/4 of the bound, rising once",
			maxPackets: 8, maxBytes: 1 << 30,
			steps: []step{
				arrive(1, 1), arrive(2, 1), arrive(3, 1), arrive(4, 1), arrive(5, 1),
				pressureIs(false),
				{op: "arrive", id: 6, length: 1, rose: true},
				pressureIs(true),
				arrive(7, 1), // already pressured: no second rise
				cut(1),
				release(1, verdictPlan{need: true, upTo: 7, packets: 7, bytes: 7}),
				pressureIs(false),
				arrive(8, 1), arrive(9, 1), arrive(10, 1), arrive(11, 1), arrive(12, 1),
				{op: "arrive", id: 13, length: 1, rose: true}, // rises again after falling
			},
		},
		{
			name:       "pressure on bytes at 3/4 of the bound",
			maxPackets: 1000, maxBytes: 4000,
			steps: []step{
				arrive(1, 1500), pressureIs(false),
				{op: "arrive", id: 2, length: 1500, rose: true},
				pressureIs(true),
				discard(verdictPlan{need: true, upTo: 2, packets: 2, bytes: 3000}),
				pressureIs(false),
			},
		},
		{
			name: "gaps in ids are packets the kernel dropped",
			steps: []step{
				arrive(1, 1), arrive(4, 1), cut(1), arrive(5, 1), arrive(10, 1),
				check(bounds(Stats{HeldPackets: 4, HeldBytes: 4, Lost: 6, CutEpoch: 1})),
				release(1, verdictPlan{need: true, upTo: 4, packets: 2, bytes: 2, heldPackets: 2, heldBytes: 2}),
			},
		},
		{
			name: "an id that does not increase is refused",
			steps: []step{
				arrive(5, 1),
				{op: "arrive", id: 5, length: 1, errHas: "ids must increase"},
				{op: "arrive", id: 3, length: 1, errHas: "ids must increase"},
				check(bounds(Stats{HeldPackets: 1, HeldBytes: 1})),
			},
		},
		{
			name: "ids wrap at 2^32",
			steps: []step{
				arrive(math.MaxUint32-1, 1), arrive(math.MaxUint32, 1), cut(1),
				arrive(0, 1), arrive(2, 1), // id 1 was dropped by the kernel
				release(1, verdictPlan{need: true, upTo: math.MaxUint32, packets: 2, bytes: 2, heldPackets: 2, heldBytes: 2}),
				cut(2),
				release(2, verdictPlan{need: true, upTo: 2, packets: 2, bytes: 2}),
				check(bounds(Stats{ReleasedPackets: 4, ReleasedBytes: 4, Lost: 1, CutEpoch: 2, ReleasedEpoch: 2})),
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clock := clockwork.NewFakeClock()
			mp, mb := tc.maxPackets, tc.maxBytes
			if mp == 0 {
				mp, mb = maxP, maxB
			}
			l := newLedger(clock, mp, mb)
			for i, s := range tc.steps {
				switch s.op {
				case "arrive":
					rose, err := l.arrive(s.id, s.length)
					if s.errHas != "" {
						if err == nil || !strings.Contains(err.Error(), s.errHas) {
							t.Fatalf("step %d: arrive(%d) error = %v, want one containing %q", i, s.id, err, s.errHas)
						}
						continue
					}
					if err != nil {
						t.Fatalf("step %d: arrive(%d): %v", i, s.id, err)
					}
					if rose != s.rose {
						t.Fatalf("step %d: arrive(%d) rose = %v, want %v", i, s.id, rose, s.rose)
					}
				case "cut":
					if got := l.cut(s.epoch); got != s.usedEpoch {
						t.Fatalf("step %d: cut(%d) used %d, want %d", i, s.epoch, got, s.usedEpoch)
					}
				case "release", "plan":
					p := l.planRelease(s.epoch)
					if p != *s.plan {
						t.Fatalf("step %d: planRelease(%d) = %+v, want %+v", i, s.epoch, p, *s.plan)
					}
					if s.op == "release" {
						l.commit(p)
					}
				case "discard":
					p := l.planDiscard()
					if p != *s.plan {
						t.Fatalf("step %d: planDiscard() = %+v, want %+v", i, p, *s.plan)
					}
					l.commit(p)
				case "advance":
					clock.Advance(s.d)
				case "check":
					if s.stats != nil {
						if got := l.stats(); got != *s.stats {
							t.Fatalf("step %d: stats =\n %+v, want\n %+v", i, got, *s.stats)
						}
					}
					if s.pressure != nil && l.pressure() != *s.pressure {
						t.Fatalf("step %d: pressure = %v, want %v", i, l.pressure(), *s.pressure)
					}
				default:
					t.Fatalf("step %d: unknown op %q", i, s.op)
				}
			}
		})
	}
}

// TestLedgerCommitKeepsLaterArrivals: a verdict planned before more packets arrived
// (the reader records them while the verdict is in flight) removes only what it covers.
func TestLedgerCommitKeepsLaterArrivals(t *testing.T) {
	l := newLedger(clockwork.NewFakeClock(), 100, 1<<20)
	for id := uint32(1); id <= 3; id++ {
		if _, err := l.arrive(id, 10); err != nil {
			t.Fatal(err)
		}
	}
	p := l.planDiscard()
	for id := uint32(4); id <= 5; id++ {
		if _, err := l.arrive(id, 10); err != nil {
			t.Fatal(err)
		}
	}
	l.commit(p)
	if st := l.stats(); st.HeldPackets != 2 || st.HeldBytes != 20 || st.DroppedPackets != 3 {
		t.Fatalf("stats = %+v, want 2 held (20 bytes) and 3 dropped", st)
	}
	l.cut(1)
	if p := l.planRelease(1); p.upTo != 5 || p.packets != 2 {
		t.Fatalf("plan = %+v, want ids through 5, 2 packets", p)
	}
}

// TestLedgerAbandonedDiscard: a discard whose verdict failed leaves every packet held,
// and a later cut still takes them all.
func TestLedgerAbandonedDiscard(t *testing.T) {
	l := newLedger(clockwork.NewFakeClock(), 100, 1<<20)
	for id := uint32(1); id <= 4; id++ {
		if id == 3 {
			_ = l.planDiscard() // the kernel refused it: never committed
		}
		if _, err := l.arrive(id, 10); err != nil {
			t.Fatal(err)
		}
	}
	l.cut(1)
	want := verdictPlan{kind: verdictAccept, epoch: 1, need: true, upTo: 4, packets: 4, bytes: 40}
	if p := l.planRelease(1); p != want {
		t.Fatalf("plan = %+v, want %+v", p, want)
	}
}

// Uncut is true from the first packet after a cut (or the first at all) until the
// next cut; a release leaves later arrivals uncut.
func TestLedgerUncut(t *testing.T) {
	l := newLedger(clockwork.NewFakeClock(), 100, 1<<20)
	if l.uncut() {
		t.Fatal("an empty ledger has uncut packets")
	}
	mustArrive := func(id uint32) {
		if _, err := l.arrive(id, 100); err != nil {
			t.Fatal(err)
		}
	}
	mustArrive(1)
	if !l.uncut() {
		t.Fatal("a held packet without an epoch is not uncut")
	}
	l.cut(1)
	if l.uncut() {
		t.Fatal("uncut after a cut")
	}
	mustArrive(2)
	l.commit(l.planRelease(1))
	if !l.uncut() {
		t.Fatal("a packet that arrived after the cut is not uncut once the cut epoch is released")
	}
	l.cut(2)
	l.commit(l.planRelease(2))
	if l.uncut() {
		t.Fatal("uncut with nothing held")
	}
}

package supervisor

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/supervisor/epochs"
)

func TestParentFor(t *testing.T) {
	for _, c := range []struct {
		name                     string
		parent                   string
		parentInc, inc, inRow, n int
		want                     string
	}{
		{"no parent yet", "", 1, 1, 0, 100, ""},
		{"same incarnation", "/s/3", 1, 1, 5, 100, "/s/3"},
		{"restored since: a new incarnation dumps whole", "/s/3", 1, 2, 5, 100, ""},
		{"a full one is due", "/s/3", 1, 1, 100, 100, ""},
	} {
		if got := parentFor(c.parent, c.parentInc, c.inc, c.inRow, c.n); got != c.want {
			t.Errorf("%s: parentFor = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestChooseDirtyMode(t *testing.T) {
	ok := func() error { return nil }
	no := func() error { return errors.New("absent") }
	for _, c := range []struct {
		m         DirtyMode
		uffd, sd  func() error
		want      DirtyMode
		wantError bool
	}{
		{DirtyAuto, ok, ok, DirtySoftDirty, false}, // CRIU's own, where there is a choice
		{DirtyAuto, ok, no, DirtyUffdWP, false},
		{DirtyAuto, no, ok, DirtySoftDirty, false},
		{DirtyAuto, no, no, DirtyOff, false},
		{DirtyUffdWP, no, ok, "", true},
		{DirtyUffdWP, ok, ok, "", true}, // CRIU would use the soft-dirty bits anyway
		{DirtyUffdWP, ok, no, DirtyUffdWP, false},
		{DirtySoftDirty, ok, no, "", true},
		{DirtyOff, no, no, DirtyOff, false},
		{"bogus", ok, ok, "", true},
	} {
		got, err := chooseDirtyMode(c.m, c.uffd, c.sd)
		if got != c.want || (err != nil) != c.wantError {
			t.Errorf("chooseDirtyMode(%q) = %q, %v; want %q, error %v", c.m, got, err, c.want, c.wantError)
		}
	}
}

// testSet is the set of epoch n in the store /s.
func testSet(n uint64) checkpoint.Set { return checkpoint.Set{Epoch: n, Dir: fmt.Sprintf("/s/%d", n)} }

// writtenIf is what the commit of an incremental dump (incremental) reports written.
func writtenIf(incremental bool) map[string][]delta.CopyRun {
	if !incremental {
		return nil
	}
	return map[string][]delta.CopyRun{}
}

// parentOf is the ParentDir incremental sets for a dump of incarnation into dir.
func parentOf(inc *incremental, incarnation int, dir string) string {
	o := checkpoint.Options{ImagesDir: dir}
	inc.prepare(&o, nil, incarnation, false)
	if !o.TrackMem {
		return "(untracked)"
	}
	return o.ParentDir
}

func TestFailedDumpClearsTheParent(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	if got := parentOf(inc, 1, "/s/1"); got != "" {
		t.Fatalf("first dump's parent = %q, want a full dump", got)
	}
	inc.committed(testSet(1), 1, nil)
	if got := parentOf(inc, 1, "/s/2"); got != "../1" {
		t.Fatalf("second dump's parent = %q, want ../1", got)
	}
	// The dump into /s/2 failed: nothing was committed. The next may not lean on /s/1,
	// whose tracking the failed dump reset.
	if got := parentOf(inc, 1, "/s/3"); got != "" {
		t.Fatalf("after a failed dump the parent = %q, want a full dump", got)
	}
	inc.committed(testSet(3), 1, nil)
	// A restore since: the restored program's pages were never tracked.
	if got := parentOf(inc, 2, "/s/4"); got != "" {
		t.Fatalf("after a restore the parent = %q, want a full dump", got)
	}
}

func TestAFullDumpEveryN(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 2, nil)
	parentOf(inc, 1, "/s/1")
	inc.committed(testSet(1), 1, nil)
	var got []string
	for k := 2; k <= 5; k++ {
		dir := fmt.Sprintf("/s/%d", k)
		p := parentOf(inc, 1, dir)
		got = append(got, p)
		inc.committed(testSet(uint64(k)), 1, writtenIf(p != ""))
	}
	want := []string{"../1", "../2", "", "../4"}
	if !slices.Equal(got, want) {
		t.Fatalf("parents = %q, want %q", got, want)
	}
}

func TestOffTracksNothing(t *testing.T) {
	for _, m := range []DirtyMode{"", DirtyOff} {
		inc := newIncremental(m, 100, nil)
		inc.committed(testSet(1), 1, nil)
		if got := parentOf(inc, 1, "/s/2"); got != "(untracked)" {
			t.Errorf("mode %q: parent = %q, want no tracking", m, got)
		}
	}
}

// The final dump ends the program: it is full, whatever the last one was.
func TestFinalDumpIsFull(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	parentOf(inc, 1, "/s/1")
	inc.committed(testSet(1), 1, nil)
	o := checkpoint.Options{ImagesDir: "/s/2"}
	inc.prepare(&o, nil, 1, true)
	if o.TrackMem || o.ParentDir != "" {
		t.Fatalf("final dump options %+v, want a plain full dump", o)
	}
}

// A set that could not be made durable is nobody's parent.
func TestUndurableSetIsNoParent(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	parentOf(inc, 1, "/s/1")
	inc.committed(testSet(1), 1, nil)
	inc.dropParent()
	if got := parentOf(inc, 1, "/s/2"); got != "" {
		t.Fatalf("parent after a failed sync = %q, want a full dump", got)
	}
}

// The set a commit may write over is one the store drops anyway, reached from the new
// dump's parent through recorded incremental dumps, and what it says changed since is
// every page those dumps wrote, for the pagemaps all of them had.
func TestReusable(t *testing.T) {
	run := func(v uint64) []delta.CopyRun { return []delta.CopyRun{{Vaddr: v, NrPages: 1}} }
	history := map[uint64]dumpRecord{
		// 2 was a full dump: no record.
		3: {parent: 2, written: map[string][]delta.CopyRun{"pagemap-1.img": run(0x1000), "pagemap-9.img": run(0x9000)}},
		4: {parent: 3, written: map[string][]delta.CopyRun{"pagemap-1.img": run(0x2000)}},
		5: {parent: 4, written: map[string][]delta.CopyRun{"pagemap-1.img": run(0x3000)}},
		// A chain whose two dumps share no pagemap.
		9: {parent: 8, written: map[string][]delta.CopyRun{"pagemap-1.img": run(0x3000)}},
		8: {parent: 2, written: map[string][]delta.CopyRun{"pagemap-9.img": run(0x9000)}},
	}
	sets := func(epochs ...uint64) (out []checkpoint.Set) {
		for _, e := range epochs {
			out = append(out, testSet(e))
		}
		return out
	}
	for _, c := range []struct {
		name   string
		drop   []checkpoint.Set
		parent uint64
		below  uint64
		want   uint64 // 0: none
		since  []delta.CopyRun
	}{
		{name: "the newest dropped", drop: sets(3, 2), parent: 5, want: 3, since: append(run(0x3000), run(0x2000)...)},
		{name: "through a longer chain", drop: sets(2), parent: 5, want: 2, since: append(append(run(0x3000), run(0x2000)...), run(0x1000)...)},
		{name: "nothing dropped", drop: nil, parent: 5},
		{name: "the parent itself is never taken", drop: sets(5), parent: 5},
		{name: "past a full dump the chain ends", drop: sets(1), parent: 5},
		{name: "the standby's newest bounds it", drop: sets(3, 2), parent: 5, below: 3, want: 2, since: append(append(run(0x3000), run(0x2000)...), run(0x1000)...)},
		{name: "a parent with no record", drop: sets(3), parent: 6},
		{name: "no pagemap in every dump of the chain", drop: sets(2), parent: 9},
	} {
		t.Run(c.name, func(t *testing.T) {
			set, since, ok := reusable(c.drop, c.parent, c.below, history)
			if c.want == 0 {
				if ok {
					t.Fatalf("picked epoch %d, want none", set.Epoch)
				}
				return
			}
			if !ok || set.Epoch != c.want {
				t.Fatalf("picked %v (%v), want epoch %d", set, ok, c.want)
			}
			if !slices.Equal(since["pagemap-1.img"], c.since) {
				t.Errorf("written since = %+v, want %+v", since["pagemap-1.img"], c.since)
			}
			if _, ok := since["pagemap-9.img"]; ok {
				t.Error("a pagemap missing from a dump of the chain may be taken")
			}
		})
	}
	// The history is not changed by a pick.
	if len(history[3].written["pagemap-1.img"]) != 1 {
		t.Error("reusable changed a record")
	}
}

// Only sets older than the newest durable one may be written over (an fsync may still
// be at work on a newer one), and with a standby older than its newest too.
func TestRetireBelow(t *testing.T) {
	for _, c := range []struct {
		pins    epochs.Pins
		standby bool
		want    uint64
	}{
		{epochs.Pins{Durable: 5}, false, 5},
		{epochs.Pins{Durable: 5, Acked: 3}, false, 5},
		{epochs.Pins{Durable: 5, Acked: 3}, true, 3},
		{epochs.Pins{Durable: 2, Acked: 7}, true, 2},
		{epochs.Pins{Durable: 5}, true, 0}, // nothing acked yet
		{epochs.Pins{}, false, 0},          // nothing durable yet
	} {
		if got := retireBelow(c.pins, c.standby); got != c.want {
			t.Errorf("retireBelow(%+v, standby %v) = %d, want %d", c.pins, c.standby, got, c.want)
		}
	}
}

// A full dump ends every chain: no record from before it is kept.
func TestAFullDumpClearsTheHistory(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	parentOf(inc, 1, "/s/1")
	inc.committed(testSet(1), 1, nil)
	for k := uint64(2); k <= 4; k++ {
		parentOf(inc, 1, fmt.Sprintf("/s/%d", k))
		inc.committed(testSet(k), 1, writtenIf(true))
	}
	if len(inc.history) != 3 {
		t.Fatalf("%d records after three incremental dumps, want 3", len(inc.history))
	}
	inc.committed(testSet(5), 1, nil)
	if len(inc.history) != 0 {
		t.Fatalf("%d records after a full dump, want none", len(inc.history))
	}
}

// retiredFor over a real store: with set 1 the newest durable one, the fsync of a newer
// set may be under way (syncLater), so none of 2..5 is written over; once 5 is
// durable, the newest set the prune drops and the chain reaches (3) is.
func TestRetiredForSparesSetsNotYetDurable(t *testing.T) {
	store, err := checkpoint.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for e := uint64(1); e <= 5; e++ {
		p, err := store.Begin(e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Commit(&checkpoint.Manifest{}); err != nil {
			t.Fatal(err)
		}
	}
	inc := newIncremental(DirtySoftDirty, 100, nil)
	run := map[string][]delta.CopyRun{"pagemap-1.img": {{Vaddr: 0x1000, NrPages: 1}}}
	for e := uint64(2); e <= 5; e++ {
		inc.history[e] = dumpRecord{parent: e - 1, written: run}
	}
	inc.dumpParent = 5
	rule := newOutputRule(CommitMode(epochs.Local), false)
	rule.m.Step(epochs.Incarnation{})
	for e := uint64(1); e <= 5; e++ {
		rule.m.Step(epochs.Committed{Epoch: e})
	}
	rule.m.Step(epochs.Durable{Epoch: 1})
	s := &Supervisor{store: store, incr: inc, rule: rule, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.cfg.Keep = 3
	if r := s.retiredFor(6); r != nil {
		t.Fatalf("retired %s while only set 1 is durable", filepath.Base(r.Dir))
	}
	if sets, _ := store.List(); len(sets) != 5 {
		t.Fatalf("%d sets left in the store, want all 5", len(sets))
	}
	rule.m.Step(epochs.Durable{Epoch: 5})
	r := s.retiredFor(6)
	if r == nil || filepath.Base(r.Dir) != ".tmp-retired-0000000000000003" {
		t.Fatalf("retired %+v with set 5 durable, want set 3", r)
	}
}

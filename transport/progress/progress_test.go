package progress

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

func TestDue(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, c := range []struct {
		name          string
		now, lastLine time.Time
		want          bool
	}{
		{"short transfers say nothing", t0.Add(999 * time.Millisecond), time.Time{}, false},
		{"first line after one interval", t0.Add(time.Second), time.Time{}, true},
		{"not twice in an interval", t0.Add(1500 * time.Millisecond), t0.Add(time.Second), false},
		{"again after the next interval", t0.Add(2 * time.Second), t0.Add(time.Second), true},
	} {
		if got := Due(c.now, t0, c.lastLine, time.Second); got != c.want {
			t.Errorf("%s: Due = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestMeter(t *testing.T) {
	clk := clockwork.NewFakeClock()
	m := NewMeter(clk, time.Second)
	if _, ok := m.Current(); ok {
		t.Fatal("a new meter reports a transfer")
	}
	m.Start(7, true, 400<<20)
	if _, due := m.Add(10 << 20); due {
		t.Error("a line due at once")
	}
	clk.Advance(time.Second)
	tr, due := m.Add(90 << 20)
	if !due {
		t.Fatal("no line after a second")
	}
	if tr.Done != 100<<20 || tr.Elapsed != time.Second || tr.Rate() != 100<<20 {
		t.Errorf("transfer %+v, rate %v", tr, tr.Rate())
	}
	if got, want := tr.String(), "epoch 7 (full): 100.0 MiB of 400.0 MiB (25%), 100.0 MiB/s, 3s left"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if _, due := m.Add(1); due {
		t.Error("two lines in one second")
	}
	cur, ok := m.Current()
	if !ok || cur.Done != 100<<20+1 {
		t.Errorf("Current = %+v, %v", cur, ok)
	}
	clk.Advance(500 * time.Millisecond)
	done, long := m.Finish()
	if !long || done.Elapsed != 1500*time.Millisecond {
		t.Errorf("Finish = %+v, %v", done, long)
	}
	if _, ok := m.Current(); ok {
		t.Error("a finished transfer still current")
	}
	if _, due := m.Add(1); due {
		t.Error("Add after Finish reports")
	}

	// Unknown total, a quick transfer: no line at its end either.
	m.Start(8, false, 0)
	m.Add(4096)
	if tr, long := m.Finish(); long || tr.String() != "epoch 8 (delta): 0.0 MiB, 0.0 MiB/s" {
		t.Errorf("quick transfer: %q, long %v", tr.String(), long)
	}
}

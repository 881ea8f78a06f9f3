package phase

import (
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func at(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }

const ms = time.Millisecond

func local() Local {
	return Local{Start: at(0), CriuCalled: at(2), PreDump: at(30), PostDump: at(50), HooksDone: at(53),
		CriuDone: at(60), Committed: at(65), Freezing: 4 * ms, Frozen: 15 * ms}
}

func TestOfLocalSplitsCriusRun(t *testing.T) {
	b := OfLocal(local())
	want := Breakdown{Scan: 2 * ms, CriuStart: 28 * ms, CriuInit: 4 * ms, Freeze: 4 * ms, Dump: 12 * ms,
		Hooks: 3 * ms, CriuFinish: 7 * ms, Manifest: 5 * ms}
	if len(b) != len(want) {
		t.Fatalf("phases %v, want %v", b, want)
	}
	for n, d := range want {
		if b[n] != d {
			t.Errorf("%s = %v, want %v", n, b[n], d)
		}
	}
	if b.Total() != 65*ms {
		t.Fatalf("total %v, want the 65ms from start to commit", b.Total())
	}
}

func TestOfAddsUpToCommitLatency(t *testing.T) {
	s := Ship{Started: at(70), Diffed: at(80), Sent: at(95), Acked: at(130), Released: 2 * ms,
		Standby: &Standby{Apply: 6 * ms, Verify: 4 * ms, Durable: 10 * ms}}
	b := Of(local(), s)
	if b.Total() != 132*ms {
		t.Fatalf("total %v, want 132ms (start to the ack, and the release): %v", b.Total(), b)
	}
	for n, d := range map[Name]time.Duration{Queue: 5 * ms, Delta: 10 * ms, Send: 15 * ms, Apply: 6 * ms, Verify: 4 * ms,
		Durable: 10 * ms, Ack: 15 * ms, Release: 2 * ms} {
		if b[n] != d {
			t.Errorf("%s = %v, want %v", n, b[n], d)
		}
	}
}

func TestOfWithoutStandbyPhases(t *testing.T) {
	// An older standby sends a plain Ack: its whole commit is part of the wait.
	b := Of(local(), Ship{Started: at(70), Diffed: at(80), Sent: at(95), Acked: at(130)})
	for _, n := range []Name{Apply, Verify, Durable} {
		if _, ok := b[n]; ok {
			t.Errorf("%s present without the standby reporting it", n)
		}
	}
	if b[Ack] != 35*ms || b.Total() != 130*ms {
		t.Fatalf("ack %v total %v", b[Ack], b.Total())
	}
}

func TestOfLocalClampsWhatTheClockDidNotSee(t *testing.T) {
	// CRIU's own figures larger than the wall clock between its notifications
	// (a coarse clock, a fake one in tests): nothing negative, the sum still holds.
	l := local()
	l.Frozen, l.Freezing = time.Second, time.Second
	b := OfLocal(l)
	for n, d := range b {
		if d < 0 {
			t.Errorf("%s negative: %v", n, d)
		}
	}
	if b.Total() != 65*ms || b[CriuInit] != 0 || b[Freeze] != 0 || b[Dump]+b[Hooks] != 23*ms {
		t.Fatalf("breakdown %v total %v", b, b.Total())
	}
	// Hooks longer than CRIU says it was frozen: the hooks were frozen time.
	l = local()
	l.Frozen = ms
	b = OfLocal(l)
	if b[Hooks] != 3*ms || b[Dump] != 0 || b.Total() != 65*ms {
		t.Fatalf("breakdown %v total %v", b, b.Total())
	}
	// Marks out of order (time ran backwards) count as nothing, never negative.
	l = local()
	l.CriuDone = at(1)
	if b := OfLocal(l); b[CriuFinish] != 0 || b[Manifest] != 64*ms {
		t.Fatalf("breakdown %v", b)
	}
}

func TestOfLocalWithoutNotifications(t *testing.T) {
	l := Local{Start: at(0), CriuCalled: at(1), CriuDone: at(40), Committed: at(45), Frozen: 10 * ms}
	b := OfLocal(l)
	if b[CriuStart] != 39*ms || b.Total() != 45*ms {
		t.Fatalf("breakdown %v", b)
	}
	if _, ok := b[Freeze]; ok {
		t.Fatal("freeze split out without the notifications that place it")
	}
}

func TestWindowQuantiles(t *testing.T) {
	w := NewWindow(100)
	for i := 1; i <= 150; i++ {
		b := Breakdown{Dump: time.Duration(i) * ms}
		if i%2 == 0 {
			b[Apply] = time.Duration(i) * ms
		}
		w.Add(b)
	}
	if w.Len() != 100 {
		t.Fatalf("window holds %d, want 100", w.Len())
	}
	q := w.Quantiles()
	if q[Dump].P50 != 101*ms || q[Dump].P99 != 150*ms || q[Dump].Mean != 100500*time.Microsecond {
		t.Fatalf("dump %+v: want the last 100 epochs (51..150)", q[Dump])
	}
	if q[Apply].P50 != 102*ms || q[Apply].P99 != 150*ms {
		t.Fatalf("apply %+v: want only the epochs that had it", q[Apply])
	}
	if _, ok := q[Send]; ok {
		t.Fatal("a phase no epoch went through has quantiles")
	}
	if len(NewWindow(0).Quantiles()) != 0 {
		t.Fatal("empty window")
	}
}

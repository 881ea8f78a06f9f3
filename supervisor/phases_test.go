package supervisor

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/supervisor/phase"
	"github.com/ftrun/ftrun/transport/frame"
	"github.com/ftrun/ftrun/transport/ship"
)

func phaseSupervisor(withLink bool) (*Supervisor, *clockwork.FakeClock) {
	clk := clockwork.NewFakeClockAt(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	s := &Supervisor{clock: clk, metrics: newMetrics("p2-phases")}
	if withLink {
		s.link = &link{}
	}
	return s, clk
}

func marksAt(t0 time.Time) phase.Local {
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	return phase.Local{Start: t0, CriuCalled: ms(1), PreDump: ms(20), PostDump: ms(40), HooksDone: ms(42),
		CriuDone: ms(50), Committed: ms(55), Freezing: 3 * time.Millisecond, Frozen: 12 * time.Millisecond}
}

// An acked epoch's phases add up to the commit latency recorded for it, in the status
// and in the metrics; the marks of the epochs it superseded go with it.
func TestEpochAckedPhasesAddUpToCommitLatency(t *testing.T) {
	s, clk := phaseSupervisor(true)
	t0 := clk.Now()
	s.epochMarked(4, marksAt(t0.Add(-500*time.Millisecond))) // skipped by the link
	s.epochMarked(5, marksAt(t0))
	ms := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Millisecond) }
	clk.Advance(300 * time.Millisecond) // the loop hears of the ack late: no part of the latency
	s.epochAcked(linkEvent{up: true, shipped: 5, released: time.Millisecond, stats: ship.Stats{Epoch: 5,
		Started: ms(60), Diffed: ms(70), Sent: ms(80), Answered: ms(110),
		Standby: &frame.AckPhases{ApplyNs: 5e6, VerifyNs: 3e6, DurableNs: 9e6}}})
	if len(s.marks) != 0 {
		t.Fatalf("marks left behind: %v", s.marks)
	}
	if s.st.CommitLatencyP50 != 111*time.Millisecond {
		t.Fatalf("commit latency %v, want 111ms (start to the ack, and the release)", s.st.CommitLatencyP50)
	}
	var sum time.Duration
	for _, n := range phase.All {
		q, ok := s.st.Phases[n]
		if !ok {
			t.Fatalf("status lacks phase %s: %v", n, s.st.Phases)
		}
		sum += q.P50
	}
	if sum != s.st.CommitLatencyP50 || s.st.PhaseEpochs != 1 {
		t.Fatalf("phases add up to %v over %d epochs, commit latency %v", sum, s.st.PhaseEpochs, s.st.CommitLatencyP50)
	}
	if got := s.st.Phases[phase.Durable].P50; got != 9*time.Millisecond {
		t.Fatalf("durable %v, want the standby's 9ms", got)
	}
	for _, n := range phase.All {
		if c := phaseCount(t, s, string(n)); c != 1 {
			t.Fatalf("phase %s observed %d times, want 1", n, c)
		}
	}
	if s.st.PhaseEpochsTotal != 1 || s.st.PhaseSums[phase.Durable] != 9*time.Millisecond {
		t.Fatalf("sums %v over %d epochs", s.st.PhaseSums, s.st.PhaseEpochsTotal)
	}
	handedOut := s.st.PhaseSums
	s.epochMarked(6, marksAt(clk.Now()))
	clk.Advance(100 * time.Millisecond)
	s.epochAcked(linkEvent{up: true, shipped: 6, stats: ship.Stats{Standby: &frame.AckPhases{DurableNs: 1e6}}})
	if handedOut[phase.Durable] != 9*time.Millisecond || s.st.PhaseSums[phase.Durable] != 10*time.Millisecond || s.st.PhaseEpochsTotal != 2 {
		t.Fatalf("sums handed out changed to %v; now %v over %d epochs", handedOut, s.st.PhaseSums, s.st.PhaseEpochsTotal)
	}

	// A late ack for an epoch already settled counts nothing twice.
	s.epochAcked(linkEvent{up: true, shipped: 4})
	if s.st.PhaseEpochs != 2 || len(s.commitLats) != 2 {
		t.Fatalf("a late ack counted: %d epochs, %d latencies", s.st.PhaseEpochs, len(s.commitLats))
	}
}

// A standby that does not report its phases: the epoch still adds up, the wait for
// its ack counting as ack.
func TestEpochAckedWithoutStandbyPhases(t *testing.T) {
	s, clk := phaseSupervisor(true)
	t0 := clk.Now()
	s.epochMarked(1, marksAt(t0))
	clk.Advance(100 * time.Millisecond)
	s.epochAcked(linkEvent{up: true, shipped: 1, stats: ship.Stats{Started: t0.Add(60 * time.Millisecond),
		Diffed: t0.Add(61 * time.Millisecond), Sent: t0.Add(70 * time.Millisecond), Answered: t0.Add(99 * time.Millisecond)}})
	if _, ok := s.st.Phases[phase.Apply]; ok {
		t.Fatal("apply reported though the standby said nothing of it")
	}
	if got := s.st.Phases[phase.Ack].P50; got != 29*time.Millisecond {
		t.Fatalf("ack %v, want the whole 29ms wait", got)
	}
}

// Without a standby an epoch is complete at its local commit.
func TestEpochMarkedLocalOnly(t *testing.T) {
	s, clk := phaseSupervisor(false)
	s.epochMarked(1, marksAt(clk.Now()))
	if len(s.marks) != 0 || s.st.PhaseEpochs != 1 {
		t.Fatalf("marks %v, epochs %d", s.marks, s.st.PhaseEpochs)
	}
	if _, ok := s.st.Phases[phase.Send]; ok {
		t.Fatal("a local epoch has a send phase")
	}
	if got := s.st.Phases[phase.Manifest].P50; got != 5*time.Millisecond {
		t.Fatalf("manifest %v", got)
	}
}

// phaseCount is how many epochs the phase histogram counted for name.
func phaseCount(t *testing.T, s *Supervisor, name string) uint64 {
	t.Helper()
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "ftrun_epoch_phase_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "phase" && l.GetValue() == name {
					return m.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

package supervisor

import (
	"maps"
	"time"

	"github.com/ftrun/ftrun/supervisor/phase"
	"github.com/ftrun/ftrun/transport/ship"
)

// phaseWindow is how many recent epochs `ftrun status` takes its phase percentiles over.
const phaseWindow = 200

// epochMarked keeps what the primary recorded of epoch until the standby acks it; with
// no standby, the epoch is complete at its local commit and counts at once.
func (s *Supervisor) epochMarked(epoch uint64, l phase.Local) {
	if s.link == nil {
		s.observePhases(phase.OfLocal(l))
		return
	}
	if s.marks == nil {
		s.marks = map[uint64]phase.Local{}
	}
	s.marks[epoch] = l
}

// epochAcked records an acked epoch's commit latency, checkpoint start to the ack and
// the release of the output it explains, and its phases, which add up to it. The
// latency ends where the link released, not where the loop hears of it: the loop may
// be inside the next checkpoint by then (the epochs are pipelined). The marks of
// epochs the link skipped (a newer one was ready before they were sent) go with it.
func (s *Supervisor) epochAcked(ev linkEvent) {
	l, ok := s.marks[ev.shipped]
	for e := range s.marks {
		if e <= ev.shipped {
			delete(s.marks, e)
		}
	}
	if !ok {
		return
	}
	st := ev.stats
	b := phase.Of(l, phase.Ship{Started: st.Started, Diffed: st.Diffed, Sent: st.Sent, Acked: st.Answered, Released: ev.released, Standby: standbyPhases(st)})
	lat := st.Answered.Sub(l.Start) + ev.released
	s.metrics.commitLat.Observe(lat.Seconds())
	s.commitLats = append(s.commitLats, lat)
	if len(s.commitLats) > 1000 {
		s.commitLats = s.commitLats[len(s.commitLats)-1000:]
	}
	s.st.CommitLatencyP50, s.st.CommitLatencyP99 = percentiles(s.commitLats)
	s.observePhases(b)
}

// standbyPhases is what the standby measured of its commit, nil from one that does
// not say.
func standbyPhases(st ship.Stats) *phase.Standby {
	p := st.Standby
	if p == nil {
		return nil
	}
	return &phase.Standby{Apply: time.Duration(p.ApplyNs), Verify: time.Duration(p.VerifyNs), Durable: time.Duration(p.DurableNs)}
}

// observePhases counts one epoch's breakdown in the metrics and the status.
func (s *Supervisor) observePhases(b phase.Breakdown) {
	if s.phases == nil {
		s.phases = phase.NewWindow(phaseWindow)
	}
	s.phases.Add(b)
	for n, d := range b {
		s.metrics.phase.WithLabelValues(string(n)).Observe(d.Seconds())
	}
	// The status handed out shares its maps: they are replaced here, never changed.
	s.st.Phases = s.phases.Quantiles()
	s.st.PhaseEpochs = s.phases.Len()
	sums := maps.Clone(s.st.PhaseSums)
	if sums == nil {
		sums = map[phase.Name]time.Duration{}
	}
	for n, d := range b {
		sums[n] += d
	}
	s.st.PhaseSums = sums
	s.st.PhaseEpochsTotal++
}

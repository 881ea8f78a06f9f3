package bench

import (
	"fmt"

	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/supervisor/phase"
)

// Phases is where one run's epochs spent their time, phase by phase (see package
// phase): the means over the epochs acked during the measurement, which add up to
// their mean commit latency, and the p50 and p99 over the status's recent window.
type Phases struct {
	Label  string             `json:"label"`
	Epochs int                `json:"epochs"`
	MeanMs map[string]float64 `json:"mean_ms"`
	P50Ms  map[string]float64 `json:"p50_ms"`
	P99Ms  map[string]float64 `json:"p99_ms"`
	// The commit latency `ftrun status` shows at the end (its recent window).
	CommitP50Ms float64 `json:"status_commit_p50_ms"`
	CommitP99Ms float64 `json:"status_commit_p99_ms"`
}

// PhasesBetween is the breakdown of the epochs counted between two status readings
// of one supervisor (pure).
func PhasesBetween(label string, before, after supervisor.Status) Phases {
	p := Phases{Label: label, Epochs: after.PhaseEpochsTotal - before.PhaseEpochsTotal, MeanMs: map[string]float64{},
		P50Ms: map[string]float64{}, P99Ms: map[string]float64{},
		CommitP50Ms: Ms(after.CommitLatencyP50), CommitP99Ms: Ms(after.CommitLatencyP99)}
	for _, n := range phase.All {
		if p.Epochs > 0 {
			if _, ok := after.PhaseSums[n]; ok {
				p.MeanMs[string(n)] = Ms(after.PhaseSums[n]-before.PhaseSums[n]) / float64(p.Epochs)
			}
		}
		if q, ok := after.Phases[n]; ok {
			p.P50Ms[string(n)], p.P99Ms[string(n)] = Ms(q.P50), Ms(q.P99)
		}
	}
	return p
}

// Total is the sum of the phases' means: the mean commit latency of the epochs counted.
func (p Phases) Total() float64 {
	t := 0.0
	for _, v := range p.MeanMs {
		t += v
	}
	return t
}

// phasesTable shows each run's phases side by side: mean, and p50 / p99 (pure).
func phasesTable(title string, runs []Phases) Table {
	t := Table{Title: title, Header: []string{"phase"}}
	for _, r := range runs {
		t.Header = append(t.Header, fmt.Sprintf("%s: mean (p50 / p99), %d epochs", r.Label, r.Epochs))
	}
	for _, n := range phase.All {
		row, any := []string{string(n)}, false
		for _, r := range runs {
			m, ok := r.MeanMs[string(n)]
			any = any || ok
			row = append(row, FormatValue(m, "ms")+" ("+FormatValue(r.P50Ms[string(n)], "ms")+" / "+FormatValue(r.P99Ms[string(n)], "ms")+")")
		}
		if any {
			t.Rows = append(t.Rows, row)
		}
	}
	total := []string{"sum of means = mean commit latency (status p50 / p99)"}
	for _, r := range runs {
		total = append(total, FormatValue(r.Total(), "ms")+" ("+FormatValue(r.CommitP50Ms, "ms")+" / "+FormatValue(r.CommitP99Ms, "ms")+")")
	}
	t.Rows = append(t.Rows, total)
	return t
}

// phasesBars stacks each run's mean phases into one bar (pure).
func phasesBars(title, xlabel string, runs []Phases) *Bars {
	b := &Bars{Title: title, XLabel: xlabel, YLabel: "mean time per epoch (ms)"}
	for _, r := range runs {
		b.Categories = append(b.Categories, r.Label)
	}
	for _, n := range phase.All {
		s := Segment{Name: string(n)}
		for _, r := range runs {
			s.Values = append(s.Values, r.MeanMs[string(n)])
		}
		b.Segments = append(b.Segments, s)
	}
	return b
}

package bench

import (
	"fmt"
	"math"

	"github.com/ftrun/ftrun/supervisor/phase"
)

// Target is one figure ftrun is held to: at most Limit, or at least it when AtLeast.
type Target struct {
	Name    string  `json:"name"`
	Limit   float64 `json:"limit"`
	Unit    string  `json:"unit"` // of the figure and the limit; "x" for a ratio
	AtLeast bool    `json:"at_least,omitempty"`
	// Rule is how the limit follows from the run, when it does ("interval/2 + 30 ms").
	Rule string `json:"rule,omitempty"`
}

// The targets (pure data). The scenarios' ...Targets functions hold their
// measurements to them with Evaluate.
var (
	// TargetCommitP50 is the epoch commit latency (checkpoint start -> the standby's
	// ack and the release), p50, of the 10 MB redis of the output scenario, at every --interval.
	TargetCommitP50 = Target{Name: "epoch commit p50, 10 MB redis", Limit: 25, Unit: "ms"}
	// TargetOneClient and TargetFiftyClients are closed-loop throughput behind the gate.
	TargetOneClient    = Target{Name: "throughput, 1 closed-loop client", Limit: 25, Unit: "req/s", AtLeast: true}
	TargetFiftyClients = Target{Name: "throughput, 50 closed-loop clients", Limit: 1000, Unit: "req/s", AtLeast: true}
	// TargetFrozen is ftrun's frozen time over the `criu dump` command line's, same program.
	TargetFrozen = Target{Name: "frozen time, ftrun / criu dump CLI", Limit: 1.3, Unit: "x"}
	// TargetIncrementalFrozen is the frozen time of an incremental checkpoint, about
	// 1 % of pages written, over a full `criu dump` of the same program.
	TargetIncrementalFrozen = Target{Name: "frozen time, incremental / full criu dump", Limit: 0.1, Unit: "x"}
	// TargetIncrementalFrozenLarge is the frozen time of an incremental checkpoint of
	// a program of 4 GiB or more, about 1 % of pages written.
	TargetIncrementalFrozenLarge = Target{Name: "frozen time, incremental, 4 GiB", Limit: 60, Unit: "ms"}
	// TargetIncrementalBytes is what an incremental checkpoint writes into the
	// store, less 64 KiB, over the memory it found changed since the one before.
	TargetIncrementalBytes = Target{Name: "bytes written, incremental / memory changed (+ 64 KiB)", Limit: 1.1, Unit: "x"}
	// TargetScaleP99 is the worst commit p99 of the primaries sharing one standby over
	// the p99 of one primary alone.
	TargetScaleP99 = Target{Name: "commit p99, primaries on one standby / one alone", Limit: 2, Unit: "x"}
)

// replySlackMs is what the reply latency target allows on top of half an epoch: the
// p50 behind the gate is at most interval/2 + 30 ms (40 ms at --interval 20ms).
const replySlackMs = 30

// ReplyTarget is the reply latency target at one --interval (pure).
func ReplyTarget(interval string, intervalMs float64) Target {
	return Target{Name: "reply latency p50 behind the gate, --interval " + interval, Limit: intervalMs/2 + replySlackMs, Unit: "ms",
		Rule: fmt.Sprintf("interval/2 + %d ms", replySlackMs)}
}

// At is t for one case of the run ("--interval 50ms").
func (t Target) At(what string) Target {
	t.Name += ", " + what
	return t
}

// TargetResult is a target held to what was measured.
type TargetResult struct {
	Target
	Measured  bool    `json:"measured"`
	Value     float64 `json:"value"`
	ValueText string  `json:"value_text,omitempty"` // replaces the formatted value
	Met       bool    `json:"met"`
	// Largest names the largest phase, by mean, of the epochs behind a missed target.
	Largest string `json:"largest_phase,omitempty"`
}

// Evaluate holds value to t (pure). A value that is not a number (nothing measured)
// is neither met nor missed. When the target is missed and ph holds epochs, the
// result names their largest phase the figure waits for: where the time that misses
// it goes.
func Evaluate(t Target, value float64, valueText string, ph *Phases) TargetResult {
	r := TargetResult{Target: t, ValueText: valueText}
	if math.IsNaN(value) || math.IsInf(value, 0) {
		return r
	}
	r.Measured, r.Value = true, value
	r.Met = value <= t.Limit
	if t.AtLeast {
		r.Met = value >= t.Limit
	}
	if !r.Met && ph != nil && ph.Epochs > 0 {
		if name, ms, ok := LargestPhase(*ph); ok {
			r.Largest = fmt.Sprintf("%s: %s of %s mean commit", name, FormatValue(ms, "ms"), FormatValue(ph.Total(), "ms"))
		}
	}
	return r
}

// LargestPhase is the phase with the largest mean (the first in phase order on a tie).
func LargestPhase(p Phases) (name string, ms float64, ok bool) {
	for _, n := range phase.All {
		if v, has := p.MeanMs[string(n)]; has && (!ok || v > ms) {
			name, ms, ok = string(n), v, true
		}
	}
	return name, ms, ok
}

func (t Target) limitText() string {
	op := "<="
	if t.AtLeast {
		op = ">="
	}
	s := op + " " + fmt.Sprintf("%g", t.Limit)
	if t.Unit == "x" {
		s += "x"
	} else {
		s += " " + t.Unit
	}
	if t.Rule != "" {
		s += " (" + t.Rule + ")"
	}
	return s
}

func formatUnit(v float64, unit string) string {
	if unit == "x" {
		return FormatValue(v, "") + "x"
	}
	return FormatValue(v, unit)
}

// Verdict is "met", "not met" or "not measured".
func (r TargetResult) Verdict() string {
	switch {
	case !r.Measured:
		return "not measured"
	case r.Met:
		return "met"
	}
	return "not met"
}

// Short is the result in a few words, for a figure: "target <= 1.3x: met".
func (r TargetResult) Short() string { return "target " + r.limitText() + ": " + r.Verdict() }

func (r TargetResult) valueText() string {
	switch {
	case r.ValueText != "":
		return r.ValueText
	case !r.Measured:
		return "-"
	}
	return formatUnit(r.Value, r.Unit)
}

// targetsHeader is the columns of a targets table.
var targetsHeader = []string{"target", "measured", "limit", "verdict", "largest phase (when not met)"}

func (r TargetResult) row() []string {
	return []string{r.Name, r.valueText(), r.limitText(), r.Verdict(), r.Largest}
}

// targetsTable shows a section's targets (pure).
func targetsTable(rs []TargetResult) Table {
	t := Table{Title: "Targets", Header: targetsHeader}
	for _, r := range rs {
		t.Rows = append(t.Rows, r.row())
	}
	return t
}

// TargetsTable is every section's targets in one table, with a count of those met.
func (r Report) TargetsTable() Table {
	t := Table{Header: append([]string{"scenario"}, targetsHeader...)}
	met, all := 0, 0
	for _, s := range r.Sections {
		for _, tr := range s.Targets {
			t.Rows = append(t.Rows, append([]string{s.Title}, tr.row()...))
			all++
			if tr.Met {
				met++
			}
		}
	}
	t.Title = fmt.Sprintf("Targets: %d of %d met", met, all)
	return t
}

// outputTargets holds the output scenario's measurements to their targets (pure):
// commit p50 and reply p50 at each --interval, closed-loop throughput with 1 and 50
// clients (at the interval the throughput ran at, whose epochs explain a miss).
func outputTargets(res OutputResult) []TargetResult {
	var out []TargetResult
	for _, e := range res.Epochs {
		commit := math.NaN()
		if e.Phases != nil {
			commit = e.Phases.CommitP50Ms
		}
		out = append(out, Evaluate(TargetCommitP50.At("--interval "+e.Interval), commit, "", e.Phases))
	}
	for _, e := range res.Epochs {
		out = append(out, Evaluate(ReplyTarget(e.Interval, e.IntervalMs), Percentile(e.LatMs, 50), "", e.Phases))
	}
	var ph *Phases
	for _, e := range res.Epochs {
		if e.IntervalMs == res.ThroughputIntervalMs {
			ph = e.Phases
		}
	}
	for _, tp := range res.Throughput {
		var t Target
		switch tp.Clients {
		case 1:
			t = TargetOneClient
		case 50:
			t = TargetFiftyClients
		default:
			continue
		}
		out = append(out, Evaluate(t.At("behind the gate, --interval "+res.ThroughputInterval), tp.Ftrun, "", ph))
	}
	return out
}

// frozenTargets holds each program size's frozen time to the criu CLI's (pure). The
// frozen time is itself a phase (freeze + dump): there is no breakdown to name.
func frozenTargets(rows []FrozenRow) []TargetResult {
	var out []TargetResult
	for _, r := range rows {
		if len(r.FtrunFrozen) == 0 || len(r.CLIFrozen) == 0 {
			continue
		}
		f, c := Median(r.FtrunFrozen), Median(r.CLIFrozen)
		ratio := Ratio(f, c)
		out = append(out, Evaluate(TargetFrozen.At(fmt.Sprintf("redis, %.0f MiB image", r.ImageMiB)), ratio,
			fmt.Sprintf("%sx (%s / %s)", FormatValue(ratio, ""), FormatValue(f, "ms"), FormatValue(c, "ms")), nil))
	}
	return out
}

// scaleTargets holds the worst commit p99 of the primaries sharing a standby to twice
// that of one alone (pure); a miss names the largest phase of their pooled epochs.
func scaleTargets(res ScaleResult) []TargetResult {
	if len(res.Many.Services) == 0 || len(res.One.Services) == 0 {
		return nil
	}
	worst := 0.0
	for _, s := range res.Many.Services {
		worst = max(worst, Percentile(s.LatMs, 99))
	}
	one := Percentile(res.One.AllLatencies(), 99)
	ratio := Ratio(worst, one)
	many := res.Many.pooledPhases(fmt.Sprintf("%d primaries", res.Many.Primaries))
	return []TargetResult{Evaluate(TargetScaleP99.At(fmt.Sprintf("%d primaries", res.Many.Primaries)), ratio,
		fmt.Sprintf("%sx (%s / %s)", FormatValue(ratio, ""), FormatValue(worst, "ms"), FormatValue(one, "ms")), &many)}
}

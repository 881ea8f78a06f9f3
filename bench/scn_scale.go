package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// counterSource is the small program of the scale scenario: a counter that ticks every
// argv[1] seconds and writes its value to the file argv[0] (write + rename, so the file
// is never half-written and not held open). Its state is only in memory.
const counterSource = `path = ARGV.fetch(0)
tick = Float(ARGV.fetch(1, "0.05"))
n = 0
loop do
  n += 1
  tmp = "#{path}.tmp"
  File.write(tmp, "#{n}\n")
  File.rename(tmp, path)
  sleep tick
end
`

// ScaleService is one primary's figures over the measurement window.
type ScaleService struct {
	Name      string    `json:"name"`
	Acked     int       `json:"epochs_acked"`
	LatMs     []float64 `json:"commit_latency_ms"`
	StatusP50 float64   `json:"status_commit_p50_ms"`
	StatusP99 float64   `json:"status_commit_p99_ms"`
	ImageMiB  float64   `json:"image_mib"`
	// Phases is where the epochs acked in the window spent their time.
	Phases *Phases `json:"phases,omitempty"`
}

// ScaleRun is one standby with some primaries.
type ScaleRun struct {
	Primaries   int            `json:"primaries"`
	WindowS     float64        `json:"window_s"`
	IngestBytes uint64         `json:"bytes_received_in_window"`
	IngestRate  float64        `json:"ingest_bytes_per_s"`
	Services    []ScaleService `json:"services"`
}

// AllLatencies pools every service's commit latencies.
func (r ScaleRun) AllLatencies() []float64 {
	var out []float64
	for _, s := range r.Services {
		out = append(out, s.LatMs...)
	}
	return out
}

// ScaleResult is what the scale scenario measured.
type ScaleResult struct {
	Many     ScaleRun `json:"many"`
	One      ScaleRun `json:"one"`
	Interval string   `json:"interval"`
}

// Scale protects ten programs on one primary host with one standby, and measures each
// service's commit latency (checkpoint start -> standby ack) and the standby's ingest
// rate, next to the same program alone on the same kind of standby.
func Scale(ctx context.Context, env Env) (sec Section, err error) {
	many, window := 10, 30*time.Second
	if env.Quick {
		// The CI size, where ftrun is built with the race detector: ten such primaries
		// saturate a 2-core machine (no epoch acknowledged in a 10 s window), four
		// still measure what sharing a standby costs.
		many, window = 4, 10*time.Second
	}
	res := ScaleResult{Interval: "1s"}
	sec = Section{About: fmt.Sprintf("Two network-namespace hosts: %d copies of a small Ruby program (a counter with its state in memory, ticking "+
		"every 50 ms) each run under its own `ftrun run --standby` (own --name and --state-dir, interval %s) on the primary host, all "+
		"streaming to one `ftrun standby` on the standby host. Once every service is protected, a %s window is measured: per service the "+
		"commit latency of each delta epoch acknowledged in the window (checkpoint start -> standby ack, from ftrun's debug log), and the "+
		"standby's ingest rate (growth of BytesReceived in `ftrun status --json` of the standby, summed over its services, per second). "+
		"Baseline: the same program alone with a standby of its own, measured the same way in the same run. `ftrun status` p50/p99 "+
		"cover every epoch since the start, the first (whole) one included. The standby runs with `--takeover-timeout 1h` (nothing is killed here).", many, res.Interval, window)}
	defer func() { scaleReport(&sec, res) }()

	hosts, err := env.Hosts(2)
	if err != nil {
		return sec, err
	}
	keys, err := env.Keys()
	if err != nil {
		return sec, err
	}
	script := filepath.Join(env.Scratch, "counter.rb")
	if err := os.WriteFile(script, []byte(counterSource), 0o644); err != nil {
		return sec, err
	}
	res.Many, err = scaleRun(ctx, env, hosts[0], hosts[1], keys, script, many, 7946, window, res.Interval)
	if err != nil {
		return sec, fmt.Errorf("%d primaries: %w", many, err)
	}
	env.Logf("%d primaries: ingest %.0f KiB/s, commit p50 %.0f ms, p99 %.0f ms", many, res.Many.IngestRate/1024,
		Percentile(res.Many.AllLatencies(), 50), Percentile(res.Many.AllLatencies(), 99))
	res.One, err = scaleRun(ctx, env, hosts[0], hosts[1], keys, script, 1, 7947, window, res.Interval)
	if err != nil {
		return sec, fmt.Errorf("one primary: %w", err)
	}
	env.Logf("1 primary: ingest %.0f KiB/s, commit p50 %.0f ms, p99 %.0f ms", res.One.IngestRate/1024,
		Percentile(res.One.AllLatencies(), 50), Percentile(res.One.AllLatencies(), 99))
	return sec, nil
}

func scaleRun(ctx context.Context, env Env, primary, stby Host, keys, script string, n, port int, window time.Duration, interval string) (ScaleRun, error) {
	run := ScaleRun{Primaries: n}
	addr := fmt.Sprintf("%s:%d", stby.Addr, port)
	sb, sbState, err := env.RunStandby(fmt.Sprintf("standby-%d", n), stby.NS(), addr, keys, NoTakeover...)
	if err != nil {
		return run, err
	}
	var svcs []*Service
	// A standby takes over a primary that goes silent, stopped or not: stop it first.
	defer func() {
		_ = sb.Stop(30 * time.Second)
		for _, s := range svcs {
			s.Terminate()
		}
		for _, s := range svcs {
			_ = s.Stop(30 * time.Second)
			KillCgroup(s.Name)
		}
	}()
	for i := 0; i < n; i++ {
		name := env.Name(fmt.Sprintf("-s%dn%d", n, i))
		out := filepath.Join(env.Scratch, name+".count")
		svc, err := env.RunFtrunWith(name, primary.NS(), []string{"--log-format", "json", "--log-level", "debug"},
			[]string{"--interval", interval, "--discard", "--no-final-checkpoint", "--standby", addr, "--keys", keys},
			"ruby", script, out, "0.05")
		if err != nil {
			return run, err
		}
		svcs = append(svcs, svc)
	}
	for _, s := range svcs {
		if _, err := s.WaitFor(ctx, "protected", 2*time.Minute, func(st supervisor.Status) bool {
			return strings.HasPrefix(st.Protection, "protected") && st.StandbyEpoch >= 2
		}); err != nil {
			return run, err
		}
	}
	received := func() (uint64, error) {
		ss, err := StandbyStatus(sbState)
		if err != nil {
			return 0, fmt.Errorf("standby status: %w", err)
		}
		var sum uint64
		for _, s := range ss {
			sum += s.BytesReceived
		}
		return sum, nil
	}
	b0, err := received()
	if err != nil {
		return run, err
	}
	before := make([]*supervisor.Status, len(svcs))
	for i, s := range svcs {
		if st, err := s.Status(); err == nil {
			before[i] = &st
		}
	}
	from := time.Now()
	if err := Sleep(ctx, window); err != nil {
		return run, err
	}
	b1, err := received()
	if err != nil {
		return run, err
	}
	to := time.Now()
	run.WindowS = to.Sub(from).Seconds()
	run.IngestBytes = b1 - b0
	run.IngestRate = float64(run.IngestBytes) / run.WindowS
	var errs []error
	for i, s := range svcs {
		ss := ScaleService{Name: s.Name}
		if st, err := s.Status(); err == nil {
			ss.StatusP50, ss.StatusP99, ss.ImageMiB = Ms(st.CommitLatencyP50), Ms(st.CommitLatencyP99), float64(st.ImageBytes)/(1<<20)
			if before[i] != nil {
				p := PhasesBetween(s.Name, *before[i], st)
				ss.Phases = &p
			}
		}
		f, err := os.Open(s.Log)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		samples, err := ParseCommits(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.Name, err))
		}
		in := InWindow(samples, from, to)
		ss.Acked, ss.LatMs = len(in), Latencies(in)
		if len(in) == 0 {
			errs = append(errs, fmt.Errorf("%s: no epoch acknowledged by the standby in the %s window", s.Name, to.Sub(from).Round(time.Millisecond)))
		}
		run.Services = append(run.Services, ss)
	}
	errs = append(errs, CheckNoTakeover(sbState))
	return run, errors.Join(errs...)
}

// scaleReport fills the section from what was measured (pure).
func scaleReport(sec *Section, res ScaleResult) {
	sec.Raw = res
	if len(res.Many.Services) == 0 {
		return
	}
	t := Table{Title: fmt.Sprintf("%d primaries on one standby, per service", res.Many.Primaries),
		Header: []string{"service", "epochs acked in window", "commit p50", "commit p99", "`ftrun status` p50 / p99 (since start)", "image"}}
	worstP99, p50s := 0.0, []float64{}
	for _, s := range append(append([]ScaleService{}, res.Many.Services...), res.One.Services...) {
		p50, p99 := Percentile(s.LatMs, 50), Percentile(s.LatMs, 99)
		label := s.Name
		if len(res.One.Services) > 0 && s.Name == res.One.Services[0].Name {
			label += " (alone: baseline)"
		}
		t.Rows = append(t.Rows, []string{label, fmt.Sprint(s.Acked), FormatValue(p50, "ms"), FormatValue(p99, "ms"),
			FormatValue(s.StatusP50, "ms") + " / " + FormatValue(s.StatusP99, "ms"), FormatValue(s.ImageMiB, "MiB")})
	}
	for _, s := range res.Many.Services {
		p50s = append(p50s, Percentile(s.LatMs, 50))
		worstP99 = max(worstP99, Percentile(s.LatMs, 99))
	}
	sec.Tables = append(sec.Tables, t)
	sec.Tables = append(sec.Tables, Table{Title: "The standby", Header: []string{"primaries", "window", "bytes received", "ingest rate", "epochs acked"},
		Rows: [][]string{scaleRow(res.Many), scaleRow(res.One)}})
	if len(res.One.Services) == 0 {
		return
	}
	sec.Targets = scaleTargets(res)
	one := res.One.AllLatencies()
	n := res.Many.Primaries
	sec.Figures = append(sec.Figures,
		Figure{Name: fmt.Sprintf("epoch commit latency p50, each of %d primaries on one standby (median over services)", n), Value: Median(p50s),
			Baseline: Percentile(one, 50), Unit: "ms", BaselineName: "one primary alone"},
		Figure{Name: fmt.Sprintf("epoch commit latency p99, worst of %d primaries", n), Value: worstP99,
			Baseline: Percentile(one, 99), Unit: "ms", BaselineName: "one primary alone", Verdict: sec.Targets[0].Short()},
		Figure{Name: fmt.Sprintf("standby ingest rate, %d primaries", n), Value: res.Many.IngestRate / 1024, Baseline: res.One.IngestRate / 1024,
			Unit: "KiB/s", BaselineName: "one primary", Verdict: fmt.Sprintf("%d x one primary = %.0f KiB/s", n, float64(n)*res.One.IngestRate/1024)})
	sec.Plots = append(sec.Plots, NamedPlot{File: "scale-commit-latency.svg", Plot: Plot{
		Title: "Epoch commit latency: ten primaries on one standby vs one", XLabel: "commit latency, checkpoint start -> standby ack (ms)",
		YLabel: "epochs at or below (%)", XLog: true,
		Series: []Series{CDF(fmt.Sprintf("%d primaries (all services)", n), res.Many.AllLatencies()), CDF("one primary alone", one)}}})
	many, alone := res.Many.pooledPhases(fmt.Sprintf("%d primaries", n)), res.One.pooledPhases("one alone")
	if many.Epochs > 0 && alone.Epochs > 0 {
		runs := []Phases{many, alone}
		sec.Tables = append(sec.Tables, phasesTable("Where an epoch's commit goes: every primary's epochs acked in the window pooled "+
			"(p50 / p99: the median and the worst of the services' own, over their last 200 epochs)", runs))
		sec.Plots = append(sec.Plots, NamedPlot{File: "scale-phases.svg", Bars: phasesBars(fmt.Sprintf("Epoch commit by phase (mean per epoch): %d primaries on one standby vs one", n),
			"primaries on the standby", runs)})
	}
}

// pooledPhases is every service's breakdown as one: means weighted by the epochs each
// service had acked in the window, p50 the median of theirs, p99 the worst (pure).
func (r ScaleRun) pooledPhases(label string) Phases {
	out := Phases{Label: label, MeanMs: map[string]float64{}, P50Ms: map[string]float64{}, P99Ms: map[string]float64{}}
	p50s, sums := map[string][]float64{}, map[string]float64{}
	var commitP50s []float64
	for _, s := range r.Services {
		p := s.Phases
		if p == nil || p.Epochs == 0 {
			continue
		}
		out.Epochs += p.Epochs
		for n, v := range p.MeanMs {
			sums[n] += v * float64(p.Epochs)
		}
		for n, v := range p.P50Ms {
			p50s[n] = append(p50s[n], v)
		}
		for n, v := range p.P99Ms {
			out.P99Ms[n] = max(out.P99Ms[n], v)
		}
		commitP50s = append(commitP50s, p.CommitP50Ms)
		out.CommitP99Ms = max(out.CommitP99Ms, p.CommitP99Ms)
	}
	for n, v := range sums {
		out.MeanMs[n] = v / float64(out.Epochs)
	}
	for n, v := range p50s {
		out.P50Ms[n] = Median(v)
	}
	out.CommitP50Ms = Median(commitP50s)
	return out
}

func scaleRow(r ScaleRun) []string {
	acked := 0
	for _, s := range r.Services {
		acked += s.Acked
	}
	return []string{fmt.Sprint(r.Primaries), fmt.Sprintf("%.1f s", r.WindowS), FormatValue(float64(r.IngestBytes)/1024, "KiB"),
		FormatValue(r.IngestRate/1024, "KiB/s"), fmt.Sprint(acked)}
}

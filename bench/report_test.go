package bench

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/supervisor/phase"
)

func sampleReport() Report {
	return Report{Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Elapsed: 90 * time.Second, Quick: true, Machine: "2 cores",
		Sections: []Section{
			{Name: "frozen", Title: "Frozen time", About: "What and how.",
				Figures: []Figure{{Name: "frozen time", Value: 66, Baseline: 60, Unit: "ms", BaselineName: "criu CLI", Verdict: "target <= 1.1: met"}},
				Tables:  []Table{{Header: []string{"size", "a|b"}, Rows: [][]string{{"16 MB", "1"}}}},
				Plots:   []NamedPlot{{File: "frozen.svg", Plot: Plot{Title: "Frozen", Series: []Series{{Name: "f", Points: []Point{{1, 2}, {2, 3}}}}}}},
			},
			{Name: "broken", Title: "Broken one", Err: "it fell over\nsecond line",
				Plots: []NamedPlot{{File: "broken.svg", Plot: Plot{Title: "nothing"}}}},
		}}
}

func TestMarkdown(t *testing.T) {
	md := sampleReport().Markdown()
	for _, want := range []string{
		"# ftrun bench", "quick run", "## Summary",
		"| Frozen time | frozen time | 66.0 ms | criu CLI: 60.0 ms | 1.10 (target <= 1.1: met) |",
		"| Broken one | FAILED: it fell over |",
		"**Failed scenarios: broken**",
		"## 1. Frozen time", "What and how.", `| size | a\|b |`, "![Frozen](frozen.svg)", "[frozen.svg](frozen.svg)",
		"## 2. Broken one", "**FAILED**", "second line",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("README lacks %q:\n%s", want, md)
		}
	}
}

func TestFigureText(t *testing.T) {
	f := Figure{Name: "keys lost", Value: 3, Baseline: 100, Unit: "%", ValueText: "3 of 100", BaselineText: "100 of 100", BaselineName: "plain", NoRatio: true}
	if f.valueText() != "3 of 100" || f.baselineText() != "plain: 100 of 100" || f.ratioText() != "" || !math.IsNaN(f.Ratio()) {
		t.Errorf("%q %q %q", f.valueText(), f.baselineText(), f.ratioText())
	}
	if got := (Figure{Value: 1, Baseline: 0}).ratioText(); got != "" {
		t.Errorf("ratio against a zero baseline: %q", got)
	}
	for v, want := range map[float64]string{0: "0 ms", 0.1234: "0.123 ms", 5.678: "5.68 ms", 56.78: "56.8 ms", 567.8: "568 ms"} {
		if got := FormatValue(v, "ms"); got != want {
			t.Errorf("FormatValue(%v) = %q, want %q", v, got, want)
		}
	}
	// NaN cannot be encoded as a JSON number: it becomes null.
	js, err := json.Marshal(Figure{Name: "x", Value: math.NaN(), Baseline: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"value":null`) || !strings.Contains(string(js), `"baseline":2`) || !strings.Contains(string(js), `"ratio":null`) {
		t.Errorf("figure JSON %s", js)
	}
}

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, sampleReport()); err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "frozen.svg")); err != nil {
		t.Error(err)
	}
	// A plot without data is not drawn, not linked, and said so.
	if _, err := os.Stat(filepath.Join(dir, "broken.svg")); err == nil {
		t.Error("a plot without data was written")
	}
	if strings.Contains(string(md), "broken.svg)") || !strings.Contains(string(md), "plot broken.svg not drawn") {
		t.Errorf("README about the undrawn plot:\n%s", md)
	}
	var back Report
	data, err := os.ReadFile(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("results.json: %v", err)
	}
	if len(back.Sections) != 2 || back.Sections[0].Figures[0].Value != 66 || back.Sections[1].Err == "" {
		t.Errorf("results.json round trip: %+v", back.Sections)
	}
}

func TestSelect(t *testing.T) {
	all := Scenarios()
	got, err := Select(all, []string{"scale", "frozen"})
	if err != nil || len(got) != 2 || got[0].Name != "scale" || got[1].Name != "frozen" {
		t.Fatalf("%v %v", got, err)
	}
	if _, err := Select(all, []string{"nope"}); err == nil || !strings.Contains(err.Error(), "frozen") {
		t.Fatalf("unknown scenario: %v", err)
	}
	if got, _ := Select(all, nil); len(got) != len(all) {
		t.Fatal("no --only runs everything")
	}
}

// Each scenario's report function makes every table, figure and plot from its
// measurements alone.
func TestScenarioReports(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	ms := func(d int) time.Duration { return time.Duration(d) * time.Millisecond }
	cases := []struct {
		name   string
		fill   func(*Section)
		tables int
		plots  int
		figs   int
	}{
		{"frozen", func(s *Section) {
			frozenReport(s, []FrozenRow{{DataMB: 16, ImageMiB: 20, FtrunFrozen: []float64{60, 70}, CLIFrozen: []float64{55}, FtrunTotal: []float64{90}, CLITotal: []float64{85}}})
		}, 1, 1, 2},
		{"shipped", func(s *Section) {
			shippedReport(s, []ShippedRow{{Pages: 64, Shipped: []int64{300 << 10}, FullImage: 100 << 20, TargetByte: ShippedTarget(64)}})
		}, 1, 1, 1},
		{"restart", func(s *Section) {
			restartReport(s, RestartResult{Rate: 2000, Interval: "1s", LatFtrun: []float64{0.1, 0.2}, LatPlain: []float64{0.1},
				Rounds: []RestartRound{{Mode: modeFtrun, Acked: 100, Lost: 3, FirstAnswerMs: 60, Correct: true}, {Mode: modePlain, Acked: 90, Lost: 90, FirstAnswerMs: 9}}})
		}, 2, 1, 3},
		{"failover", func(s *Section) {
			failoverReport(s, FailoverResult{FreshStartMs: 10, Variants: []FailoverVariant{{Name: "--net", Kill: t0, KillToFirstAnswerMs: 1100,
				Samples: []ClientSample{{Key: 0, Sent: t0.Add(-ms(100)), LatMs: 1, OK: true, Host: "a"}, {Key: 1, Sent: t0.Add(ms(5)), LatMs: 500, Host: "a"},
					{Key: 2, Sent: t0.Add(ms(1000)), LatMs: 100, OK: true, Host: "b"}}}}})
		}, 1, 1, 2},
		{"scale", func(s *Section) {
			scaleReport(s, ScaleResult{Many: ScaleRun{Primaries: 10, WindowS: 8, Services: []ScaleService{{Name: "a", Acked: 2, LatMs: []float64{300, 400}}}},
				One: ScaleRun{Primaries: 1, WindowS: 8, Services: []ScaleService{{Name: "b", Acked: 2, LatMs: []float64{100, 120}}}}})
		}, 2, 1, 3},
		{"scale with phases", func(s *Section) {
			ph := func(epochs int, dump float64) *Phases {
				return &Phases{Epochs: epochs, MeanMs: map[string]float64{"dump": dump, "send": 1}, P50Ms: map[string]float64{"dump": dump}}
			}
			scaleReport(s, ScaleResult{Many: ScaleRun{Primaries: 2, WindowS: 8, Services: []ScaleService{
				{Name: "a", Acked: 2, LatMs: []float64{300, 400}, Phases: ph(1, 10)}, {Name: "c", Acked: 2, LatMs: []float64{300}, Phases: ph(3, 30)}}},
				One: ScaleRun{Primaries: 1, WindowS: 8, Services: []ScaleService{{Name: "b", Acked: 2, LatMs: []float64{100, 120}, Phases: ph(2, 5)}}}})
			if got := s.Raw.(ScaleResult).Many.pooledPhases("x").MeanMs["dump"]; got != 25 {
				t.Errorf("pooled dump mean %v, want 25 (weighted by epochs)", got)
			}
		}, 3, 2, 3},
		{"output", func(s *Section) {
			ph := func(label string, scale float64) *Phases {
				before := supervisor.Status{PhaseEpochsTotal: 3, PhaseSums: map[phase.Name]time.Duration{phase.Dump: ms(30), phase.Send: ms(6)}}
				after := supervisor.Status{PhaseEpochsTotal: 13, CommitLatencyP50: ms(40), PhaseSums: map[phase.Name]time.Duration{
					phase.Dump: ms(30) + time.Duration(scale*float64(ms(100))), phase.Send: ms(26)},
					Phases: map[phase.Name]phase.Quantiles{phase.Dump: {P50: ms(9), P99: ms(15)}}}
				p := PhasesBetween(label, before, after)
				return &p
			}
			outputReport(s, OutputResult{Rate: 50, BareLatMs: []float64{1}, Epochs: []EpochLatency{
				{Interval: "50ms", IntervalMs: 50, LatMs: []float64{30, 40}, Phases: ph("50ms", 1)},
				{Interval: "100ms", IntervalMs: 100, LatMs: []float64{60, 80}, Phases: ph("100ms", 2)}}})
		}, 2, 2, 2},
		{"output with pipelined clients", func(s *Section) {
			outputReport(s, OutputResult{Rate: 50, ThroughputInterval: "100ms", ThroughputIntervalMs: 100,
				Throughput: []Throughput{{Clients: 1, Ftrun: 9, Bare: 30000}},
				Pipelined: []Pipelined{{PipeSpec: PipeSpec{Clients: 50, Pipeline: 16}, Ftrun: RedisBenchmark{Requests: 800, RPS: 1500, P50Ms: 300, P99Ms: 600},
					Bare: RedisBenchmark{Requests: 200000, RPS: 700000}}}})
			md := s.Tables[1].Markdown()
			if !strings.Contains(md, "| 50 x 16 | 1500 req/s | 300 ms / 600 ms | 800 | 700000 req/s | - | 200000 | 0.0021 |") {
				t.Errorf("pipelined table:\n%s", md)
			}
			if len(s.Targets) != 1 || s.Targets[0].Met {
				t.Errorf("targets %+v", s.Targets)
			}
		}, 2, 1, 2},
		{"gate", func(s *Section) {
			gateReport(s, GateResult{Rate: 200, Runs: []GateRun{{Commit: "standby", LatMs: []float64{200, 300}}, {Commit: "off", LatMs: []float64{1, 2}}}})
		}, 1, 1, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var s Section
			c.fill(&s)
			if len(s.Tables) != c.tables || len(s.Plots) != c.plots || len(s.Figures) != c.figs {
				t.Fatalf("%d tables, %d plots, %d figures; want %d, %d, %d", len(s.Tables), len(s.Plots), len(s.Figures), c.tables, c.plots, c.figs)
			}
			for _, p := range s.Plots {
				doc, err := p.SVG()
				if err != nil {
					t.Fatalf("%s: %v", p.File, err)
				}
				if _, data := svgShape(t, doc); data == 0 {
					t.Errorf("%s has no data element", p.File)
				}
			}
			if _, err := json.Marshal(s); err != nil {
				t.Errorf("section does not encode: %v", err)
			}
		})
	}
}

// The breakdown between two status readings is the means of the epochs in between,
// and those add up to their mean commit latency.
func TestPhasesBetween(t *testing.T) {
	ms := func(d int) time.Duration { return time.Duration(d) * time.Millisecond }
	before := supervisor.Status{PhaseEpochsTotal: 5, PhaseSums: map[phase.Name]time.Duration{phase.Dump: ms(50), phase.Ack: ms(10)}}
	after := supervisor.Status{PhaseEpochsTotal: 15, PhaseSums: map[phase.Name]time.Duration{phase.Dump: ms(150), phase.Ack: ms(60), phase.Apply: ms(20)}}
	p := PhasesBetween("x", before, after)
	if p.Epochs != 10 || p.MeanMs["dump"] != 10 || p.MeanMs["ack"] != 5 || p.MeanMs["apply"] != 2 || p.Total() != 17 {
		t.Fatalf("breakdown %+v total %v", p, p.Total())
	}
	if _, ok := p.MeanMs["send"]; ok {
		t.Fatal("a phase no epoch went through has a mean")
	}
	tab := phasesTable("t", []Phases{p})
	if len(tab.Rows) != 4 || tab.Rows[3][1] != FormatValue(17, "ms")+" ("+FormatValue(0, "ms")+" / "+FormatValue(0, "ms")+")" {
		t.Fatalf("table %v", tab.Rows)
	}
	if none := PhasesBetween("y", after, after); none.Epochs != 0 || len(none.MeanMs) != 0 {
		t.Fatalf("no epochs in between: %+v", none)
	}
}

func TestTakeoverTimes(t *testing.T) {
	kill := time.Date(2026, 11, 23, 19, 37, 35, 130e6, time.UTC)
	log := `time=2026-11-23T19:37:31.211Z level=INFO msg="standby listening" addr=198.19.101.2:7946
time=2026-11-23T19:37:36.102Z level=WARN msg="taking over: primary silent for 1.008s (timeout 1s)" service=x epoch=36
time=2026-11-23T19:37:36.265Z level=INFO msg="program restored from epoch 36 in 157ms" role=live service=x pid=21895
`
	decide, restore := takeoverTimes(log, kill)
	if decide != 972 || restore != 157 {
		t.Errorf("takeoverTimes = %.1f, %.1f ms; want 972, 157", decide, restore)
	}
	if d, r := takeoverTimes("nothing", kill); d != 0 || r != 0 {
		t.Errorf("takeoverTimes of a log without a take-over = %v, %v", d, r)
	}
}

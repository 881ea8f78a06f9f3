package bench

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

func TestEvaluate(t *testing.T) {
	ph := &Phases{Epochs: 4, MeanMs: map[string]float64{"dump": 40, "durable": 70, "send": 2}}
	atMost := Target{Name: "commit", Limit: 25, Unit: "ms"}
	atLeast := Target{Name: "rate", Limit: 25, Unit: "req/s", AtLeast: true}
	cases := []struct {
		name     string
		t        Target
		value    float64
		ph       *Phases
		verdict  string
		largest  string
		measured bool
	}{
		{"at most, met", atMost, 25, ph, "met", "", true},
		{"at most, missed names the largest phase", atMost, 112, ph, "not met", "durable: 70.0 ms of 112 ms mean commit", true},
		{"at most, missed without phases", atMost, 30, nil, "not met", "", true},
		{"at most, missed with no epochs", atMost, 30, &Phases{}, "not met", "", true},
		{"at least, met", atLeast, 25, ph, "met", "", true},
		{"at least, missed", atLeast, 9.3, ph, "not met", "durable: 70.0 ms of 112 ms mean commit", true},
		{"nothing measured", atMost, math.NaN(), ph, "not measured", "", false},
		{"a ratio over a zero baseline", atMost, math.Inf(1), ph, "not measured", "", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Evaluate(c.t, c.value, "", c.ph)
			if r.Verdict() != c.verdict || r.Largest != c.largest || r.Measured != c.measured {
				t.Errorf("verdict %q, largest %q, measured %v; want %q, %q, %v", r.Verdict(), r.Largest, r.Measured, c.verdict, c.largest, c.measured)
			}
			// NaN is no JSON number: an unmeasured result still encodes.
			if _, err := json.Marshal(r); err != nil {
				t.Errorf("encode: %v", err)
			}
		})
	}
	if got := Evaluate(TargetFrozen, 1.31, "", nil).Short(); got != "target <= 1.3x: not met" {
		t.Errorf("Short = %q", got)
	}
}

func TestLargestPhase(t *testing.T) {
	// A tie goes to the first phase in phase order, whatever the map's order.
	for i := 0; i < 20; i++ {
		name, ms, ok := LargestPhase(Phases{MeanMs: map[string]float64{"release": 50, "dump": 50, "criu_start": 10}})
		if !ok || name != "dump" || ms != 50 {
			t.Fatalf("LargestPhase = %q %v %v", name, ms, ok)
		}
	}
	if _, _, ok := LargestPhase(Phases{}); ok {
		t.Fatal("a largest phase of none")
	}
}

// The reply target is interval/2 + 30 ms: 40 ms at 20ms, 55 ms at 50ms, 130 at 200.
func TestReplyTarget(t *testing.T) {
	for iv, want := range map[float64]float64{20: 40, 50: 55, 100: 80, 200: 130} {
		if got := ReplyTarget("x", iv).Limit; got != want {
			t.Errorf("reply target at %v ms = %v, want %v", iv, got, want)
		}
	}
}

func TestOutputTargets(t *testing.T) {
	ph := func(commit, durable float64) *Phases {
		return &Phases{Epochs: 10, CommitP50Ms: commit, MeanMs: map[string]float64{"dump": 10, "durable": durable}}
	}
	res := OutputResult{ThroughputInterval: "100ms", ThroughputIntervalMs: 100, Epochs: []EpochLatency{
		{Interval: "20ms", IntervalMs: 20, LatMs: []float64{30, 35, 90}, Phases: ph(20, 5)},
		{Interval: "100ms", IntervalMs: 100, LatMs: []float64{150, 160}, Phases: ph(190, 150)},
		{Interval: "200ms", IntervalMs: 200, LatMs: []float64{100}}, // no phases read
	}, Throughput: []Throughput{{Clients: 1, Ftrun: 9}, {Clients: 10, Ftrun: 70}, {Clients: 50, Ftrun: 1200}}}
	got := map[string]TargetResult{}
	var names []string
	for _, r := range outputTargets(res) {
		got[r.Name] = r
		names = append(names, r.Name)
	}
	want := map[string]struct {
		verdict, largest string
	}{
		"epoch commit p50, 10 MB redis, --interval 20ms":                        {"met", ""},
		"epoch commit p50, 10 MB redis, --interval 100ms":                       {"not met", "durable: 150 ms of 160 ms mean commit"},
		"epoch commit p50, 10 MB redis, --interval 200ms":                       {"not measured", ""},
		"reply latency p50 behind the gate, --interval 20ms":                    {"met", ""},
		"reply latency p50 behind the gate, --interval 100ms":                   {"not met", "durable: 150 ms of 160 ms mean commit"},
		"reply latency p50 behind the gate, --interval 200ms":                   {"met", ""},
		"throughput, 1 closed-loop client, behind the gate, --interval 100ms":   {"not met", "durable: 150 ms of 160 ms mean commit"},
		"throughput, 50 closed-loop clients, behind the gate, --interval 100ms": {"met", ""},
	}
	if len(got) != len(want) {
		t.Fatalf("targets %q, want %d of them", names, len(want))
	}
	for name, w := range want {
		r, ok := got[name]
		if !ok {
			t.Errorf("no target %q (have %q)", name, names)
			continue
		}
		if r.Verdict() != w.verdict || r.Largest != w.largest {
			t.Errorf("%s: %q, %q; want %q, %q", name, r.Verdict(), r.Largest, w.verdict, w.largest)
		}
	}
}

func TestFrozenAndScaleTargets(t *testing.T) {
	fr := frozenTargets([]FrozenRow{{ImageMiB: 20, FtrunFrozen: []float64{45}, CLIFrozen: []float64{40}},
		{ImageMiB: 72, FtrunFrozen: []float64{70}}, // no CLI sample: left out
		{ImageMiB: 280, FtrunFrozen: []float64{140}, CLIFrozen: []float64{100}}})
	if len(fr) != 2 || !fr[0].Met || fr[1].Met || fr[1].ValueText != "1.40x (140 ms / 100 ms)" || fr[1].Largest != "" {
		t.Fatalf("frozen targets %+v", fr)
	}
	ph := &Phases{Epochs: 3, MeanMs: map[string]float64{"criu_start": 400, "dump": 600}}
	sc := scaleTargets(ScaleResult{
		Many: ScaleRun{Primaries: 10, Services: []ScaleService{{LatMs: []float64{300, 500}, Phases: ph}, {LatMs: []float64{200, 900}, Phases: ph}}},
		One:  ScaleRun{Primaries: 1, Services: []ScaleService{{LatMs: []float64{100, 150}}}}})
	if len(sc) != 1 || sc[0].Met || sc[0].ValueText != "6.00x (900 ms / 150 ms)" || !strings.HasPrefix(sc[0].Largest, "dump: 600 ms") {
		t.Fatalf("scale targets %+v", sc)
	}
	if scaleTargets(ScaleResult{}) != nil {
		t.Fatal("targets without a measurement")
	}
}

// A section's targets show in the section and, with every other section's, under the
// summary with a count of those met.
func TestTargetsMarkdown(t *testing.T) {
	rep := sampleReport()
	rep.Sections[0].Targets = []TargetResult{
		Evaluate(TargetFrozen.At("redis"), 1.1, "1.10x (66 ms / 60 ms)", nil),
		Evaluate(TargetCommitP50, 190, "", &Phases{Epochs: 1, MeanMs: map[string]float64{"durable": 150}}),
	}
	md := rep.Markdown()
	for _, want := range []string{
		"**Targets: 1 of 2 met**",
		"| scenario | target | measured | limit | verdict | largest phase (when not met) |",
		"| Frozen time | frozen time, ftrun / criu dump CLI, redis | 1.10x (66 ms / 60 ms) | <= 1.3x | met |  |",
		"**Targets**\n\n| target | measured | limit | verdict | largest phase (when not met) |",
		"| epoch commit p50, 10 MB redis | 190 ms | <= 25 ms | not met | durable: 150 ms of 150 ms mean commit |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("README lacks %q:\n%s", want, md)
		}
	}
	if !strings.Contains(strings.Split(md, "## 1.")[0], "Targets: 1 of 2 met") {
		t.Error("the targets are not under the summary")
	}
	js, err := rep.JSON()
	if err != nil || !strings.Contains(string(js), `"largest_phase": "durable: 150 ms of 150 ms mean commit"`) {
		t.Errorf("results.json: %v\n%s", err, js)
	}
}

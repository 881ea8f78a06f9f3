package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"
)

// EpochLatency is the reply latency behind the gate at one epoch length.
type EpochLatency struct {
	Interval   string    `json:"interval"`
	IntervalMs float64   `json:"interval_ms"`
	FrozenMs   float64   `json:"frozen_ms"`
	RTTMs      float64   `json:"standby_rtt_ms"`
	LatMs      []float64 `json:"latency_ms"`
	// Phases is where the epochs acked during the latency run spent their time.
	Phases *Phases `json:"phases,omitempty"`
}

// Bound is the latency the Output Rule adds at best: a request waits on average half an
// epoch for the next checkpoint, then the frozen time, then one round trip to the
// standby.
func (e EpochLatency) Bound() float64 { return e.IntervalMs/2 + e.FrozenMs + e.RTTMs }

// Throughput is closed-loop requests per second with some clients at once.
type Throughput struct {
	Clients int     `json:"clients"`
	Ftrun   float64 `json:"ftrun_per_second"`
	Bare    float64 `json:"bare_per_second"`
}

// OutputResult is what the output-commit scenario measured.
type OutputResult struct {
	Rate       int            `json:"requests_per_second"`
	BareLatMs  []float64      `json:"bare_latency_ms"`
	Epochs     []EpochLatency `json:"epochs"`
	Throughput []Throughput   `json:"throughput"`
	// ThroughputInterval is the --interval the throughput runs (closed loop and
	// pipelined) were measured at.
	ThroughputInterval   string  `json:"throughput_interval"`
	ThroughputIntervalMs float64 `json:"throughput_interval_ms"`
	// Pipelined is redis-benchmark with pipelined clients, behind the gate and bare.
	Pipelined []Pipelined `json:"pipelined"`
	// FromMemory is the run at --interval 100ms with `--standby-durability memory`,
	// next to the same interval's run in Epochs (full bench only).
	FromMemory *EpochLatency `json:"from_memory,omitempty"`
	// OnOutput is the run at --interval 100ms with `--epoch-on-output`, its closed-loop
	// throughput in OnOutputThroughput (full bench only).
	OnOutput           *EpochLatency `json:"on_output,omitempty"`
	OnOutputThroughput []Throughput  `json:"on_output_throughput,omitempty"`
}

// outputVariant is how a gated run differs from the default one.
type outputVariant int

const (
	variantDefault    outputVariant = iota
	variantFromMemory               // --standby-durability memory
	variantOnOutput                 // --epoch-on-output
)

// outputPlan is how much an output run measures.
type outputPlan struct {
	rate             int
	window, tpWindow time.Duration
	// pipes are the redis-benchmark loads, each pipeRounds pipelines per client behind
	// the gate and bareRequests SETs against the bare redis (which answers a
	// thousand times faster: the same count would be over in a millisecond).
	pipes        []PipeSpec
	pipeRounds   int
	bareRequests int
	pipeTimeout  time.Duration
}

func newOutputPlan(quick bool) outputPlan {
	p := outputPlan{rate: 50, window: 8 * time.Second, tpWindow: 5 * time.Second,
		pipes: []PipeSpec{{Clients: 1, Pipeline: 16}, {Clients: 50, Pipeline: 16}}, pipeRounds: 16, bareRequests: 200000, pipeTimeout: time.Minute}
	if quick {
		// The pipelined clients run in --quick too, shorter: 6 pipelines per client
		// take two epochs' commit each at most, a few seconds in all.
		p.window, p.tpWindow, p.pipeRounds, p.bareRequests = 3*time.Second, 2*time.Second, 6, 100000
	}
	return p
}

// Output measures what the Output Rule costs a client: reply latency behind the gate
// (`--commit standby`) at several epoch lengths, next to the bound epoch/2 + frozen time
// + one standby round trip and to a bare redis; closed-loop throughput with 1, 10 and 50
// clients and redis-benchmark's pipelined clients, with and without ftrun; and holds
// them to their targets.
func Output(ctx context.Context, env Env) (sec Section, err error) {
	intervals := []time.Duration{20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}
	plan := newOutputPlan(env.Quick)
	if env.Quick {
		intervals = []time.Duration{50 * time.Millisecond, 100 * time.Millisecond}
	}
	const tpInterval = 100 * time.Millisecond
	res := OutputResult{Rate: plan.rate, ThroughputInterval: tpInterval.String(), ThroughputIntervalMs: Ms(tpInterval)}
	sec = Section{About: fmt.Sprintf("redis-server (10 MB of data) under `ftrun run --net --standby --commit standby` on a primary host, "+
		"`ftrun standby` on a second host, a client on a third. Latency: the client sends SETs on one connection at %d a second for %s "+
		"(pipelined), once per `--interval`; the bound is interval/2 + the frozen time of a checkpoint + one TCP round trip to the standby "+
		"(all measured in the same run); the baseline is a bare redis-server on the primary host. Throughput: 1, 10 and 50 clients, each on "+
		"its own connection sending SETs one at a time for %s, against redis under ftrun (interval %s) and against the bare redis. "+
		"Pipelined: `redis-benchmark -t set -r 100000 --csv` from the client host with %s, %d pipelines per client behind the gate "+
		"(interval %s; its time counts the connections' handshakes, which wait for an epoch too) and %d SETs against the bare redis.",
		plan.rate, plan.window, plan.tpWindow, tpInterval, pipeSpecsText(plan.pipes), plan.pipeRounds, tpInterval, plan.bareRequests)}
	defer func() { outputReport(&sec, res) }()
	keys, err := env.Keys()
	if err != nil {
		return sec, err
	}
	bareTP, barePipes, err := outputBare(ctx, env, plan, &res)
	if err != nil {
		return sec, err
	}
	for _, iv := range intervals {
		e, tp, pipes, err := outputRun(ctx, env, keys, iv, plan, iv == tpInterval, variantDefault)
		if len(e.LatMs) > 0 {
			res.Epochs = append(res.Epochs, e)
		}
		for _, t := range tp {
			t.Bare = bareTP[t.Clients]
			res.Throughput = append(res.Throughput, t)
		}
		for i, p := range pipes {
			res.Pipelined = append(res.Pipelined, Pipelined{PipeSpec: plan.pipes[i], Ftrun: p, Bare: barePipes[i]})
			env.Logf("redis-benchmark -c %d -P %d: %.0f req/s behind the gate (p50 %.0f ms), %.0f bare", plan.pipes[i].Clients, plan.pipes[i].Pipeline,
				p.RPS, p.P50Ms, barePipes[i].RPS)
		}
		if err != nil {
			return sec, fmt.Errorf("--interval %s: %w", iv, err)
		}
		env.Logf("--interval %s: p50 %.1f ms, p99 %.1f ms (bound %.1f ms)", iv, Percentile(e.LatMs, 50), Percentile(e.LatMs, 99), e.Bound())
	}
	if !env.Quick {
		e, _, _, err := outputRun(ctx, env, keys, tpInterval, plan, false, variantFromMemory)
		if len(e.LatMs) > 0 {
			res.FromMemory = &e
		}
		if err != nil {
			return sec, fmt.Errorf("--standby-durability memory: %w", err)
		}
		env.Logf("--interval %s, acks from memory: p50 %.1f ms, p99 %.1f ms", tpInterval, Percentile(e.LatMs, 50), Percentile(e.LatMs, 99))
		plan.pipes = nil // the pipelined clients run once, in the default run
		e, tp, _, err := outputRun(ctx, env, keys, tpInterval, plan, true, variantOnOutput)
		if len(e.LatMs) > 0 {
			res.OnOutput, res.OnOutputThroughput = &e, tp
		}
		if err != nil {
			return sec, fmt.Errorf("--epoch-on-output: %w", err)
		}
		env.Logf("--interval %s, --epoch-on-output: p50 %.1f ms, p99 %.1f ms; closed loop %v", tpInterval, Percentile(e.LatMs, 50), Percentile(e.LatMs, 99), tp)
	}
	return sec, nil
}

func pipeSpecsText(specs []PipeSpec) string {
	var parts []string
	for _, s := range specs {
		parts = append(parts, fmt.Sprintf("`-c %d -P %d`", s.Clients, s.Pipeline))
	}
	return strings.Join(parts, " and ")
}

// outputBare is the baseline: a bare redis on the primary host of its own network,
// measured with the open-loop writer (into res), the closed-loop clients and
// redis-benchmark.
func outputBare(ctx context.Context, env Env, plan outputPlan, res *OutputResult) (map[int]float64, []RedisBenchmark, error) {
	hosts, err := env.Hosts(2)
	if err != nil {
		return nil, nil, err
	}
	data, err := env.Dir("redis-bare")
	if err != nil {
		return nil, nil, err
	}
	bare, err := env.Start("redis-bare", hosts[0].NS(), RedisArgs("0.0.0.0", 6379, data)...)
	if err != nil {
		return nil, nil, err
	}
	defer bare.Stop(10 * time.Second)
	addr := net.JoinHostPort(hosts[0].Addr, "6379")
	if _, _, err := WaitRedis(ctx, hosts[1].NS(), addr); err != nil {
		return nil, nil, err
	}
	if err := Populate(ctx, hosts[1].NS(), addr, 10); err != nil {
		return nil, nil, err
	}
	_, lat, err := OpenLoop(hosts[1].NS(), addr, plan.rate, plan.window)
	if err != nil {
		return nil, nil, fmt.Errorf("bare redis: %w", err)
	}
	for _, l := range lat {
		res.BareLatMs = append(res.BareLatMs, Ms(l))
	}
	tp := map[int]float64{}
	for _, n := range []int{1, 10, 50} {
		if tp[n], err = ClosedLoop(hosts[1].NS(), addr, n, plan.tpWindow); err != nil {
			return nil, nil, fmt.Errorf("bare redis, %d clients: %w", n, err)
		}
	}
	var pipes []RedisBenchmark
	for _, p := range plan.pipes {
		r, err := RunRedisBenchmark(ctx, hosts[1], addr, p, plan.bareRequests, plan.pipeTimeout)
		if err != nil {
			return nil, nil, fmt.Errorf("bare redis: %w", err)
		}
		pipes = append(pipes, r)
	}
	env.Logf("bare redis: p50 %.1f ms, p99 %.1f ms; %.0f / %.0f / %.0f requests/s with 1 / 10 / 50 clients",
		Percentile(res.BareLatMs, 50), Percentile(res.BareLatMs, 99), tp[1], tp[10], tp[50])
	return tp, pipes, nil
}

// outputRun is one latency run at iv (and the throughput runs, closed loop and
// pipelined, if asked), with the standby acking from its disk or, fromMemory, from its
// memory.
func outputRun(ctx context.Context, env Env, keys string, iv time.Duration, plan outputPlan, throughput bool, v outputVariant) (EpochLatency, []Throughput, []RedisBenchmark, error) {
	e := EpochLatency{Interval: iv.String(), IntervalMs: Ms(iv)}
	label, extra := fmt.Sprintf("out%d", iv.Milliseconds()), []string{}
	switch v {
	case variantFromMemory:
		e.Interval += ", acks from memory"
		label, extra = label+"m", []string{"--standby-durability", "memory"}
	case variantOnOutput:
		e.Interval += ", --epoch-on-output"
		label, extra = label+"o", []string{"--epoch-on-output"}
	}
	g, err := startGatedRedis(ctx, env, keys, label, "standby", iv.String(), extra...)
	if err != nil {
		return e, nil, nil, err
	}
	defer g.stop()
	if e.RTTMs, err = connectRTT(g.net.Primary.NS(), net.JoinHostPort(g.net.Standby.Addr, "7946")); err != nil {
		return e, nil, nil, err
	}
	before, berr := g.svc.Status()
	_, lat, err := OpenLoop(g.net.Client.NS(), g.addr, plan.rate, plan.window)
	for _, l := range lat {
		e.LatMs = append(e.LatMs, Ms(l))
	}
	if st, serr := g.svc.Status(); serr == nil {
		e.FrozenMs = Ms(st.LastFrozen)
		if berr == nil {
			p := PhasesBetween(e.Interval, before, st)
			e.Phases = &p
		}
	}
	if err != nil {
		return e, nil, nil, errors.Join(err, g.check())
	}
	if !throughput {
		return e, nil, nil, g.check()
	}
	var tps []Throughput
	for _, n := range []int{1, 10, 50} {
		v, err := ClosedLoop(g.net.Client.NS(), g.addr, n, plan.tpWindow)
		if err != nil {
			return e, tps, nil, fmt.Errorf("%d clients: %w", n, err)
		}
		tps = append(tps, Throughput{Clients: n, Ftrun: v})
	}
	var pipes []RedisBenchmark
	for _, p := range plan.pipes {
		r, err := RunRedisBenchmark(ctx, g.net.Client, g.addr, p, p.Requests(plan.pipeRounds), plan.pipeTimeout)
		if err != nil {
			return e, tps, pipes, errors.Join(err, g.check())
		}
		pipes = append(pipes, r)
	}
	return e, tps, pipes, g.check()
}

// connectRTT is the median time of five TCP handshakes from ns to addr: one round trip.
func connectRTT(ns, addr string) (float64, error) {
	var rtts []float64
	for i := 0; i < 5; i++ {
		t := time.Now()
		c, err := DialIn(ns, addr, 2*time.Second)
		if err != nil {
			return 0, fmt.Errorf("round trip to %s: %w", addr, err)
		}
		rtts = append(rtts, Ms(time.Since(t)))
		c.Close()
	}
	return Median(rtts), nil
}

// ClosedLoop runs n clients, each on its own connection sending SETs one at a time,
// for d, and returns the answers per second of all of them together. Its goroutines
// are owned and awaited here.
func ClosedLoop(ns, addr string, n int, d time.Duration) (float64, error) {
	// Dial all at once: behind the gate each handshake waits for an epoch.
	conns := make([]*RESP, n)
	dialErrs := make([]error, n)
	var dials sync.WaitGroup
	for i := range conns {
		dials.Add(1)
		go func() {
			defer dials.Done()
			conns[i], dialErrs[i] = DialRedis(ns, addr, 5*time.Second)
		}()
	}
	dials.Wait()
	if err := errors.Join(dialErrs...); err != nil {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
		return 0, err
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		total int
		errs  []error
	)
	start := time.Now()
	deadline := start.Add(d)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			k := 0
			for time.Now().Before(deadline) {
				if _, err := c.Do(20*time.Second, "SET", KeyName(fmt.Sprintf("tp%d:", i), k), "x"); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("client %d: %w", i, err))
					mu.Unlock()
					return
				}
				k++
			}
			mu.Lock()
			total += k
			mu.Unlock()
		}()
	}
	wg.Wait()
	return float64(total) / time.Since(start).Seconds(), errors.Join(errs...)
}

// outputPhases adds the epoch commit's breakdown at each interval (pure).
func outputPhases(sec *Section, epochs []EpochLatency) {
	var runs []Phases
	for _, e := range epochs {
		if e.Phases != nil && e.Phases.Epochs > 0 {
			runs = append(runs, *e.Phases)
		}
	}
	if len(runs) == 0 {
		return
	}
	sec.Tables = append(sec.Tables, phasesTable("Where an epoch's commit goes, by --interval (epochs acked during the latency run; p50 / p99 over the last 200 epochs)", runs))
	sec.Plots = append(sec.Plots, NamedPlot{File: "output-phases.svg", Bars: phasesBars("Epoch commit by phase (mean per epoch), 10 MB redis", "--interval", runs)})
}

// outputReport fills the section from what was measured (pure).
func outputReport(sec *Section, res OutputResult) {
	sec.Raw = res
	if len(res.Epochs) > 0 {
		t := Table{Title: "Reply latency behind the gate", Header: []string{"--interval", "p50", "p99", "bound (interval/2 + frozen + RTT)", "frozen", "standby RTT", "bare redis p50 / p99"}}
		bound := Series{Name: "bound: interval/2 + frozen + RTT"}
		p50 := Series{Name: "p50 behind the gate"}
		p99 := Series{Name: "p99 behind the gate"}
		bareP50, bareP99 := Percentile(res.BareLatMs, 50), Percentile(res.BareLatMs, 99)
		bare := Series{Name: "bare redis p50"}
		for _, e := range res.Epochs {
			t.Rows = append(t.Rows, []string{e.Interval, FormatValue(Percentile(e.LatMs, 50), "ms"), FormatValue(Percentile(e.LatMs, 99), "ms"),
				FormatValue(e.Bound(), "ms"), FormatValue(e.FrozenMs, "ms"), FormatValue(e.RTTMs, "ms"),
				FormatValue(bareP50, "ms") + " / " + FormatValue(bareP99, "ms")})
			p50.Points = append(p50.Points, Point{X: e.IntervalMs, Y: Percentile(e.LatMs, 50)})
			p99.Points = append(p99.Points, Point{X: e.IntervalMs, Y: Percentile(e.LatMs, 99)})
			bound.Points = append(bound.Points, Point{X: e.IntervalMs, Y: e.Bound()})
			bare.Points = append(bare.Points, Point{X: e.IntervalMs, Y: bareP50})
			sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("reply latency p50 behind the gate, --interval %s", e.Interval),
				Value: Percentile(e.LatMs, 50), Baseline: e.Bound(), Unit: "ms", BaselineName: "bound interval/2 + frozen + RTT"})
		}
		sec.Tables = append(sec.Tables, t)
		sec.Plots = append(sec.Plots, NamedPlot{File: "output-latency-vs-epoch.svg", Plot: Plot{
			Title: "Reply latency behind the output gate vs epoch length", XLabel: "epoch length --interval (ms)", YLabel: "reply latency (ms)",
			YLog: true, Series: []Series{p50, p99, bound, bare}}})
		outputPhases(sec, res.Epochs)
		durabilityTable(sec, res)
		onOutputTable(sec, res)
	}
	if len(res.Throughput) > 0 {
		t := Table{Title: "Throughput, closed loop", Header: []string{"clients", "with ftrun (gate, --commit standby)", "bare redis", "ratio"}}
		var with, without Series
		with.Name, without.Name = "redis under ftrun, behind the gate", "bare redis"
		for _, tp := range res.Throughput {
			t.Rows = append(t.Rows, []string{fmt.Sprint(tp.Clients), fmt.Sprintf("%.0f req/s", tp.Ftrun), fmt.Sprintf("%.0f req/s", tp.Bare),
				ratioCell(Ratio(tp.Ftrun, tp.Bare))})
			with.Points = append(with.Points, Point{X: float64(tp.Clients), Y: tp.Ftrun})
			without.Points = append(without.Points, Point{X: float64(tp.Clients), Y: tp.Bare})
			sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("throughput, %d client(s), behind the gate", tp.Clients),
				Value: tp.Ftrun, Baseline: tp.Bare, Unit: "req/s", BaselineName: "bare redis"})
		}
		sec.Tables = append(sec.Tables, t)
		sec.Plots = append(sec.Plots, NamedPlot{File: "output-throughput.svg", Plot: Plot{
			Title: "Closed-loop throughput with and without ftrun", XLabel: "concurrent clients", YLabel: "requests per second",
			XLog: true, YLog: true, Series: []Series{with, without}}})
	}
	pipelinedTable(sec, res)
	sec.Targets = outputTargets(res)
}

// pipelinedTable shows redis-benchmark's pipelined clients behind the gate and against
// the bare redis (pure).
func pipelinedTable(sec *Section, res OutputResult) {
	if len(res.Pipelined) == 0 {
		return
	}
	t := Table{Title: fmt.Sprintf("Throughput, pipelined clients (redis-benchmark -t set), gate at --interval %s", res.ThroughputInterval),
		Header: []string{"clients x pipeline", "with ftrun", "latency p50 / p99 with ftrun", "requests", "bare redis", "latency p50 / p99 bare", "requests", "ratio"}}
	lat := func(r RedisBenchmark) string {
		if r.P50Ms == 0 && r.P99Ms == 0 {
			return "-"
		}
		return FormatValue(r.P50Ms, "ms") + " / " + FormatValue(r.P99Ms, "ms")
	}
	for _, p := range res.Pipelined {
		t.Rows = append(t.Rows, []string{fmt.Sprintf("%d x %d", p.Clients, p.Pipeline), fmt.Sprintf("%.0f req/s", p.Ftrun.RPS), lat(p.Ftrun),
			fmt.Sprint(p.Ftrun.Requests), fmt.Sprintf("%.0f req/s", p.Bare.RPS), lat(p.Bare), fmt.Sprint(p.Bare.Requests),
			ratioCell(Ratio(p.Ftrun.RPS, p.Bare.RPS))})
		sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("throughput, redis-benchmark -c %d -P %d, behind the gate", p.Clients, p.Pipeline),
			Value: p.Ftrun.RPS, Baseline: p.Bare.RPS, Unit: "req/s", BaselineName: "bare redis"})
	}
	sec.Tables = append(sec.Tables, t)
}

// defaultRunAt is the default run at the --interval of ms, nil if none was measured.
func defaultRunAt(res OutputResult, ms float64) *EpochLatency {
	for i := range res.Epochs {
		if res.Epochs[i].IntervalMs == ms {
			return &res.Epochs[i]
		}
	}
	return nil
}

// durabilityTable sets the run acking from memory next to the same interval's run
// acking from disk: reply latency, commit latency and the standby's durable phase.
func durabilityTable(sec *Section, res OutputResult) {
	m := res.FromMemory
	if m == nil {
		return
	}
	disk := defaultRunAt(res, m.IntervalMs)
	if disk == nil {
		return
	}
	t := Table{Title: fmt.Sprintf("Standby durability at --interval %s: acks from disk (the default) vs from memory", disk.Interval),
		Header: []string{"standby acks", "reply p50", "reply p99", "commit latency p50", "standby durable phase, mean"}}
	for _, r := range []struct {
		name string
		e    *EpochLatency
	}{{"from disk (fsync)", disk}, {"from memory", m}} {
		commit, durable := "-", "-"
		if p := r.e.Phases; p != nil {
			commit, durable = FormatValue(p.CommitP50Ms, "ms"), FormatValue(p.MeanMs["durable"], "ms")
		}
		t.Rows = append(t.Rows, []string{r.name, FormatValue(Percentile(r.e.LatMs, 50), "ms"), FormatValue(Percentile(r.e.LatMs, 99), "ms"), commit, durable})
	}
	sec.Tables = append(sec.Tables, t)
	sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("reply latency p50 with the standby acking from memory, --interval %s", disk.Interval),
		Value: Percentile(m.LatMs, 50), Baseline: Percentile(disk.LatMs, 50), Unit: "ms", BaselineName: "acking from disk"})
}

// onOutputTable sets the run with --epoch-on-output next to the same interval's
// default run: reply and commit latency, and closed-loop throughput (pure).
func onOutputTable(sec *Section, res OutputResult) {
	o := res.OnOutput
	if o == nil {
		return
	}
	def := defaultRunAt(res, o.IntervalMs)
	if def == nil {
		return
	}
	tps := func(ts []Throughput) string {
		var parts []string
		for _, t := range ts {
			parts = append(parts, fmt.Sprintf("%.0f", t.Ftrun))
		}
		if len(parts) == 0 {
			return "-"
		}
		return strings.Join(parts, " / ") + " req/s"
	}
	t := Table{Title: fmt.Sprintf("Epochs on output at --interval %s: the next epoch starts once output waits and the previous epoch's output is out", def.Interval),
		Header: []string{"epochs", "reply p50", "reply p99", "commit latency p50", "closed loop, 1 / 10 / 50 clients"}}
	for _, r := range []struct {
		name string
		e    *EpochLatency
		tp   []Throughput
	}{{"every --interval (the default)", def, res.Throughput}, {"--epoch-on-output", o, res.OnOutputThroughput}} {
		commit := "-"
		if p := r.e.Phases; p != nil {
			commit = FormatValue(p.CommitP50Ms, "ms")
		}
		t.Rows = append(t.Rows, []string{r.name, FormatValue(Percentile(r.e.LatMs, 50), "ms"), FormatValue(Percentile(r.e.LatMs, 99), "ms"), commit, tps(r.tp)})
	}
	sec.Tables = append(sec.Tables, t)
	sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("reply latency p50 with --epoch-on-output, --interval %s", def.Interval),
		Value: Percentile(o.LatMs, 50), Baseline: Percentile(def.LatMs, 50), Unit: "ms", BaselineName: "epochs every --interval"})
	for i, tp := range res.OnOutputThroughput {
		var base float64
		if i < len(res.Throughput) {
			base = res.Throughput[i].Ftrun
		}
		sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("throughput, %d client(s), behind the gate, --epoch-on-output", tp.Clients),
			Value: tp.Ftrun, Baseline: base, Unit: "req/s", BaselineName: "epochs every --interval"})
	}
}

// ratioCell writes a ratio with two significant digits when it is small.
func ratioCell(r float64) string {
	if r < 0.1 {
		return fmt.Sprintf("%.2g", r)
	}
	return fmt.Sprintf("%.2f", r)
}

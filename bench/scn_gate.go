package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// GateRun is one commit mode's latency distribution.
type GateRun struct {
	Commit    string    `json:"commit"`
	Interval  string    `json:"interval"`
	Sent      int       `json:"sent"`
	LatMs     []float64 `json:"latency_ms"`
	CommitP50 float64   `json:"status_commit_p50_ms"`
	CommitP99 float64   `json:"status_commit_p99_ms"`
	Frozen    float64   `json:"last_frozen_ms"`
}

// GateResult is what the gate scenario measured.
type GateResult struct {
	Rate int       `json:"requests_per_second"`
	Runs []GateRun `json:"runs"`
}

// OpenLoop sends SET requests on one connection at a fixed rate for d, whatever the
// answers do (requests are pipelined), and returns each answer's latency in order.
// The sender is a goroutine owned and awaited here; the answers are read by the
// calling goroutine.
func OpenLoop(ns, addr string, rate int, d time.Duration) (sent int, lat []time.Duration, err error) {
	conn, err := DialIn(ns, addr, 5*time.Second)
	if err != nil {
		return 0, nil, err
	}
	defer conn.Close()
	total := int(d.Seconds() * float64(rate))
	times := make(chan time.Time, total)
	sendErr := make(chan error, 1)
	go func() {
		defer close(times)
		period := time.Second / time.Duration(rate)
		start := time.Now()
		for i := 0; i < total; i++ {
			if w := time.Until(start.Add(time.Duration(i) * period)); w > 0 {
				time.Sleep(w)
			}
			req := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", len(KeyName("g:", i)), KeyName("g:", i), len(KeyValue("g:", i)), KeyValue("g:", i))
			t := time.Now()
			_ = conn.SetWriteDeadline(t.Add(10 * time.Second))
			if _, err := io.WriteString(conn, req); err != nil {
				sendErr <- fmt.Errorf("send request %d: %w", i, err)
				return
			}
			times <- t
		}
		sendErr <- nil
	}()
	rd := bufio.NewReader(conn)
	var readErr error
	for t := range times {
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		line, err := rd.ReadString('\n')
		if err != nil {
			readErr = fmt.Errorf("answer %d: %w", sent, err)
			conn.Close() // unblocks the sender
			for range times {
			}
			break
		}
		if !strings.HasPrefix(line, "+OK") {
			readErr = fmt.Errorf("answer %d: %q", sent, strings.TrimSpace(line))
			conn.Close()
			for range times {
			}
			break
		}
		lat = append(lat, time.Since(t))
		sent++
	}
	return sent, lat, errors.Join(<-sendErr, readErr)
}

// Gate measures the latency a client sees with and without the output gate: redis
// under `ftrun run --net --standby` with each commit mode in turn, an open-loop client
// on another host writing at a fixed rate.
func Gate(ctx context.Context, env Env) (sec Section, err error) {
	window := 15 * time.Second
	if env.Quick {
		window = 3 * time.Second
	}
	res := GateResult{Rate: 200}
	interval := "100ms"
	sec = Section{About: fmt.Sprintf("redis-server (10 MB of data) under `ftrun run --net --addr ... --standby ... --interval %s` on a primary host, "+
		"`ftrun standby` on a second host, and a client on a third that sends SETs on one connection at a fixed %d a second for %s, "+
		"pipelined (it does not wait for answers), and records each answer's latency. Once per `--commit` mode: `standby` (the default: "+
		"a reply leaves once the standby holds the epoch that explains it), `local` (once that epoch is on local disk) and the baseline `off` "+
		"(no gate; same placement, same checkpoints and shipping). The standby runs with `--takeover-timeout 1h`: this measures latency, not failover, "+
		"and a primary starved of CPU for a second must not be taken for dead.", interval, res.Rate, window)}
	defer func() { gateReport(&sec, res) }()
	keys, err := env.Keys()
	if err != nil {
		return sec, err
	}
	for _, commit := range []string{"standby", "local", "off"} {
		run, err := gateRun(ctx, env, keys, commit, interval, res.Rate, window)
		if len(run.LatMs) > 0 {
			res.Runs = append(res.Runs, run)
		}
		if err != nil {
			return sec, fmt.Errorf("--commit %s: %w", commit, err)
		}
		env.Logf("--commit %s: %d answers, p50 %.1f ms, p99 %.1f ms", commit, len(run.LatMs), Percentile(run.LatMs, 50), Percentile(run.LatMs, 99))
	}
	return sec, nil
}

// gatedRedis is redis-server (10 MB of data) under `ftrun run --net --standby` on the
// primary host of a new ServiceNet, protected by a standby that never takes over.
type gatedRedis struct {
	net     ServiceNet
	addr    string // the service address and port
	svc     *Service
	sbState string
	stop    func()
}

func startGatedRedis(ctx context.Context, env Env, keys, label, commit, interval string, extra ...string) (*gatedRedis, error) {
	snet, err := env.NewServiceNet()
	if err != nil {
		return nil, err
	}
	name := env.Name("-" + label)
	env.Defer(func() { KillCgroup(name) })
	sb, sbState, err := env.RunStandby("standby-"+label, snet.Standby.NS(), snet.Standby.Addr+":7946", keys, NoTakeover...)
	if err != nil {
		return nil, err
	}
	data, err := env.Dir("redis-" + label)
	if err != nil {
		return nil, err
	}
	svc, err := env.RunFtrun(name, snet.Primary.NS(), append([]string{"--interval", interval, "--discard", "--no-final-checkpoint",
		"--standby", snet.Standby.Addr + ":7946", "--keys", keys, "--net", "--addr", snet.Addr + "/24", "--commit", commit}, extra...),
		RedisArgs("0.0.0.0", 6379, data)...)
	if err != nil {
		return nil, err
	}
	g := &gatedRedis{net: snet, addr: net.JoinHostPort(snet.Addr, "6379"), svc: svc, sbState: sbState, stop: func() {
		// A standby takes over a primary that goes silent, stopped or not: stop it first.
		_ = sb.Stop(30 * time.Second)
		_ = svc.Stop(30 * time.Second)
		KillCgroup(name)
	}}
	if _, err := svc.WaitFor(ctx, "redis running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 }); err != nil {
		g.stop()
		return nil, err
	}
	if err := Populate(ctx, snet.Client.NS(), g.addr, 10); err != nil {
		g.stop()
		return nil, err
	}
	if _, err := svc.WaitFor(ctx, "protected", time.Minute, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 2
	}); err != nil {
		g.stop()
		return nil, err
	}
	return g, nil
}

// check fails when what was measured is not what was meant: a restore or a take-over
// happened during the measurement.
func (g *gatedRedis) check() error {
	var err error
	if st, serr := g.svc.Status(); serr == nil && st.Restores > 0 {
		err = fmt.Errorf("the program was restored %d time(s) during the measurement; ftrun's log ends:\n%s", st.Restores, g.svc.Tail(10))
	}
	return errors.Join(err, CheckNoTakeover(g.sbState))
}

func gateRun(ctx context.Context, env Env, keys, commit, interval string, rate int, window time.Duration) (GateRun, error) {
	run := GateRun{Commit: commit, Interval: interval}
	g, err := startGatedRedis(ctx, env, keys, "gate"+commit, commit, interval)
	if err != nil {
		return run, err
	}
	defer g.stop()
	sent, lat, err := OpenLoop(g.net.Client.NS(), g.addr, rate, window)
	run.Sent = sent
	for _, l := range lat {
		run.LatMs = append(run.LatMs, Ms(l))
	}
	if st, serr := g.svc.Status(); serr == nil {
		run.CommitP50, run.CommitP99, run.Frozen = Ms(st.CommitLatencyP50), Ms(st.CommitLatencyP99), Ms(st.LastFrozen)
	}
	return run, errors.Join(err, g.check())
}

// gateReport fills the section from what was measured (pure).
func gateReport(sec *Section, res GateResult) {
	sec.Raw = res
	if len(res.Runs) == 0 {
		return
	}
	t := Table{Header: []string{"--commit", "answers", "p50", "p90", "p99", "max", "epoch commit p50 / p99 (`ftrun status`)"}}
	var series []Series
	byMode := map[string]GateRun{}
	for _, r := range res.Runs {
		byMode[r.Commit] = r
		t.Rows = append(t.Rows, []string{r.Commit, fmt.Sprint(len(r.LatMs)), FormatValue(Percentile(r.LatMs, 50), "ms"), FormatValue(Percentile(r.LatMs, 90), "ms"),
			FormatValue(Percentile(r.LatMs, 99), "ms"), FormatValue(Percentile(r.LatMs, 100), "ms"),
			FormatValue(r.CommitP50, "ms") + " / " + FormatValue(r.CommitP99, "ms")})
		series = append(series, CDF("--commit "+r.Commit, r.LatMs))
	}
	sec.Tables = append(sec.Tables, t)
	sec.Plots = append(sec.Plots, NamedPlot{File: "gate-latency.svg", Plot: Plot{
		Title: "redis reply latency with and without the output gate", XLabel: "reply latency (ms)", YLabel: "replies at or below (%)", XLog: true,
		Series: series}})
	off, ok := byMode["off"]
	if !ok {
		return
	}
	for _, mode := range []string{"standby", "local"} {
		r, ok := byMode[mode]
		if !ok {
			continue
		}
		for _, q := range []float64{50, 99} {
			sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("reply latency p%.0f, output gate --commit %s (interval %s, %d req/s)", q, mode, r.Interval, res.Rate),
				Value: Percentile(r.LatMs, q), Baseline: Percentile(off.LatMs, q), Unit: "ms", BaselineName: "no gate (--commit off)"})
		}
	}
}

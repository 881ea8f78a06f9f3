package bench

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/ftrun/ftrun/failover"
	"github.com/ftrun/ftrun/supervisor"
)

// PingPongEvent is one step of the two failovers.
type PingPongEvent struct {
	Label string    `json:"label"`
	At    time.Time `json:"at"`
}

// PingPongResult is what the ping-pong scenario measured.
type PingPongResult struct {
	DataMB int `json:"data_mb"`
	// KillToFirstAnswerMs per failover (A -> B, B -> A).
	KillToFirstAnswerMs []float64 `json:"kill_to_first_answer_ms"`
	// ReturnToProtectedMs per returning host: from its ftrun's start to the live
	// copy's "protected by standby" (a full resync of the program, then deltas).
	ReturnToProtectedMs []float64       `json:"return_to_protected_ms"`
	Acked               int             `json:"keys_acked"`
	Lost                int             `json:"keys_lost"`
	Events              []PingPongEvent `json:"events"`
	Samples             []ClientSample  `json:"samples"`
}

// PingPong runs redis under `ftrun run --net --standby B` on host A and `ftrun standby
// --peer A` on host B, with a client writing on one connection throughout, and fails
// over twice: A dies, B takes over, A comes back (same command) as B's standby and is
// resynced; then B dies, A takes over, B comes back as A's standby. It reports the
// client's timeline across both, the latency in each phase (the gate stays in force on
// the live copy: replies wait for an epoch the other host holds, or, while that host
// is down, for one on local disk), and how long a returning host takes to protect the
// live copy again.
func PingPong(ctx context.Context, env Env) (sec Section, err error) {
	phase := 4 * time.Second
	res := PingPongResult{DataMB: 100}
	if env.Quick {
		phase, res.DataMB = 2*time.Second, 20
	}
	sec = Section{About: fmt.Sprintf("Three network-namespace hosts: A, B and a client. redis-server (%d MB of data) runs under "+
		"`ftrun run --net --standby B --listen A` on A (interval 100 ms); B runs `ftrun standby --peer A --interval 100ms`. The client "+
		"writes keys on one connection (about 200 SETs a second, one at a time, 15 s timeout). Every %s: A dies (link down, ftrun and "+
		"the program killed); A comes back with the same command line; B dies; B comes back. Each host that comes back serves as the "+
		"live copy's standby: the live copy sends it a full epoch, then deltas. Baseline for the latency: the phase before the first "+
		"failure, with A protected by B.", res.DataMB, phase)}
	defer func() { pingPongReport(&sec, res) }()

	keys, err := env.Keys()
	if err != nil {
		return sec, err
	}
	snet, err := env.NewServiceNet()
	if err != nil {
		return sec, err
	}
	a, b, client := snet.Primary, snet.Standby, snet.Client
	svc := env.Name("-pp")
	env.Defer(func() { KillCgroup(svc) })
	target := net.JoinHostPort(snet.Addr, "6379")
	standbyArgs := []string{"--peer", a.Addr + ":7946", "--interval", "100ms"}
	sb, bState, err := env.RunStandby("pp-b", b.NS(), b.Addr+":7946", keys, standbyArgs...)
	if err != nil {
		return sec, err
	}
	defer func() { _ = sb.Stop(30 * time.Second) }()
	aState, err := env.Dir("state-pp-a")
	if err != nil {
		return sec, err
	}
	data, err := env.Dir("redis-pp")
	if err != nil {
		return sec, err
	}
	argv := append([]string{env.Ftrun, "run", "--name", svc, "--state-dir", aState, "--interval", "100ms", "--standby", b.Addr + ":7946",
		"--listen", a.Addr + ":7946", "--keys", keys, "--net", "--addr", snet.Addr + "/24", "--"}, RedisArgs("0.0.0.0", 6379, data)...)
	pa, err := env.Start("pp-a", a.NS(), argv...)
	if err != nil {
		return sec, err
	}
	defer func() { _ = pa.Stop(30 * time.Second) }()
	status := func(dir string) (supervisor.Status, bool) {
		resp, err := supervisor.Query(dir, supervisor.Request{Op: "status"}, 2*time.Second)
		if err != nil || resp.Status == nil {
			return supervisor.Status{}, false
		}
		return *resp.Status, true
	}
	waitFor := func(what, dir string, timeout time.Duration, ok func(supervisor.Status) bool) error {
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			if st, got := status(dir); got && ok(st) {
				return nil
			}
			if err := Sleep(ctx, 20*time.Millisecond); err != nil {
				return err
			}
		}
		return fmt.Errorf("%s: not within %s", what, timeout)
	}
	protectedBy := func(h Host) func(supervisor.Status) bool {
		return func(s supervisor.Status) bool {
			return s.Pid > 0 && strings.HasPrefix(s.Protection, "protected by standby "+h.Addr) && s.StandbyEpoch > 0
		}
	}
	if err := waitFor("redis running on A", aState, 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 }); err != nil {
		return sec, err
	}
	if err := Populate(ctx, client.NS(), target, res.DataMB); err != nil {
		return sec, err
	}
	st, _ := status(aState)
	if err := waitFor("A protected by B", aState, 2*time.Minute, func(s supervisor.Status) bool {
		return protectedBy(b)(s) && s.StandbyEpoch > st.Epoch
	}); err != nil {
		return sec, err
	}
	liveB := func() string {
		for _, s := range mustStandbyStatus(bState) {
			if s.Service == svc && s.LiveStateDir != "" {
				return s.LiveStateDir
			}
		}
		return ""
	}
	const prefix = "pp:"
	stop := make(chan struct{})
	samples := runClient(client.NS(), []string{target}, prefix, 200, 5*time.Second, 15*time.Second, stop)
	stopped := false
	stopClient := func() {
		if !stopped {
			stopped = true
			close(stop)
			res.Samples = <-samples
		}
	}
	defer stopClient()
	mark := func(label string) time.Time {
		now := time.Now()
		res.Events = append(res.Events, PingPongEvent{Label: label, At: now})
		env.Logf("%s", label)
		return now
	}
	mark("client writing; A protected by B")
	if err := Sleep(ctx, phase); err != nil {
		return sec, err
	}
	die := func(h Host, kill func()) {
		_ = h.LinkDown()
		kill()
		KillCgroup(svc)
		dropServiceLinks(h)
	}

	// A dies; B takes over.
	mark("A killed")
	die(a, pa.Kill)
	deadline := time.Now().Add(30 * time.Second)
	for liveB() == "" || !running(status, liveB()) {
		if time.Now().After(deadline) {
			return sec, fmt.Errorf("B did not take over; its log ends:\n%s", sb.Tail(15))
		}
		if err := Sleep(ctx, 10*time.Millisecond); err != nil {
			return sec, err
		}
	}
	if err := Sleep(ctx, phase); err != nil {
		return sec, err
	}
	// A comes back as B's standby.
	_ = a.IP("link", "set", "eth0", "up")
	back := mark("A back (same command)")
	if pa, err = env.Start("pp-a", a.NS(), argv...); err != nil {
		return sec, err
	}
	if err := waitFor("B's live copy protected by A", liveB(), 5*time.Minute, protectedBy(a)); err != nil {
		// What ends each of B's ships to A is in B's log, not A's.
		return sec, fmt.Errorf("%w; A's log ends:\n%s\nB's log ends:\n%s", err, pa.Tail(15), sb.Tail(25))
	}
	res.ReturnToProtectedMs = append(res.ReturnToProtectedMs, Ms(time.Since(back)))
	mark("B protected by A")
	if err := Sleep(ctx, phase); err != nil {
		return sec, err
	}
	// B dies; A takes over.
	mark("B killed")
	die(b, sb.Kill)
	if err := waitFor("A live", aState, 30*time.Second, func(s supervisor.Status) bool {
		return s.Role == supervisor.RolePrimary && s.Pid > 0
	}); err != nil {
		return sec, fmt.Errorf("%w; A's log ends:\n%s", err, pa.Tail(15))
	}
	if err := Sleep(ctx, phase); err != nil {
		return sec, err
	}
	// B comes back as A's standby.
	_ = b.IP("link", "set", "eth0", "up")
	back = mark("B back (same command)")
	if sb, _, err = env.RunStandby("pp-b", b.NS(), b.Addr+":7946", keys, standbyArgs...); err != nil {
		return sec, err
	}
	if err := waitFor("A protected by B again", aState, 5*time.Minute, protectedBy(b)); err != nil {
		return sec, err
	}
	res.ReturnToProtectedMs = append(res.ReturnToProtectedMs, Ms(time.Since(back)))
	mark("A protected by B")
	if err := Sleep(ctx, phase); err != nil {
		return sec, err
	}
	stopClient()
	for _, e := range res.Events {
		if strings.HasSuffix(e.Label, "killed") {
			if first, ok := FirstAnswerAfter(res.Samples, e.At); ok {
				res.KillToFirstAnswerMs = append(res.KillToFirstAnswerMs, Ms(first.Done().Sub(e.At)))
			}
		}
	}
	acked := AckedBefore(res.Samples, prefix, time.Now())
	c, err := DialRedis(client.NS(), target, 5*time.Second)
	if err != nil {
		return sec, err
	}
	have, err := CountExisting(c, acked)
	c.Close()
	if err != nil {
		return sec, err
	}
	res.Acked, res.Lost = len(acked), len(acked)-have
	env.Logf("two failovers: kill -> first answer %v ms; back -> protected %v ms; %d of %d acknowledged keys lost",
		res.KillToFirstAnswerMs, res.ReturnToProtectedMs, res.Lost, res.Acked)
	return sec, nil
}

func running(status func(string) (supervisor.Status, bool), dir string) bool {
	st, ok := status(dir)
	return ok && st.State == supervisor.StateRunning
}

func mustStandbyStatus(state string) []failover.StandbyStatus {
	ss, _ := StandbyStatus(state)
	return ss
}

// pingPongReport fills the section from what was measured (pure).
func pingPongReport(sec *Section, res PingPongResult) {
	sec.Raw = res
	if len(res.Samples) == 0 || len(res.Events) == 0 {
		return
	}
	// Latency per phase, between consecutive events.
	t := Table{Header: []string{"phase", "requests answered", "reply latency p50", "p99"}}
	for i, e := range res.Events {
		end := time.Now().Add(time.Hour)
		if i+1 < len(res.Events) {
			end = res.Events[i+1].At
		}
		var lat []float64
		for _, s := range res.Samples {
			if s.OK && !s.Sent.Before(e.At) && s.Sent.Before(end) {
				lat = append(lat, s.LatMs)
			}
		}
		t.Rows = append(t.Rows, []string{"from " + e.Label, fmt.Sprint(len(lat)), FormatValue(Median(lat), "ms"), FormatValue(Percentile(lat, 99), "ms")})
	}
	sec.Tables = append(sec.Tables, t)
	var base []float64
	for _, s := range res.Samples {
		if s.OK && s.Sent.Before(res.Events[min(1, len(res.Events)-1)].At) {
			base = append(base, s.LatMs)
		}
	}
	for i, ms := range res.KillToFirstAnswerMs {
		name := []string{"A -> B", "B -> A"}[min(i, 1)]
		sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("failover %s (gated live copy): host killed -> first answer on the same connection", name),
			Value: ms, Baseline: Median(base), Unit: "ms", BaselineName: "reply latency p50 before, A protected by B", NoRatio: true})
	}
	for i, ms := range res.ReturnToProtectedMs {
		name := []string{"A back as B's standby", "B back as A's standby"}[min(i, 1)]
		sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("%s: ftrun started -> live copy protected again (%d MB redis, full resync)", name, res.DataMB),
			Value: ms, Unit: "ms", BaselineText: "-", NoRatio: true})
	}
	sec.Figures = append(sec.Figures, Figure{Name: "two failovers: keys lost of keys acknowledged", Value: float64(res.Lost), Baseline: float64(res.Acked),
		ValueText: fmt.Sprintf("%d of %d", res.Lost, res.Acked), BaselineText: fmt.Sprintf("%d", res.Acked), BaselineName: "acknowledged", NoRatio: true})
	t0 := res.Events[0].At
	var ok, failed Series
	ok.Name, ok.Style = "answered", Scatter
	failed.Name, failed.Style = "failed or timed out", Scatter
	for _, s := range res.Samples {
		pt := Point{s.Sent.Sub(t0).Seconds(), max(s.LatMs, 0.01)}
		if s.OK {
			ok.Points = append(ok.Points, pt)
		} else {
			failed.Points = append(failed.Points, pt)
		}
	}
	series := []Series{ok}
	if len(failed.Points) > 0 {
		series = append(series, failed)
	}
	var marks []Mark
	for _, e := range res.Events[1:] {
		marks = append(marks, Mark{X: e.At.Sub(t0).Seconds(), Label: e.Label})
	}
	sec.Plots = append(sec.Plots, NamedPlot{File: "pingpong-timeline.svg", Plot: Plot{Title: "Two failovers (A -> B -> A) seen by one client connection",
		XLabel: "time the request was sent (s)", YLabel: "reply latency (ms)", YLog: true, Series: series, Marks: marks}})
}

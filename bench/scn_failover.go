package bench

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// ClientSample is one request of the failover client.
type ClientSample struct {
	Key   int       `json:"key"`
	Sent  time.Time `json:"sent"`
	LatMs float64   `json:"latency_ms"`
	OK    bool      `json:"ok"`
	Host  string    `json:"host"` // the address that answered (or failed to)
}

// Done is when the answer came (or the request failed).
func (s ClientSample) Done() time.Time {
	return s.Sent.Add(time.Duration(s.LatMs * float64(time.Millisecond)))
}

// FailoverVariant is one way of running redis with a standby, killed once.
type FailoverVariant struct {
	Name                string         `json:"name"`
	Flags               string         `json:"flags"`
	Interval            string         `json:"interval"`
	Kill                time.Time      `json:"kill"` // the primary host began to die
	Dead                time.Time      `json:"dead"` // nothing of it was left`
	KillToFirstAnswerMs float64        `json:"kill_to_first_answer_ms"`
	Acked               int            `json:"keys_acked_before_kill"`
	Lost                int            `json:"keys_lost"`
	EpochAtKill         uint64         `json:"epoch_at_kill"`
	StandbyEpochAtKill  uint64         `json:"standby_epoch_at_kill"`
	TakeoverTimeout     string         `json:"takeover_timeout"`
	DecideMs            float64        `json:"kill_to_takeover_decision_ms"` // from the standby's log
	RestoreMs           float64        `json:"restore_ms"`                   // the standby's restore, as it logged it
	Recovery            string         `json:"recovery"`                     // how the standby brought the program back
	Restored            bool           `json:"restored"`                     // from a checkpoint (not a fresh start)
	Samples             []ClientSample `json:"samples"`
}

// FailoverResult is what the failover scenario measured.
type FailoverResult struct {
	FreshStartMs    float64           `json:"fresh_start_to_first_answer_ms"`
	TakeoverTimeout string            `json:"takeover_timeout"`
	Variants        []FailoverVariant `json:"variants"`
}

// FirstAnswerAfter is the first request answered after t, and whether there is one.
func FirstAnswerAfter(samples []ClientSample, t time.Time) (ClientSample, bool) {
	for _, s := range samples {
		if s.OK && s.Done().After(t) {
			return s, true
		}
	}
	return ClientSample{}, false
}

// AckedBefore are the keys whose SET was answered before t.
func AckedBefore(samples []ClientSample, prefix string, t time.Time) []string {
	var out []string
	for _, s := range samples {
		if s.OK && s.Done().Before(t) {
			out = append(out, KeyName(prefix, s.Key))
		}
	}
	return out
}

// runClient writes to redis on one connection at about rate requests a second (each
// connect waits at most dial, each request at most timeout), trying the addresses in turn when the connection
// fails, until stop is closed. The returned channel yields every request once the
// client has ended; the caller must receive from it.
func runClient(ns string, addrs []string, prefix string, rate int, dial, timeout time.Duration, stop <-chan struct{}) <-chan []ClientSample {
	out := make(chan []ClientSample, 1)
	go func() {
		var samples []ClientSample
		defer func() { out <- samples }()
		var c *RESP
		host, next := "", 0
		period := time.Second / time.Duration(rate)
		defer func() {
			if c != nil {
				c.Close()
			}
		}()
		for key := 0; ; {
			select {
			case <-stop:
				return
			default:
			}
			if c == nil {
				host = addrs[next%len(addrs)]
				next++
				var err error
				if c, err = DialRedis(ns, host, dial); err != nil {
					c = nil
					time.Sleep(3 * time.Millisecond)
					continue
				}
			}
			t := time.Now()
			got, err := c.Do(timeout, "SET", KeyName(prefix, key), KeyValue(prefix, key))
			samples = append(samples, ClientSample{Key: key, Sent: t, LatMs: Ms(time.Since(t)), OK: err == nil && got == "OK", Host: host})
			key++
			if err != nil {
				c.Close()
				c = nil
				continue
			}
			if d := period - time.Since(t); d > 0 {
				time.Sleep(d)
			}
		}
	}()
	return out
}

// Failover kills everything on the primary host (and takes its link down) while a
// client on a third host writes to redis, and records what the client sees until the
// standby's copy answers: a timeline of reply latencies, the time from the kill to the
// first answer, and the keys lost; next to a fresh start of redis on the standby host.
// It runs redis two ways: with `--net` (its own address, which moves to the standby,
// and the output gate), and with `--standby` alone (the client must reconnect to the
// standby host's address).
func Failover(ctx context.Context, env Env) (sec Section, err error) {
	before, after := 5*time.Second, 4*time.Second
	if env.Quick {
		before, after = 3*time.Second, 2*time.Second
	}
	res := FailoverResult{TakeoverTimeout: supervisor.HeartbeatTimeout.String()}
	sec = Section{About: fmt.Sprintf("Three network-namespace hosts on a bridge: primary, standby, client. redis-server (10 MB of data) runs under "+
		"`ftrun run --standby` on the primary host and `ftrun standby` (default take-over timeout %s) on the standby host. A client on the "+
		"client host writes keys on one connection (about 200 SETs a second, one at a time) and reconnects only if that connection fails. "+
		"After %s the primary host dies: its link goes down, ftrun and the program's cgroup are killed with SIGKILL. Two ways of running redis: "+
		"with `--net --addr` (redis has an address of its own that moves to the standby with it, and its replies wait in the output gate "+
		"until the standby holds the epoch that explains them; interval 100 ms, request timeout 15 s), and with `--standby` alone "+
		"(default interval 1 s; the client's requests time out after 500 ms, then it tries the primary's and the standby's address in turn, each with a 25 ms connect timeout). "+
		"Each way runs twice (the default only with --quick): with the standby's default take-over timeout, and with `--takeover-timeout %s`, which shows what the rest "+
		"of the chain (restore, announcing the address, the client's own retransmission timer) takes. The take-over decision and the "+
		"restore are read from the standby's log. "+
		"Baseline: a fresh redis-server started on the standby host (no data: what a plain restart supervisor there would give, "+
		"before the time it needs to notice the death).", res.TakeoverTimeout, before, FastTakeover)}
	defer func() { failoverReport(&sec, res) }()

	keys, err := env.Keys()
	if err != nil {
		return sec, err
	}
	// Each way twice: with the default take-over timeout, and with a shorter one that
	// shows what the rest of the chain takes. --quick (the test suite's size, with
	// ftrun built with the race detector) runs the default only: there a 300 ms
	// timeout takes a loaded primary's first seconds for its death now and then (the
	// standby goes live while the primary is still shipping its first epochs), which
	// measures the machine, not the chain.
	takeovers := []string{"", FastTakeover}
	if env.Quick {
		takeovers = takeovers[:1]
	}
	for i, takeover := range takeovers {
		suffix, label := "", ""
		if takeover != "" {
			suffix, label = "t", ", --takeover-timeout "+takeover
		}
		// With --net: the service address moves, the connection is kept.
		snet, err := env.NewServiceNet()
		if err != nil {
			return sec, err
		}
		v, err := failoverVariant(ctx, env, failoverSetup{
			name: "--net (output gate)" + label, svc: env.Name("-fonet" + suffix), primary: snet.Primary, standby: snet.Standby, client: snet.Client,
			keys: keys, interval: "100ms", dial: 5 * time.Second, timeout: 15 * time.Second, before: before, after: after,
			flags:    []string{"--net", "--addr", snet.Addr + "/24"},
			takeover: takeover,
			targets:  []string{net.JoinHostPort(snet.Addr, "6379")},
		})
		res.Variants = append(res.Variants, v)
		if err != nil {
			return sec, fmt.Errorf("with --net%s: %w", label, err)
		}

		// Without --net: the client moves to the standby host's address itself.
		hosts, err := env.Hosts(3)
		if err != nil {
			return sec, err
		}
		primary, stby, client := hosts[0], hosts[1], hosts[2]
		if i == 0 {
			res.FreshStartMs, err = freshStart(ctx, env, stby, client)
			if err != nil {
				return sec, err
			}
			env.Logf("baseline: a fresh redis on the standby host answers %.0f ms after exec", res.FreshStartMs)
		}
		v, err = failoverVariant(ctx, env, failoverSetup{
			name: "--standby alone" + label, svc: env.Name("-foplain" + suffix), primary: primary, standby: stby, client: client,
			keys: keys, interval: "1s", dial: 25 * time.Millisecond, timeout: 500 * time.Millisecond, before: before, after: after,
			takeover: takeover,
			targets:  []string{net.JoinHostPort(primary.Addr, "6379"), net.JoinHostPort(stby.Addr, "6379")},
		})
		res.Variants = append(res.Variants, v)
		if err != nil {
			return sec, fmt.Errorf("with --standby alone%s: %w", label, err)
		}
	}
	return sec, nil
}

// FastTakeover is the shorter take-over timeout the failover scenario also runs with.
const FastTakeover = "300ms"

// freshStart is the baseline: a fresh redis on the standby host, from exec to its
// first answer to the client host.
func freshStart(ctx context.Context, env Env, stby, client Host) (float64, error) {
	data, err := env.Dir("redis-fresh")
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	fresh, err := env.Start("redis-fresh", stby.NS(), RedisArgs("0.0.0.0", 6379, data)...)
	if err != nil {
		return 0, err
	}
	defer fresh.Kill()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	t1, _, err := WaitRedis(wctx, client.NS(), net.JoinHostPort(stby.Addr, "6379"))
	if err != nil {
		return 0, err
	}
	return Ms(t1.Sub(t0)), nil
}

type failoverSetup struct {
	name, svc                string
	primary, standby, client Host
	keys, interval           string
	dial, timeout            time.Duration // the client's connect and request timeouts
	before, after            time.Duration
	flags                    []string // extra `ftrun run` flags
	takeover                 string   // the standby's --takeover-timeout; "" for its default
	targets                  []string // addresses the client tries, in turn
}

func failoverVariant(ctx context.Context, env Env, o failoverSetup) (FailoverVariant, error) {
	v := FailoverVariant{Name: o.name, Interval: o.interval, Flags: strings.Join(o.flags, " "), TakeoverTimeout: supervisor.HeartbeatTimeout.String()}
	var extra []string
	if o.takeover != "" {
		v.TakeoverTimeout, extra = o.takeover, []string{"--takeover-timeout", o.takeover}
	}
	env.Defer(func() { KillCgroup(o.svc) }) // after the standby has stopped its copy
	sb, sbState, err := env.RunStandby("standby"+o.svc, o.standby.NS(), o.standby.Addr+":7946", o.keys, extra...)
	if err != nil {
		return v, err
	}
	defer func() { _ = sb.Stop(30 * time.Second) }()
	data, err := env.Dir("redis" + o.svc)
	if err != nil {
		return v, err
	}
	flags := append([]string{"--interval", o.interval, "--discard", "--standby", o.standby.Addr + ":7946", "--keys", o.keys}, o.flags...)
	svc, err := env.RunFtrun(o.svc, o.primary.NS(), flags, RedisArgs("0.0.0.0", 6379, data)...)
	if err != nil {
		return v, err
	}
	if _, err := svc.WaitFor(ctx, "redis running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 }); err != nil {
		return v, err
	}
	if err := Populate(ctx, o.client.NS(), o.targets[0], 10); err != nil {
		return v, err
	}
	if _, err := svc.WaitFor(ctx, "protected", time.Minute, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.Epoch >= 2 && s.StandbyEpoch >= 2
	}); err != nil {
		return v, err
	}
	env.Logf("%s: protected; the client writes for %s, then the primary host dies", o.name, o.before)

	const prefix = "c:"
	stop := make(chan struct{})
	samples := runClient(o.client.NS(), o.targets, prefix, 200, o.dial, o.timeout, stop)
	stopped := false
	stopClient := func() {
		if !stopped {
			stopped = true
			close(stop)
			v.Samples = <-samples
		}
	}
	defer stopClient()
	if err := Sleep(ctx, o.before); err != nil {
		return v, err
	}
	if st, err := svc.Status(); err == nil {
		v.EpochAtKill, v.StandbyEpochAtKill = st.Epoch, st.StandbyEpoch
	}
	v.Kill = time.Now()
	if err := o.primary.LinkDown(); err != nil {
		return v, err
	}
	svc.Kill()
	KillCgroup(o.svc)
	v.Dead = time.Now()
	// The first answer after the kill, as the client sees it on its own connection.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if live := liveStatus(sbState, o.svc); live != nil && live.State == supervisor.StateRunning {
			break
		}
		if time.Now().After(deadline) {
			return v, fmt.Errorf("the standby did not take over within 30s; its log ends:\n%s", sb.Tail(15))
		}
		if err := Sleep(ctx, 10*time.Millisecond); err != nil {
			return v, err
		}
	}
	if err := Sleep(ctx, o.after); err != nil {
		return v, err
	}
	stopClient()
	// Answers that arrive once nothing of the primary host is left come from the
	// standby's copy; the time is counted from the moment the host began to die.
	first, ok := FirstAnswerAfter(v.Samples, v.Dead)
	if !ok {
		return v, fmt.Errorf("the client got no answer in the %s after the standby took over; standby log ends:\n%s", o.after, sb.Tail(15))
	}
	v.KillToFirstAnswerMs = Ms(first.Done().Sub(v.Kill))
	if live := liveStatus(sbState, o.svc); live != nil {
		v.Restored = live.Restores > 0
	}
	v.Recovery = recoveryText(v.Restored, sb.Tail(200))
	v.DecideMs, v.RestoreMs = takeoverTimes(sb.Tail(200), v.Kill)
	acked := AckedBefore(v.Samples, prefix, v.Dead)
	c, err := DialRedis(o.client.NS(), o.targets[len(o.targets)-1], 5*time.Second)
	if err != nil {
		return v, err
	}
	have, err := CountExisting(c, acked)
	c.Close()
	if err != nil {
		return v, err
	}
	v.Acked, v.Lost = len(acked), len(acked)-have
	env.Logf("%s: kill -> first answer %.0f ms (take-over decision after %.0f ms, restore %.0f ms); %d of %d acknowledged keys lost; %s",
		o.name, v.KillToFirstAnswerMs, v.DecideMs, v.RestoreMs, v.Lost, v.Acked, v.Recovery)
	return v, nil
}

// liveStatus is the status of the program a standby took over, nil before.
func liveStatus(standbyState, service string) *supervisor.Status {
	ss, err := StandbyStatus(standbyState)
	if err != nil {
		return nil
	}
	for _, s := range ss {
		if s.Service == service && s.LiveStateDir != "" {
			resp, err := supervisor.Query(s.LiveStateDir, supervisor.Request{Op: "status"}, 2*time.Second)
			if err != nil || resp.Status == nil {
				return nil
			}
			return resp.Status
		}
	}
	return nil
}

var (
	takeoverTimeRE  = regexp.MustCompile(`(?m)^time=(\S+) .*msg="taking over`)
	restoredInRE    = regexp.MustCompile(`msg="program restored from epoch \d+ in ([^"]+)"`)
	takeoverEpochRE = regexp.MustCompile(`msg="taking over[^"]*".*\bepoch=(\d+)`)
	restoreErrRE    = regexp.MustCompile(`msg="recovery step failed".*\berr="((?:[^"\\]|\\.)*)"`)
)

// takeoverTimes reads from the standby's log when it decided to take over, counted
// from kill, and how long its restore took (pure; zero for what the log lacks).
func takeoverTimes(standbyLog string, kill time.Time) (decideMs, restoreMs float64) {
	if m := takeoverTimeRE.FindStringSubmatch(standbyLog); m != nil {
		if t, err := time.Parse(time.RFC3339Nano, m[1]); err == nil {
			decideMs = Ms(t.Sub(kill))
		}
	}
	if m := restoredInRE.FindStringSubmatch(standbyLog); m != nil {
		if d, err := time.ParseDuration(m[1]); err == nil {
			restoreMs = Ms(d)
		}
	}
	return decideMs, restoreMs
}

// recoveryText says, from the standby's log, how it brought the program back (pure).
func recoveryText(restored bool, standbyLog string) string {
	epoch := ""
	if m := takeoverEpochRE.FindStringSubmatch(standbyLog); m != nil {
		epoch = " " + m[1]
	}
	if restored {
		return "restored epoch" + epoch
	}
	why := "no checkpoint restored"
	if m := restoreErrRE.FindStringSubmatch(standbyLog); m != nil {
		why = "restoring epoch" + epoch + " failed: " + clip(strings.ReplaceAll(m[1], `\"`, `"`), 160)
	}
	return "FRESH START (" + why + ")"
}

// failoverReport fills the section from what was measured (pure).
func failoverReport(sec *Section, res FailoverResult) {
	sec.Raw = res
	t := Table{Header: []string{"", "kill -> first answer", "take-over timeout: kill -> decision, restore", "keys lost (of acknowledged before the kill)",
		"reply latency p50 before / after", "epoch at the kill / held by the standby", "interval", "how the standby brought redis back"}}
	for _, v := range res.Variants {
		if v.KillToFirstAnswerMs == 0 {
			continue
		}
		var pre, post []float64
		for _, s := range v.Samples {
			switch {
			case s.OK && s.Done().Before(v.Kill):
				pre = append(pre, s.LatMs)
			case s.OK && s.Sent.After(v.Kill):
				post = append(post, s.LatMs)
			}
		}
		t.Rows = append(t.Rows, []string{"ftrun, " + v.Name, FormatValue(v.KillToFirstAnswerMs, "ms"),
			fmt.Sprintf("%s: %s, %s", v.TakeoverTimeout, FormatValue(v.DecideMs, "ms"), FormatValue(v.RestoreMs, "ms")), fmt.Sprintf("%d of %d", v.Lost, v.Acked),
			FormatValue(Median(pre), "ms") + " / " + FormatValue(Median(post), "ms"),
			fmt.Sprintf("%d / %d", v.EpochAtKill, v.StandbyEpochAtKill), v.Interval, v.Recovery})
		sec.Figures = append(sec.Figures,
			Figure{Name: fmt.Sprintf("failover (%s): primary host killed -> first answer to the client", v.Name), Value: v.KillToFirstAnswerMs,
				Baseline: res.FreshStartMs, Unit: "ms", BaselineName: "fresh redis on the standby host", NoRatio: true,
				Verdict: fmt.Sprintf("target <= 1 s: %s (take-over timeout %s)", metOr(v.KillToFirstAnswerMs <= 1000), v.TakeoverTimeout)},
			Figure{Name: fmt.Sprintf("failover (%s): keys lost of keys acknowledged", v.Name), Value: float64(v.Lost), Baseline: float64(v.Acked),
				ValueText: fmt.Sprintf("%d of %d", v.Lost, v.Acked), BaselineText: fmt.Sprintf("%d of %d (all)", v.Acked, v.Acked),
				BaselineName: "fresh start", NoRatio: true, Verdict: v.Recovery})
	}
	if res.FreshStartMs > 0 {
		t.Rows = append(t.Rows, []string{"baseline: fresh redis-server on the standby host", FormatValue(res.FreshStartMs, "ms") + " after exec (plus noticing the death)",
			"-", "all", "-", "-", "-", "fresh start"})
	}
	sec.Tables = append(sec.Tables, t)
	for i, v := range res.Variants {
		if len(v.Samples) == 0 || v.Kill.IsZero() {
			continue
		}
		file := "failover-timeline.svg"
		if i > 0 {
			file = fmt.Sprintf("failover-timeline-%d.svg", i+1)
		}
		sec.Plots = append(sec.Plots, NamedPlot{File: file, Plot: timelinePlot(v)})
	}
}

// timelinePlot is the client's view of one failover: each request's latency at the
// time it was sent, by who answered, with the kill and the first answer marked.
func timelinePlot(v FailoverVariant) Plot {
	byHost := map[string]*Series{}
	var order []string
	failed := Series{Name: "failed or timed out", Style: Scatter}
	for _, s := range v.Samples {
		pt := Point{s.Sent.Sub(v.Kill).Seconds(), max(s.LatMs, 0.01)}
		if !s.OK {
			failed.Points = append(failed.Points, pt)
			continue
		}
		if byHost[s.Host] == nil {
			byHost[s.Host] = &Series{Name: "answered via " + s.Host, Style: Scatter}
			order = append(order, s.Host)
		}
		byHost[s.Host].Points = append(byHost[s.Host].Points, pt)
	}
	var series []Series
	for _, h := range order {
		series = append(series, *byHost[h])
	}
	if len(failed.Points) > 0 {
		series = append(series, failed)
	}
	marks := []Mark{{X: 0, Label: "primary host killed"}}
	if v.KillToFirstAnswerMs > 0 {
		marks = append(marks, Mark{X: v.KillToFirstAnswerMs / 1000, Label: "first answer after " + strconv.FormatFloat(v.KillToFirstAnswerMs, 'f', 0, 64) + " ms"})
	}
	return Plot{Title: "Failover seen by a client, redis with " + v.Name, XLabel: "time the request was sent, relative to the kill (s)",
		YLabel: "reply latency (ms)", YLog: true, Series: series, Marks: marks}
}

func metOr(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

package bench

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// RestartRound is one kill -9 of redis under one of the two supervisors.
type RestartRound struct {
	Mode            string  `json:"mode"` // "ftrun" or "plain restart"
	Acked           int     `json:"keys_acked_before_kill"`
	Lost            int     `json:"keys_lost"`
	FirstAnswerMs   float64 `json:"kill_to_first_answer_ms"`
	Correct         bool    `json:"first_answer_correct"`
	CheckpointAgeMs float64 `json:"checkpoint_age_at_kill_ms,omitempty"`
}

// RestartResult is everything the restart scenario measured.
type RestartResult struct {
	Rounds []RestartRound `json:"rounds"`
	// Latencies of the writes before the kills, ms.
	LatFtrun []float64 `json:"write_latency_ftrun_ms"`
	LatPlain []float64 `json:"write_latency_plain_ms"`
	Rate     int       `json:"writes_per_second"`
	Interval string    `json:"ftrun_interval"`
}

const (
	modeFtrun = "ftrun"
	modePlain = "plain restart"
)

// Restart compares what a client of redis sees after kill -9 under a plain restart
// supervisor (a fresh redis-server at once, as Restart=always with no delay) and under
// ftrun (local restore of the newest checkpoint): keys lost and time to first answer.
func Restart(ctx context.Context, env Env) (sec Section, err error) {
	rounds, warm := 3, 3*time.Second
	if env.Quick {
		rounds, warm = 1, 2*time.Second
	}
	res := RestartResult{Rate: 2000, Interval: "1s"}
	sec = Section{About: fmt.Sprintf("A client writes keys to redis-server continuously (up to %d SETs a second on one connection); after %s and more "+
		"redis is killed with kill -9. Plain restart: the supervisor starts a fresh redis-server as soon as the old one is reaped "+
		"(a `Restart=always` unit with no delay; redis keeps no files). ftrun: `ftrun run` with its default 1 s interval restores the "+
		"newest checkpoint. Time to answer: kill -9 -> the first reply to `GET` of the first key written, on a new connection; "+
		"keys lost: keys whose SET was acknowledged before the kill and that are gone after. %d round(s) each.", res.Rate, warm, rounds)}
	defer func() { restartReport(&sec, res) }()

	// ftrun: one service for every round; each round writes its own keys.
	port, err := FreePort()
	if err != nil {
		return sec, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	data, err := env.Dir("redis-ftrun")
	if err != nil {
		return sec, err
	}
	svc, err := env.RunFtrun(env.Name("-restart"), "", []string{"--discard", "--no-final-checkpoint", "--burst", "100"},
		RedisArgs("127.0.0.1", port, data)...)
	if err != nil {
		return sec, err
	}
	for r := 0; r < rounds; r++ {
		st, err := svc.WaitFor(ctx, "redis running and checkpointed", 30*time.Second, func(s supervisor.Status) bool {
			return s.Pid > 0 && s.State == supervisor.StateRunning && s.Epoch >= 1
		})
		if err != nil {
			return sec, err
		}
		restores := st.Restores
		prefix := fmt.Sprintf("f%d:", r)
		var age time.Duration
		round, lat, err := killRound(ctx, addr, prefix, res.Rate, warm+time.Duration(r)*300*time.Millisecond, func() (time.Time, error) {
			now, err := svc.Status()
			if err != nil {
				return time.Time{}, err
			}
			age = time.Since(now.LastCheckpoint)
			t := time.Now()
			return t, syscall.Kill(now.Pid, syscall.SIGKILL)
		})
		res.LatFtrun = append(res.LatFtrun, lat...)
		if err != nil {
			return sec, fmt.Errorf("ftrun round %d: %w", r, err)
		}
		round.Mode, round.CheckpointAgeMs = modeFtrun, Ms(age)
		if after, err := svc.Status(); err == nil && after.Restores <= restores {
			return sec, fmt.Errorf("ftrun round %d: redis answered but ftrun counts no restore (%d)", r, after.Restores)
		}
		res.Rounds = append(res.Rounds, round)
		env.Logf("ftrun: kill -9 -> first answer %.0f ms, lost %d of %d keys", round.FirstAnswerMs, round.Lost, round.Acked)
	}
	if err := svc.Stop(30 * time.Second); err != nil {
		return sec, err
	}
	KillCgroup(svc.Name)

	// Plain restart: this process is the supervisor; it reaps and starts again at once.
	port, err = FreePort()
	if err != nil {
		return sec, err
	}
	addr = fmt.Sprintf("127.0.0.1:%d", port)
	data, err = env.Dir("redis-plain")
	if err != nil {
		return sec, err
	}
	start := func() (*Proc, error) { return env.Start("redis-plain", "", RedisArgs("127.0.0.1", port, data)...) }
	p, err := start()
	if err != nil {
		return sec, err
	}
	for r := 0; r < rounds; r++ {
		if err := waitUp(ctx, "", addr, 20*time.Second); err != nil {
			return sec, err
		}
		prefix := fmt.Sprintf("p%d:", r)
		round, lat, err := killRound(ctx, addr, prefix, res.Rate, warm+time.Duration(r)*300*time.Millisecond, func() (time.Time, error) {
			t := time.Now()
			p.Kill() // SIGKILL and reap, as systemd does
			var err error
			p, err = start()
			return t, err
		})
		res.LatPlain = append(res.LatPlain, lat...)
		if err != nil {
			return sec, fmt.Errorf("plain restart round %d: %w", r, err)
		}
		round.Mode = modePlain
		res.Rounds = append(res.Rounds, round)
		env.Logf("plain restart: kill -9 -> first answer %.0f ms, lost %d of %d keys", round.FirstAnswerMs, round.Lost, round.Acked)
	}
	return sec, nil
}

// waitUp waits up to d for redis at addr to answer PING.
func waitUp(ctx context.Context, ns, addr string, d time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	_, _, err := WaitRedis(wctx, ns, addr)
	return err
}

// killRound writes for warm, calls kill (which returns when it sent SIGKILL), and
// measures what a client sees: time to the first answer to GET of the first key,
// whether it is right, and the keys lost. It also returns the latencies of the writes
// before the kill.
func killRound(ctx context.Context, addr, prefix string, rate int, warm time.Duration, kill func() (time.Time, error)) (RestartRound, []float64, error) {
	stop := make(chan struct{})
	writes := StartWriter("", addr, prefix, rate, stop)
	if err := Sleep(ctx, warm); err != nil {
		close(stop)
		<-writes
		return RestartRound{}, nil, err
	}
	t0, kerr := kill()
	dead := time.Now() // no answer from the killed program comes after this
	close(stop)
	w := <-writes
	lat := w.LatencyMs(t0)
	if kerr != nil {
		return RestartRound{}, lat, fmt.Errorf("kill: %w", kerr)
	}
	round := RestartRound{Acked: w.AckedBefore(dead)}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t1, got, err := WaitRedis(wctx, "", addr, "GET", KeyName(prefix, 0))
	if err != nil {
		return round, lat, err
	}
	round.FirstAnswerMs = Ms(t1.Sub(t0))
	round.Correct = got == KeyValue(prefix, 0)
	c, err := DialRedis("", addr, time.Second)
	if err != nil {
		return round, lat, err
	}
	defer c.Close()
	have, err := CountExisting(c, Keys(prefix, round.Acked))
	if err != nil {
		return round, lat, err
	}
	round.Lost = round.Acked - have
	return round, lat, nil
}

// restartReport fills the section from what was measured (pure).
func restartReport(sec *Section, res RestartResult) {
	sec.Raw = res
	t := Table{Header: []string{"supervisor", "kill -9 -> first answer", "first answer correct", "keys acknowledged before the kill", "keys lost", "newest checkpoint at the kill"}}
	agg := map[string]*struct {
		first             []float64
		acked, lost, good int
		n                 int
	}{modeFtrun: {}, modePlain: {}}
	for _, r := range res.Rounds {
		a := agg[r.Mode]
		if a == nil {
			continue
		}
		a.first = append(a.first, r.FirstAnswerMs)
		a.acked += r.Acked
		a.lost += r.Lost
		a.n++
		if r.Correct {
			a.good++
		}
		t.Rows = append(t.Rows, []string{r.Mode, FormatValue(r.FirstAnswerMs, "ms"), yesNo(r.Correct), fmt.Sprint(r.Acked),
			fmt.Sprintf("%d (%.1f%%)", r.Lost, 100*Ratio(float64(r.Lost), float64(r.Acked))), ageText(r)})
	}
	sec.Tables = append(sec.Tables, t)
	f, p := agg[modeFtrun], agg[modePlain]
	if f.n > 0 && p.n > 0 {
		pct := func(lost, acked int) float64 { return 100 * float64(lost) / float64(max(acked, 1)) }
		sec.Figures = append(sec.Figures,
			Figure{Name: "redis kill -9: keys lost (of keys acknowledged before the kill)", Value: pct(f.lost, f.acked), Baseline: pct(p.lost, p.acked), Unit: "%",
				ValueText:    fmt.Sprintf("%d of %d (%.1f%%)", f.lost, f.acked, pct(f.lost, f.acked)),
				BaselineText: fmt.Sprintf("%d of %d (%.1f%%)", p.lost, p.acked, pct(p.lost, p.acked)), BaselineName: "plain restart", NoRatio: true},
			Figure{Name: "redis kill -9 -> first answer (median)", Value: Median(f.first), Baseline: Median(p.first), Unit: "ms", BaselineName: "plain restart",
				Verdict: fmt.Sprintf("correct: ftrun %d/%d, plain %d/%d", f.good, f.n, p.good, p.n)})
	}
	if len(res.LatFtrun) > 0 && len(res.LatPlain) > 0 {
		sec.Figures = append(sec.Figures, Figure{Name: fmt.Sprintf("SET latency p99 at %d/s (checkpoints every %s vs none)", res.Rate, res.Interval),
			Value: Percentile(res.LatFtrun, 99), Baseline: Percentile(res.LatPlain, 99), Unit: "ms", BaselineName: "unprotected redis"})
		lt := Table{Title: "Write latency before the kill", Header: []string{"supervisor", "requests", "p50", "p99", "p99.9", "max"}}
		for _, row := range []struct {
			name string
			xs   []float64
		}{{"ftrun (checkpoints every " + res.Interval + ")", res.LatFtrun}, {modePlain + " (no checkpoints)", res.LatPlain}} {
			lt.Rows = append(lt.Rows, []string{row.name, fmt.Sprint(len(row.xs)), FormatValue(Percentile(row.xs, 50), "ms"),
				FormatValue(Percentile(row.xs, 99), "ms"), FormatValue(Percentile(row.xs, 99.9), "ms"), FormatValue(Percentile(row.xs, 100), "ms")})
		}
		sec.Tables = append(sec.Tables, lt)
		sec.Plots = append(sec.Plots, NamedPlot{File: "restart-latency.svg", Plot: Plot{
			Title: "redis SET latency: under ftrun vs unprotected", XLabel: "request latency (ms)", YLabel: "requests at or below (%)", XLog: true,
			Series: []Series{CDF("under ftrun", res.LatFtrun), CDF("unprotected (plain)", res.LatPlain)}}})
	}
}

func ageText(r RestartRound) string {
	if r.Mode != modeFtrun {
		return "-"
	}
	return FormatValue(r.CheckpointAgeMs, "ms") + " old"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

package integration

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/transport/auth"
)

// standbyOnLoopback runs `ftrun standby` on 127.0.0.1:port.
func standbyOnLoopback(b *testing.B, port int) (keys, state string, stop func()) {
	keys = b.TempDir()
	if err := auth.Keygen(keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		b.Fatal(err)
	}
	state = b.TempDir()
	cmd := exec.Command(ftrunBin, "standby", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--state-dir", state, "--keys", keys)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		})
	}
	b.Cleanup(stop)
	return keys, state, stop
}

// BenchmarkEpochCommitLatency: a redis holding ~100 MB under a steady write load,
// protected by a standby on this machine: checkpoint start -> standby ack (the standby
// has rebuilt, verified and fsynced the epoch), median and p99, next to the local
// checkpoint time of the same epochs (the part a standby cannot save).
func BenchmarkEpochCommitLatency(b *testing.B) {
	requiresRoot(b, "redis-server")
	name := "bench-commit"
	b.Cleanup(func() { killService(b, name) })
	sport, rport := freePort(b), freePort(b)
	keys, _, _ := standbyOnLoopback(b, sport)
	addr := fmt.Sprintf("127.0.0.1:%d", rport)
	p := startFtrun(b, b.TempDir(), nil, append([]string{"--name", name, "--interval", "500ms", "--discard",
		"--standby", fmt.Sprintf("127.0.0.1:%d", sport), "--keys", keys, "--"}, redisArgs(rport, b.TempDir())...)...)
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	fill(b, addr, 100)
	p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool { return strings.HasPrefix(s.Protection, "protected") })
	// A writer that dirties about 1000 keys (~1 MB) per second.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := dialRedis(addr, time.Second)
		if err != nil {
			return
		}
		defer c.Close()
		val := strings.Repeat("x", 1000)
		for i := 0; ctx.Err() == nil; i++ {
			c.Do(time.Second, "SET", fmt.Sprintf("key:%d", i%100000), val)
			time.Sleep(time.Millisecond)
		}
	}()
	var frozen, local []time.Duration
	var shipped []int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// one epoch per iteration
		prev, _ := status(p.stateDir)
		st := p.waitFor("next acked epoch", 30*time.Second, func(s supervisor.Status) bool { return s.StandbyEpoch > prev.StandbyEpoch })
		frozen = append(frozen, st.LastFrozen)
		local = append(local, st.LastCheckpointTime)
		shipped = append(shipped, st.LastShippedBytes)
	}
	b.StopTimer()
	cancel()
	wg.Wait()
	st, _ := status(p.stateDir)
	slices.Sort(shipped)
	b.ReportMetric(ms(st.CommitLatencyP50), "commit-p50-ms")
	b.ReportMetric(ms(st.CommitLatencyP99), "commit-p99-ms")
	b.ReportMetric(ms(median(local)), "local-checkpoint-ms")
	b.ReportMetric(ms(median(frozen)), "frozen-ms")
	b.ReportMetric(float64(shipped[len(shipped)/2])/1024, "shipped-KiB/epoch-median")
	b.ReportMetric(float64(st.ImageBytes)/(1<<20), "image-MiB")
}

// BenchmarkFailover: the primary (ftrun and redis) killed at once -> first PONG from
// redis restored by the standby with default timeouts, next to what a plain restart
// supervisor achieves in the same run (a fresh redis-server -> first PONG, with every
// key lost).
func BenchmarkFailover(b *testing.B) {
	requiresRoot(b, "redis-server")
	name := "bench-failover"
	b.Cleanup(func() { killService(b, name) })
	var failover, fresh []time.Duration
	for i := 0; i < b.N; i++ {
		sport, rport := freePort(b), freePort(b)
		keys, _, stopStandby := standbyOnLoopback(b, sport)
		addr := fmt.Sprintf("127.0.0.1:%d", rport)
		p := startFtrun(b, b.TempDir(), nil, append([]string{"--name", name, "--discard",
			"--standby", fmt.Sprintf("127.0.0.1:%d", sport), "--keys", keys, "--"}, redisArgs(rport, b.TempDir())...)...)
		p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
		fill(b, addr, 10)
		p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
			return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= s.Epoch && s.Epoch >= 2
		})
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		t0 := time.Now()
		p.kill9()
		killService(b, name)
		t1, err := waitRedis(ctx, addr)
		if err != nil {
			b.Fatal(err)
		}
		failover = append(failover, t1.Sub(t0))
		stopStandby() // it stops the redis it took over
		killService(b, name)

		// baseline: a restart supervisor starts redis afresh
		args := redisArgs(rport, b.TempDir())
		t2 := time.Now()
		cmd := exec.Command(args[0], args[1:]...)
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		t3, err := waitRedis(ctx, addr)
		if err != nil {
			b.Fatal(err)
		}
		fresh = append(fresh, t3.Sub(t2))
		cmd.Process.Kill()
		cmd.Wait()
		cancel()
	}
	b.ReportMetric(ms(median(failover)), "failover-to-ping-ms")
	b.ReportMetric(ms(median(fresh)), "fresh-restart-to-ping-ms")
}

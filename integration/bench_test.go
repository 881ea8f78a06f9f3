package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/stats"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor"
)

// startLoadedRedis runs a redis-server holding about mb megabytes, in its own session.
func startLoadedRedis(b *testing.B, mb int) (int, string) {
	port := freePort(b)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	args := redisArgs(port, b.TempDir())
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	fill(b, addr, mb)
	return cmd.Process.Pid, addr
}

func fill(b *testing.B, addr string, mb int) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := waitRedis(ctx, addr); err != nil {
		b.Fatal(err)
	}
	c, err := dialRedis(addr, time.Second)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	// DEBUG POPULATE: mb*1000 keys of 1000 bytes each, about mb megabytes of values.
	if _, err := c.Do(time.Minute, "DEBUG", "POPULATE", strconv.Itoa(mb*1000), "key", "1000"); err != nil {
		b.Fatal(err)
	}
}

func median(xs []time.Duration) time.Duration {
	s := append([]time.Duration(nil), xs...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkCheckpoint100MB: one checkpoint of a redis-server holding ~100 MB, as ftrun
// takes it every epoch (CRIU through go-criu, checksummed manifest, atomic rename),
// interleaved with the `criu dump --leave-running` CLI on the same process. The fsync
// ftrun then does in the background is reported on its own (ftrun-fsync-after-ms).
// Target: ftrun <= 1.1x the CLI in frozen time and in total time.
func BenchmarkCheckpoint100MB(b *testing.B) {
	requiresRoot(b, "redis-server")
	pid, _ := startLoadedRedis(b, 100)
	root := b.TempDir()
	store, err := checkpoint.OpenStore(filepath.Join(root, "store"))
	if err != nil {
		b.Fatal(err)
	}
	criu := &checkpoint.Criu{}
	var fFrozen, fTotal, fCommit, fSync, cFrozen, cTotal []time.Duration
	var bytes int64
	b.ResetTimer()
	ftrunOnce := func(i int) {
		t0 := time.Now()
		p, err := store.Begin(uint64(i + 1))
		if err != nil {
			b.Fatal(err)
		}
		st, err := criu.Dump(checkpoint.Options{ImagesDir: p.Dir, Pid: pid, LeaveRunning: true, TCPEstablished: true})
		if err != nil {
			b.Fatal(err)
		}
		tDump := time.Now()
		m := &checkpoint.Manifest{Stats: st}
		set, err := p.Commit(m)
		if err != nil {
			b.Fatal(err)
		}
		fTotal = append(fTotal, time.Since(t0))
		fCommit = append(fCommit, time.Since(tDump))
		fFrozen = append(fFrozen, st.Frozen)
		bytes = m.Bytes()
		// ftrun makes the set durable behind the epoch loop; measured, not hidden.
		t2 := time.Now()
		if err := store.Sync(set); err != nil {
			b.Fatal(err)
		}
		fSync = append(fSync, time.Since(t2))
		os.RemoveAll(set.Dir)
	}
	cliOnce := func(i int) {
		dir := filepath.Join(root, fmt.Sprintf("cli-%d", i))
		os.MkdirAll(dir, 0o700)
		t1 := time.Now()
		out, err := exec.Command("criu", "dump", "-t", strconv.Itoa(pid), "-D", dir, "--leave-running", "--tcp-established",
			"--file-locks", "--manage-cgroups=soft", "-v4", "-o", "dump.log").CombinedOutput()
		if err != nil {
			b.Fatalf("criu dump: %v %s %v", err, out, checkpoint.ErrorLines(filepath.Join(dir, "dump.log"), 3))
		}
		cTotal = append(cTotal, time.Since(t1))
		d, _ := os.Open(dir)
		ds, err := stats.CriuGetDumpStats(d)
		d.Close()
		if err != nil {
			b.Fatal(err)
		}
		cFrozen = append(cFrozen, time.Duration(ds.GetFrozenTime())*time.Microsecond)
		os.RemoveAll(dir)
	}
	for i := 0; i < b.N; i++ {
		// Alternate who goes first, so neither always inherits the other's page cache.
		if i%2 == 0 {
			ftrunOnce(i)
			cliOnce(i)
		} else {
			cliOnce(i)
			ftrunOnce(i)
		}
	}
	b.StopTimer()
	b.ReportMetric(ms(median(fFrozen)), "ftrun-frozen-ms")
	b.ReportMetric(ms(median(cFrozen)), "cli-frozen-ms")
	b.ReportMetric(ms(median(fTotal)), "ftrun-total-ms")
	b.ReportMetric(ms(median(cTotal)), "cli-total-ms")
	b.ReportMetric(ms(median(fSync)), "ftrun-fsync-after-ms")
	b.ReportMetric(ms(median(fCommit)), "ftrun-commit-ms")
	b.ReportMetric(float64(median(fFrozen))/float64(median(cFrozen)), "frozen-ratio")
	b.ReportMetric(float64(median(fTotal))/float64(median(cTotal)), "total-ratio")
	b.ReportMetric(float64(bytes)/(1<<20), "image-MiB")
}

// BenchmarkLocalRecovery: kill -9 of a ~100 MB redis under ftrun -> first PING answered
// after ftrun restored it, next to the CLI `criu restore` of the same image set ->
// first PING (the baseline, measured in the same run).
func BenchmarkLocalRecovery(b *testing.B) {
	requiresRoot(b, "redis-server")
	name := "bench-recovery"
	b.Cleanup(func() { killService(b, name) })
	port := freePort(b)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	state := b.TempDir()
	p := startFtrun(b, state, nil, append([]string{"--name", name, "--interval", "1h", "--discard", "--burst", "1000", "--no-final-checkpoint", "--"},
		redisArgs(port, b.TempDir())...)...)
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	fill(b, addr, 100)
	p.checkpoint()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var ftrunRec, cliRec []time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st := p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
		t0 := time.Now()
		syscall.Kill(st.Pid, syscall.SIGKILL)
		// Wait for the new incarnation, then for its first answer.
		p.waitFor("restore", 30*time.Second, func(s supervisor.Status) bool { return s.Restores > st.Restores })
		t1, err := waitRedis(ctx, addr)
		if err != nil {
			b.Fatal(err)
		}
		ftrunRec = append(ftrunRec, t1.Sub(t0))
		// a fresh checkpoint, so the next kill restores the newest again
		p.checkpoint()
	}
	b.StopTimer()
	// Baseline: stop ftrun (no final checkpoint), then the CLI restores the newest set.
	p.stop()
	killService(b, name)
	os.MkdirAll(filepath.Join(cgroup2Mount(b), "ftrun", name), 0o755)
	sets, _ := filepath.Glob(filepath.Join(state, supervisor.CheckpointsDir, "0*"))
	sort.Strings(sets)
	set := sets[len(sets)-1]
	m, err := checkpoint.VerifyDir(set)
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		outR, outW, _ := os.Pipe()
		work := b.TempDir()
		args := []string{"restore", "-d", "-D", set, "-W", work, "--tcp-close", "--file-locks", "--manage-cgroups=soft", "-v4", "-o", "restore.log"}
		var files []*os.File
		for _, k := range uniq(m.External) {
			args = append(args, "--inherit-fd", fmt.Sprintf("fd[%d]:%s", 3+len(files), k))
			files = append(files, outW)
		}
		cmd := exec.Command("criu", args...)
		cmd.ExtraFiles = files
		t0 := time.Now()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("criu restore: %v %s %v", err, out, checkpoint.ErrorLines(filepath.Join(work, "restore.log"), 3))
		}
		t1, err := waitRedis(ctx, addr)
		if err != nil {
			b.Fatal(err)
		}
		cliRec = append(cliRec, t1.Sub(t0))
		killService(b, name)
		os.MkdirAll(filepath.Join(cgroup2Mount(b), "ftrun", name), 0o755)
		outR.Close()
		outW.Close()
	}
	b.ReportMetric(ms(median(ftrunRec)), "ftrun-kill-to-ping-ms")
	b.ReportMetric(ms(median(cliRec)), "cli-restore-to-ping-ms")
	b.ReportMetric(float64(median(ftrunRec))/float64(median(cliRec)), "ratio")
}

func uniq(m map[string]string) []string {
	seen := map[string]bool{}
	var out []string
	for _, v := range m {
		if !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}

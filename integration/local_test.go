package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/contrib/demo"
	"github.com/ftrun/ftrun/supervisor"
)

// redis-server under ftrun: every key written before a checkpoint survives kill -9.
func TestRedisKeysSurviveKill9(t *testing.T) {
	requiresRoot(t, "redis-server")
	name := "it-redis-kill"
	t.Cleanup(func() { killService(t, name) })
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	state := t.TempDir()
	p := startFtrun(t, state, nil, append([]string{"--name", name, "--interval", "500ms", "--discard",
		"--health-tcp", addr, "--health-send", `PING\r\n`, "--health-expect", "+PONG", "--health-start-period", "2s", "--"},
		redisArgs(port, t.TempDir())...)...)
	p.waitFor("first checkpoint", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := waitRedis(ctx, addr); err != nil {
		t.Fatal(err)
	}
	c, err := dialRedis(addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	for i := 0; i < n; i++ {
		if _, err := c.Do(time.Second, "SET", fmt.Sprintf("key:%d", i), fmt.Sprintf("value-%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	// The client connection stays open across the checkpoint: CRIU must dump it.
	epoch := p.checkpoint()
	// CRIU's log is kept for the newest dump, outside the image set (which would
	// otherwise carry 100 KiB of log to the standby every epoch).
	if _, err := os.Stat(filepath.Join(state, "last-dump.log")); err != nil {
		t.Errorf("no CRIU log of the newest dump in the state dir: %v", err)
	}
	if logs, _ := filepath.Glob(filepath.Join(state, "checkpoints", "*", "dump.log")); len(logs) > 0 {
		t.Errorf("CRIU's log inside image sets: %v", logs)
	}
	if _, err := c.Do(time.Second, "SET", "after", "checkpoint"); err != nil {
		t.Fatal(err)
	}
	// Without --net a restore reopens no connection, so the dump leaves them out: no
	// repair mode, no lock, nothing the program spends frozen on them.
	if dl, _ := os.ReadFile(filepath.Join(state, "last-dump.log")); strings.Contains(string(dl), "Turning repair on") || strings.Contains(string(dl), "Locked") {
		t.Errorf("the dump saved the client's connection, which no restore here reopens:\n%s", grepLines(string(dl), "repair", "Locked"))
	}
	before := p.waitFor("running", time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	if !strings.HasPrefix(before.TCPDump, "not saved") {
		t.Errorf("status says the dump's connections were %q, want not saved", before.TCPDump)
	}
	if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	after := p.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool {
		return s.Restores > before.Restores && s.State == supervisor.StateRunning
	})
	if after.Pid == before.Pid {
		t.Fatalf("pid did not change after restore: %d", after.Pid)
	}
	if _, err := waitRedis(ctx, addr); err != nil {
		t.Fatal(err)
	}
	c2, err := dialRedis(addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	for i := 0; i < n; i++ {
		got, err := c2.Do(time.Second, "GET", fmt.Sprintf("key:%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("value-%d", i); got != want {
			t.Fatalf("key:%d = %q after restore, want %q (checkpoint epoch %d)", i, got, want, epoch)
		}
	}
	// The old connection was restored closed (its peer saw redis die): the client
	// gets an error on it, not a hang and not an answer from a half-dead socket.
	if got, err := c.Do(2*time.Second, "PING"); err == nil {
		t.Errorf("the pre-crash connection answered %q after a local restore; want an error", got)
	} else if strings.Contains(err.Error(), "timeout") {
		t.Errorf("the pre-crash connection hangs after a local restore: %v", err)
	}
	c.Close()
	if !strings.Contains(p.log(), "restoring newest checkpoint") {
		t.Errorf("log does not name the ladder step:\n%s", tail(p.log(), 20))
	}
}

// The demo's full failure sequence on counter.rb, run as the README's first command runs it.
func TestCounterDemo(t *testing.T) {
	requiresRoot(t, "ruby")
	t.Cleanup(func() { killService(t, "demo-counter") })
	var out strings.Builder
	results, err := demo.RunResults(context.Background(), demo.Options{Ftrun: ftrunBin, WorkDir: t.TempDir(), Interval: time.Second, Out: &out})
	t.Logf("demo timeline:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(demo.Steps) {
		t.Fatalf("%d results, want %d", len(results), len(demo.Steps))
	}
	for _, r := range results {
		if !r.OK {
			t.Errorf("%s: rollback %d > allowed %d or restarted from zero (after=%d)", r.Step, r.Rollback, r.Allowed, r.After)
		}
	}
}

func countCounters(t *testing.T, script string) int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		// ftrun's own command line names the script too: count only ruby.
		if err == nil && strings.HasPrefix(string(data), "ruby\x00") && strings.Contains(string(data), script) {
			n++
		}
	}
	return n
}

func writeCounter(t *testing.T) (script, out string) {
	dir := t.TempDir()
	script = filepath.Join(dir, "counter.rb")
	data, err := os.ReadFile("../contrib/demo/counter.rb")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return script, filepath.Join(dir, "counter.txt")
}

// ftrun killed -9 and started again: exactly one program afterwards, both when the
// program survived (adopted) and when it died with ftrun (restored).
func TestFtrunRestartRunsExactlyOneProgram(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-one-copy"
	t.Cleanup(func() { killService(t, name) })
	script, out := writeCounter(t)
	state := t.TempDir()
	args := []string{"--name", name, "--interval", "300ms", "--", "ruby", script, out}
	p := startFtrun(t, state, nil, append([]string{"--discard"}, args...)...)
	first := p.waitFor("checkpoint", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	p.kill9()

	p2 := startFtrun(t, state, nil, args...)
	st := p2.waitFor("adoption", 20*time.Second, func(s supervisor.Status) bool { return s.Adoptions == 1 })
	if st.Pid != first.Pid {
		t.Fatalf("adopted pid %d, want the original %d", st.Pid, first.Pid)
	}
	if n := countCounters(t, script); n != 1 {
		t.Fatalf("%d copies of the program after ftrun restart, want 1", n)
	}
	p2.waitFor("checkpoint after adoption", 10*time.Second, func(s supervisor.Status) bool { return s.Epoch > first.Epoch+1 })

	// Now everything dies at once: the next ftrun restores instead.
	p2.kill9()
	for _, pid := range cgroupProcs(t, name) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	p3 := startFtrun(t, state, nil, args...)
	st3 := p3.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	if st3.Pid == first.Pid {
		t.Fatalf("restored program has the old pid")
	}
	time.Sleep(300 * time.Millisecond)
	if n := countCounters(t, script); n != 1 {
		t.Fatalf("%d copies of the program after restore, want 1", n)
	}
	// A second supervisor on the same state dir is refused.
	p4 := startFtrun(t, state, nil, args...)
	code, err := p4.wait(10 * time.Second)
	if err != nil || code != supervisor.ExitLocked {
		t.Fatalf("second ftrun on the same state dir: exit %d (%v), want %d", code, err, supervisor.ExitLocked)
	}
	if !strings.Contains(p4.log(), "state directory in use") {
		t.Errorf("second ftrun's error does not say why:\n%s", p4.log())
	}
}

// A corrupted newest image set: the restore falls back to the older one and says so.
func TestCorruptNewestFallsBackToOlder(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-corrupt"
	t.Cleanup(func() { killService(t, name) })
	script, out := writeCounter(t)
	state := t.TempDir()
	// A long interval: only the checkpoints this test forces exist.
	p := startFtrun(t, state, nil, "--name", name, "--interval", "1h", "--discard", "--", "ruby", script, out)
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	time.Sleep(200 * time.Millisecond)
	older := p.checkpoint()
	time.Sleep(200 * time.Millisecond)
	newest := p.checkpoint()
	dir := filepath.Join(state, supervisor.CheckpointsDir, fmt.Sprintf("%016d", newest))
	pages, _ := filepath.Glob(filepath.Join(dir, "pages-*.img"))
	if len(pages) == 0 {
		t.Fatal("no pages image in the newest set")
	}
	f, err := os.OpenFile(pages[0], os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := f.Stat()
	f.WriteAt([]byte("garbage"), fi.Size()/2)
	f.Close()
	st := p.waitFor("running", time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	syscall.Kill(st.Pid, syscall.SIGKILL)
	p.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	log := p.log()
	for _, want := range []string{
		fmt.Sprintf("checkpoint epoch %d is unusable", newest),
		"fails its checksum",
		fmt.Sprintf("restoring an older checkpoint (epoch %d)", older),
		fmt.Sprintf("restored from epoch %d", older),
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, tail(log, 30))
		}
	}
	// The corrupt set was not "repaired" or removed behind the user's back.
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("corrupt set vanished: %v", err)
	}
}

// CRIU missing or too old: a one-line error naming cause and fix, exit code 151 (ExitSetup).
func TestCriuMissingIsAClearError(t *testing.T) {
	requiresRoot(t)
	dir := t.TempDir()
	old := filepath.Join(dir, "criu-old")
	os.WriteFile(old, []byte("#!/bin/sh\necho 'Version: 3.17.1'\n"), 0o755)
	cases := []struct {
		name, criu string
		want       []string
	}{
		{"missing", filepath.Join(dir, "nope"), []string{"criu", "scripts/setup"}},
		{"too old", old, []string{"3.17.1", "too old", "scripts/setup"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := startFtrun(t, t.TempDir(), nil, "--criu", tc.criu, "--name", "it-nocriu", "--", "sleep", "100")
			code, err := p.wait(10 * time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if code != supervisor.ExitSetup {
				t.Errorf("exit code %d, want %d", code, supervisor.ExitSetup)
			}
			log := strings.TrimSpace(p.log())
			if strings.Count(log, "\n") != 0 {
				t.Errorf("want one line, got:\n%s", log)
			}
			for _, w := range tc.want {
				if !strings.Contains(log, w) {
					t.Errorf("error %q lacks %q", log, w)
				}
			}
			if len(cgroupProcs(t, "it-nocriu")) != 0 {
				t.Errorf("program started although CRIU is unusable")
			}
		})
	}
}

// SIGTERM: a final checkpoint, then stop; the next start resumes the counter from it.
func TestStopWithFinalCheckpointResumes(t *testing.T) {
	name := "it-final"
	c := stoppedCounter(t, name)
	last := readInt(t, c.out)
	if n := len(cgroupProcs(t, name)); n != 0 {
		t.Fatalf("%d processes left after stop", n)
	}
	if !strings.Contains(c.log, "final checkpoint committed") {
		t.Fatalf("no final checkpoint:\n%s", tail(c.log, 10))
	}
	p2 := startFtrun(t, c.state, nil, c.args...)
	p2.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.Pid > 0 })
	time.Sleep(300 * time.Millisecond)
	if now := readInt(t, c.out); now < last {
		t.Fatalf("counter went back from %d to %d across stop/start", last, now)
	}
}

// counterRun is counter.rb supervised by ftrun and then stopped with SIGTERM.
type counterRun struct {
	state, script, out, log string
	args                    []string
}

// stoppedCounter runs counter.rb under ftrun for a moment, then stops ftrun with
// SIGTERM (final checkpoint) and checks it exits 0.
func stoppedCounter(t *testing.T, name string) counterRun {
	t.Helper()
	requiresRoot(t, "ruby")
	t.Cleanup(func() { killService(t, name) })
	script, out := writeCounter(t)
	c := counterRun{state: t.TempDir(), script: script, out: out,
		args: []string{"--name", name, "--interval", "1h", "--", "ruby", script, out}}
	p := startFtrun(t, c.state, nil, append([]string{"--discard"}, c.args...)...)
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	time.Sleep(time.Second)
	if code := p.stop(); code != 0 {
		t.Fatalf("ftrun exit code %d after SIGTERM, want 0", code)
	}
	c.log = p.log()
	return c
}

func readInt(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	fmt.Sscan(strings.TrimSpace(string(data)), &n)
	return n
}

// `ftrun restore` with no supervisor running: the program comes back detached, and a
// later `ftrun run` adopts it rather than starting a second copy.
func TestRestoreDetachedThenAdopt(t *testing.T) {
	name := "it-detached"
	c := stoppedCounter(t, name)
	state, script, out, args := c.state, c.script, c.out, c.args
	stopped := readInt(t, out)
	res, err := exec.Command(ftrunBin, "restore", "--state-dir", state).CombinedOutput()
	if err != nil {
		t.Fatalf("ftrun restore: %v\n%s", err, res)
	}
	if !strings.Contains(string(res), "detached") {
		t.Errorf("restore output: %s", res)
	}
	procs := cgroupProcs(t, name)
	if len(procs) == 0 {
		t.Fatal("nothing runs after a detached restore")
	}
	time.Sleep(300 * time.Millisecond)
	if now := readInt(t, out); now <= stopped {
		t.Fatalf("counter not moving after detached restore: %d (stopped at %d)", now, stopped)
	}
	// A second detached restore is refused while the program runs.
	if res, err := exec.Command(ftrunBin, "restore", "--state-dir", state).CombinedOutput(); err == nil || !strings.Contains(string(res), "still runs") {
		t.Errorf("second restore: %v %s", err, res)
	}
	p2 := startFtrun(t, state, nil, args...)
	st := p2.waitFor("adoption", 20*time.Second, func(s supervisor.Status) bool { return s.Adoptions == 1 })
	if !slices.Contains(procs, st.Pid) {
		t.Fatalf("adopted pid %d is not the restored program %v", st.Pid, procs)
	}
	if n := countCounters(t, script); n != 1 {
		t.Fatalf("%d copies running, want 1", n)
	}
}

// grepLines is the lines of s that hold any of words.
func grepLines(s string, words ...string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		for _, w := range words {
			if strings.Contains(l, w) {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}

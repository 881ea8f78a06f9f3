// Package demo protects a Ruby counter with ftrun and injects the failures ftrun exists
// for, printing a timeline and checking after each that the counter's in-memory state
// survived: it never goes back by more than the checkpoints allow and never restarts
// from zero. `ftrun demo` runs it; the integration tests run the same code.
package demo

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

//go:embed counter.rb
var counterRB []byte

// Tick is how often the counter counts.
const Tick = 50 * time.Millisecond

// Options configures a demo run.
type Options struct {
	Ftrun    string        // the ftrun binary
	WorkDir  string        // state and logs (default: a new temporary directory)
	Interval time.Duration // checkpoint interval
	Out      io.Writer     // the timeline
	// Steps limits the failures injected (names as in Steps and HostSteps); empty
	// means all of Steps, and of HostSteps too when Hosts is set.
	Steps []string
	// Hosts adds the host-level failures on network-namespace hosts (root, iproute2,
	// etcd: what scripts/setup installs).
	Hosts bool
}

// Steps are the failures the demo injects, in order.
var Steps = []string{"kill-program", "hang", "kill-ftrun", "delete-file", "corrupt-checkpoint", "disk-read-only"}

// Result is one injected failure and what came of it.
type Result struct {
	Step     string
	Before   int64 // counter just before the failure
	After    int64 // first value after recovery
	Rollback int64 // Before-After (ticks lost)
	Allowed  int64
	Recovery time.Duration
	How      string
	OK       bool
}

type run struct {
	opt      Options
	start    time.Time
	state    string
	counter  string
	ftrunLog *os.File
	ftrun    *exec.Cmd
	ftrunErr chan error
}

// Run runs the demo; it returns an error when any check failed.
func Run(ctx context.Context, opt Options) error {
	_, err := RunResults(ctx, opt)
	return err
}

// RunResults is Run that also returns each step's result.
func RunResults(ctx context.Context, opt Options) ([]Result, error) {
	if opt.Interval <= 0 {
		opt.Interval = time.Second
	}
	if opt.Out == nil {
		opt.Out = io.Discard
	}
	if len(opt.Steps) == 0 {
		opt.Steps = slices.Clone(Steps)
		if opt.Hosts {
			opt.Steps = append(opt.Steps, HostSteps...)
		}
	}
	var local, hosts []string
	for _, st := range opt.Steps {
		if slices.Contains(HostSteps, st) {
			hosts = append(hosts, st)
		} else {
			local = append(local, st)
		}
	}
	if _, err := exec.LookPath("ruby"); err != nil {
		return nil, errors.New("ruby not found: run scripts/setup (or apt-get install ruby)")
	}
	if opt.WorkDir == "" {
		d, err := os.MkdirTemp("", "ftrun-demo-")
		if err != nil {
			return nil, err
		}
		opt.WorkDir = d
	} else if err := os.MkdirAll(opt.WorkDir, 0o755); err != nil {
		return nil, err
	}
	r := &run{opt: opt, start: time.Now(), state: filepath.Join(opt.WorkDir, "state"), counter: filepath.Join(opt.WorkDir, "counter", "counter.txt")}
	if err := os.MkdirAll(filepath.Dir(r.counter), 0o755); err != nil {
		return nil, err
	}
	script := filepath.Join(opt.WorkDir, "counter.rb")
	if err := os.WriteFile(script, counterRB, 0o644); err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(opt.WorkDir, "ftrun.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r.ftrunLog = logf
	r.say("demo: protecting `ruby counter.rb` (ticks every %s, checkpoints every %s); ftrun log: %s", Tick, opt.Interval, logf.Name())

	var results []Result
	perInterval := int64(opt.Interval / Tick)
	if len(local) > 0 {
		res, err := r.local(ctx, script, local, perInterval)
		results = append(results, res...)
		if err != nil {
			return results, err
		}
	}
	if len(hosts) > 0 {
		res, err := r.runHosts(ctx, script, perInterval)
		results = append(results, res...)
		if err != nil {
			return results, fmt.Errorf("%w (see the logs in %s)", err, opt.WorkDir)
		}
	}
	r.say("summary:")
	failed := 0
	for _, res := range results {
		mark := "ok "
		if !res.OK {
			mark = "BAD"
			failed++
		}
		r.say("  %s %-20s rollback %3d ticks (allowed %3d), recovered in %s by %s", mark, res.Step, res.Rollback, res.Allowed, res.Recovery.Round(time.Millisecond), res.How)
	}
	if failed > 0 {
		return results, fmt.Errorf("%d of %d failures lost the counter's state", failed, len(results))
	}
	r.say("the counter survived every failure: never back by more than the checkpoints allow, never from zero")
	return results, nil
}

// local runs the failures on this host under one ftrun.
func (r *run) local(ctx context.Context, script string, steps []string, perInterval int64) ([]Result, error) {
	logf := r.ftrunLog
	if err := r.startFtrun(script, "--discard"); err != nil {
		return nil, err
	}
	defer r.stopFtrun()
	if _, err := r.waitStatus(ctx, 20*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 && s.State == supervisor.StateRunning }); err != nil {
		return nil, fmt.Errorf("ftrun did not protect the counter: %w (see %s)", err, logf.Name())
	}
	r.say("protected: first checkpoint committed")
	var results []Result
	for _, step := range steps {
		r.settle(ctx)
		res, err := r.inject(ctx, step, script, perInterval)
		if err != nil {
			return results, fmt.Errorf("step %s: %w (see %s)", step, err, logf.Name())
		}
		results = append(results, res)
		r.report(res)
	}
	r.say("stopping ftrun (SIGTERM: final checkpoint, then stop)")
	if err := r.stopFtrun(); err != nil {
		return results, fmt.Errorf("ftrun did not stop cleanly: %w", err)
	}
	return results, nil
}

func (r *run) say(format string, a ...any) {
	fmt.Fprintf(r.opt.Out, "[%6.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, a...))
}

func (r *run) startFtrun(script string, extra ...string) error {
	args := []string{"run", "--name", "demo-counter", "--state-dir", r.state, "--interval", r.opt.Interval.String(),
		"--health-cmd", fmt.Sprintf(`[ $(( $(date +%%s) - $(stat -c %%Y %s) )) -le 2 ]`, r.counter),
		"--health-interval", "500ms", "--health-threshold", "3", "--health-timeout", "1s"}
	args = append(args, extra...)
	args = append(args, r.syncArgs()...)
	args = append(args, "--", "ruby", script, r.counter, strconv.FormatFloat(Tick.Seconds(), 'f', -1, 64))
	cmd := exec.Command(r.opt.Ftrun, args...)
	cmd.Stdout, cmd.Stderr = r.ftrunLog, r.ftrunLog
	// ftrun in its own process group: killing it must not touch the demo.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start ftrun: %w", err)
	}
	r.ftrun = cmd
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	r.ftrunErr = done
	return nil
}

func (r *run) stopFtrun() error {
	if r.ftrun == nil {
		return nil
	}
	cmd := r.ftrun
	r.ftrun = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.ftrunErr:
		return err
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-r.ftrunErr
		return errors.New("ftrun did not stop within 30s of SIGTERM")
	}
}

func (r *run) status() (supervisor.Status, error) {
	resp, err := supervisor.Query(r.state, supervisor.Request{Op: "status"}, 2*time.Second)
	if err != nil {
		return supervisor.Status{}, err
	}
	return *resp.Status, nil
}

func (r *run) waitStatus(ctx context.Context, timeout time.Duration, ok func(supervisor.Status) bool) (supervisor.Status, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return supervisor.Status{}, ctx.Err()
		}
		select {
		case err := <-r.ftrunErr:
			r.ftrun = nil
			return supervisor.Status{}, fmt.Errorf("ftrun exited: %v", err)
		default:
		}
		st, err := r.status()
		if err == nil && ok(st) {
			return st, nil
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	if last == nil {
		last = errors.New("condition not reached")
	}
	return supervisor.Status{}, fmt.Errorf("timed out after %s: %v", timeout, last)
}

// syncArgs keeps the counter's file with its memory: a checkpoint that catches the
// counter between writing its temporary file and renaming it holds a file that is
// gone a moment later, and only --sync brings it back with that checkpoint.
func (r *run) syncArgs() []string { return []string{"--sync", filepath.Dir(r.counter)} }

func (r *run) readCounter() int64 {
	data, err := os.ReadFile(r.counter)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// settle waits until a fresh checkpoint exists and the counter has moved on a little.
func (r *run) settle(ctx context.Context) {
	st, err := r.status()
	if err != nil {
		return
	}
	_, _ = r.waitStatus(ctx, 5*r.opt.Interval, func(s supervisor.Status) bool { return s.Epoch >= st.Epoch+2 })
	// Strike at a random point of the epoch, not right after a commit (the easy case).
	time.Sleep(time.Duration(float64(r.opt.Interval) * (0.2 + 0.7*rand.Float64())))
}

// firstValueAfter waits for the counter file to be written by the recovered program and
// returns the first value it writes.
func (r *run) firstValueAfter(ctx context.Context, since time.Time) (int64, error) {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if fi, err := os.Stat(r.counter); err == nil && fi.ModTime().After(since) {
			if v := r.readCounter(); v >= 0 {
				return v, nil
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0, errors.New("the counter was not written after recovery")
}

func (r *run) inject(ctx context.Context, step, script string, perInterval int64) (Result, error) {
	before, err := r.status()
	if err != nil {
		return Result{}, err
	}
	res := Result{Step: step, Allowed: perInterval + perInterval/4 + 2}
	var t0 time.Time
	var recovered func(supervisor.Status) bool
	switch step {
	case "kill-program":
		r.say("inject: kill -9 the program (pid %d)", before.Pid)
		res.Before, t0 = r.readCounter(), time.Now()
		if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
			return res, err
		}
		recovered = func(s supervisor.Status) bool {
			return s.Restores > before.Restores && s.State == supervisor.StateRunning
		}
		res.How = "restore"
	case "hang":
		r.say("inject: SIGSTOP the program (pid %d): it hangs; the health check must notice", before.Pid)
		res.Before, t0 = r.readCounter(), time.Now()
		if err := syscall.Kill(before.Pid, syscall.SIGSTOP); err != nil {
			return res, err
		}
		recovered = func(s supervisor.Status) bool {
			return s.Restores > before.Restores && s.State == supervisor.StateRunning
		}
		res.How = "health check + restore"
	case "kill-ftrun":
		r.say("inject: kill -9 ftrun itself (pid %d), then start it again as systemd's Restart= would", r.ftrun.Process.Pid)
		res.Before, t0 = r.readCounter(), time.Now()
		_ = r.ftrun.Process.Kill()
		<-r.ftrunErr
		r.ftrun = nil
		if err := r.startFtrun(script); err != nil {
			return res, err
		}
		recovered = func(s supervisor.Status) bool { return s.Adoptions > 0 && s.State == supervisor.StateRunning }
		res.How = "adopt"
		res.Allowed = 0
	case "delete-file":
		r.say("inject: delete the counter's output file and kill -9 the program: only its memory knows the count")
		res.Before, t0 = r.readCounter(), time.Now()
		_ = os.Remove(r.counter)
		if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
			return res, err
		}
		recovered = func(s supervisor.Status) bool {
			return s.Restores > before.Restores && s.State == supervisor.StateRunning
		}
		res.How = "restore"
	case "corrupt-checkpoint":
		newest, err := newestSet(filepath.Join(r.state, supervisor.CheckpointsDir))
		if err != nil {
			return res, err
		}
		r.say("inject: corrupt the newest checkpoint (%s) and kill -9 the program", filepath.Base(newest))
		res.Before, t0 = r.readCounter(), time.Now()
		if err := corrupt(newest); err != nil {
			return res, err
		}
		if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
			return res, err
		}
		recovered = func(s supervisor.Status) bool {
			return s.Restores > before.Restores && s.State == supervisor.StateRunning
		}
		res.How = "restore of an older checkpoint"
		// The newest checkpoint is lost, so one more interval may be lost with it.
		res.Allowed += perInterval
	case "disk-read-only":
		return r.readOnly(ctx, before)
	default:
		return res, fmt.Errorf("unknown step %q", step)
	}
	if _, err := r.waitStatus(ctx, 30*time.Second, recovered); err != nil {
		return res, err
	}
	after, err := r.firstValueAfter(ctx, t0)
	if err != nil {
		return res, err
	}
	res.Recovery = time.Since(t0)
	res.After = after
	res.Rollback = res.Before - res.After
	if res.Rollback < 0 {
		res.Rollback = 0
	}
	res.OK = res.Rollback <= res.Allowed && res.After > perInterval
	return res, nil
}

// readOnly makes the disk that holds the checkpoints read-only under a running ftrun
// (a bind mount of the checkpoint directory, remounted read-only, as a failing disk
// does), then writable again: the program runs on untouched, ftrun says its checkpoints
// fail, and once the disk is back they go on by themselves.
func (r *run) readOnly(ctx context.Context, before supervisor.Status) (Result, error) {
	res := Result{Step: "disk-read-only", How: "checkpoints fail, the program runs on, then resume"}
	dir := filepath.Join(r.state, supervisor.CheckpointsDir)
	mount := func(args ...string) error {
		if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("mount %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	if err := mount("--bind", dir, dir); err != nil {
		return res, err
	}
	defer exec.Command("umount", "-l", dir).Run()
	r.say("inject: the checkpoint disk fails read-only (%s)", dir)
	res.Before, res.Allowed = r.readCounter(), 0
	t0 := time.Now()
	var err error
	for i := 0; i < 50; i++ { // EBUSY while a checkpoint is being written
		if err = mount("-o", "remount,bind,ro", dir); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return res, err
	}
	failing, err := r.waitStatus(ctx, 10*r.opt.Interval+5*time.Second, func(s supervisor.Status) bool { return s.CheckpointFailures > before.CheckpointFailures })
	if err != nil {
		return res, fmt.Errorf("no checkpoint failed on the read-only disk: %w", err)
	}
	r.say("  checkpoints fail (%s); the program runs on", firstLine(failing.LastError))
	time.Sleep(2 * r.opt.Interval)
	mid := r.readCounter()
	if err := mount("-o", "remount,bind,rw", dir); err != nil {
		return res, err
	}
	r.say("  the disk is writable again")
	back, err := r.waitStatus(ctx, 10*r.opt.Interval+5*time.Second, func(s supervisor.Status) bool { return s.Epoch > failing.Epoch && s.LastError == "" })
	if err != nil {
		return res, fmt.Errorf("checkpoints did not resume: %w", err)
	}
	res.Recovery, res.After = time.Since(t0), r.readCounter()
	res.OK = back.Pid == before.Pid && mid > res.Before && res.After > mid
	return res, nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 120 {
		s = s[:120] + "..."
	}
	return s
}

func newestSet(dir string) (string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	newest := ""
	for _, e := range ents {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") && e.Name() > newest {
			newest = e.Name()
		}
	}
	if newest == "" {
		return "", errors.New("no checkpoint to corrupt")
	}
	return filepath.Join(dir, newest), nil
}

// corrupt flips bytes in the middle of the largest image of a set.
func corrupt(set string) error {
	ents, err := os.ReadDir(set)
	if err != nil {
		return err
	}
	var big string
	var size int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil && strings.HasSuffix(e.Name(), ".img") && fi.Size() > size {
			big, size = filepath.Join(set, e.Name()), fi.Size()
		}
	}
	if big == "" {
		return errors.New("no image to corrupt")
	}
	f, err := os.OpenFile(big, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteAt([]byte("corrupted by the demo"), size/2)
	return err
}

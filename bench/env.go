package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ftrun/ftrun/failover"
	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/transport/auth"
)

// Env is what a scenario works with. Everything it starts through Env (processes,
// services, hosts) is undone when the scenario returns, in reverse order, whether it
// succeeded, failed or was interrupted.
type Env struct {
	Ftrun   string // the ftrun binary that is measured
	Scratch string // this scenario's own scratch directory
	Quick   bool   // the short variant (CI)
	// IncrementalMB are the sizes of the incremental scenario's programs (nil: its
	// default).
	IncrementalMB []int
	// Logf prints a progress line (the runner adds the time and the scenario's name).
	Logf func(format string, a ...any)

	id   string        // short id of this run, in every name it creates
	nets *atomic.Int32 // networks made so far by this run
	undo *undoStack
}

// undoStack holds what must be undone, last first.
type undoStack struct {
	mu sync.Mutex
	fs []func()
}

// Defer registers f to run when the scenario ends (last registered, first run).
func (e Env) Defer(f func()) {
	e.undo.mu.Lock()
	defer e.undo.mu.Unlock()
	e.undo.fs = append(e.undo.fs, f)
}

func (u *undoStack) run() {
	for {
		u.mu.Lock()
		if len(u.fs) == 0 {
			u.mu.Unlock()
			return
		}
		f := u.fs[len(u.fs)-1]
		u.fs = u.fs[:len(u.fs)-1]
		u.mu.Unlock()
		f()
	}
}

// Name is a name unique to this run for services, namespaces and links: "ftb<id><s>".
func (e Env) Name(s string) string { return "ftb" + e.id + s }

// Dir makes a new directory under the scratch directory.
func (e Env) Dir(name string) (string, error) {
	d := filepath.Join(e.Scratch, name)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("scratch dir: %w", err)
	}
	return d, nil
}

// Sleep waits for d or until ctx ends.
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Proc is a process this run started (in its own process group).
type Proc struct {
	Label string
	Log   string // its stdout and stderr
	cmd   *exec.Cmd
	done  chan struct{}
	err   error
}

// Start runs argv with output to Scratch/label.log, in the network namespace at netns
// ("" for this one) entered with nsenter, which then becomes the program: signals
// reach it directly, and no mount namespace is added (CRIU dumps need that). The
// process is stopped when the scenario ends (SIGTERM, then SIGKILL after 30s).
func (e Env) Start(label, netns string, argv ...string) (*Proc, error) {
	logPath := filepath.Join(e.Scratch, label+".log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("log of %s: %w", label, err)
	}
	defer logf.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	if netns != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=" + netns, "--"}, argv...)...)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", label, err)
	}
	p := &Proc{Label: label, Log: logPath, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	e.Defer(func() { _ = p.Stop(30 * time.Second) })
	return p, nil
}

// Pid is the process's pid.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process ended (valid once Done is closed).
func (p *Proc) Err() error { return p.err }

// Kill SIGKILLs the process and waits for it.
func (p *Proc) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// Terminate sends SIGTERM and does not wait (Stop waits).
func (p *Proc) Terminate() {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
}

// Stop sends SIGTERM and waits up to grace, then SIGKILLs.
func (p *Proc) Stop(grace time.Duration) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		return nil
	case <-t.C:
		p.Kill()
		return fmt.Errorf("%s did not stop within %s of SIGTERM", p.Label, grace)
	}
}

// Tail is the end of the process's log.
func (p *Proc) Tail(lines int) string { return tailFile(p.Log, lines) }

func tailFile(path string, n int) string {
	data, _ := os.ReadFile(path)
	ls := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

// Service is one `ftrun run`.
type Service struct {
	*Proc
	Name     string
	StateDir string
}

// RunFtrun starts `ftrun run --name name --state-dir DIR flags... -- command...` in
// netns ("" for this one). When the scenario ends ftrun is stopped and whatever is
// left in the service's cgroup is killed.
func (e Env) RunFtrun(name, netns string, flags []string, command ...string) (*Service, error) {
	return e.RunFtrunWith(name, netns, nil, flags, command...)
}

// RunFtrunWith is RunFtrun with ftrun's global flags (--log-format, --log-level).
func (e Env) RunFtrunWith(name, netns string, global, flags []string, command ...string) (*Service, error) {
	state, err := e.Dir("state-" + name)
	if err != nil {
		return nil, err
	}
	e.Defer(func() { KillCgroup(name) })
	argv := append(append([]string{e.Ftrun}, global...), "run", "--name", name, "--state-dir", state)
	argv = append(argv, flags...)
	argv = append(append(argv, "--"), command...)
	p, err := e.Start(name, netns, argv...)
	if err != nil {
		return nil, err
	}
	return &Service{Proc: p, Name: name, StateDir: state}, nil
}

// Status asks the supervisor (`ftrun status --json`).
func (s *Service) Status() (supervisor.Status, error) {
	resp, err := supervisor.Query(s.StateDir, supervisor.Request{Op: "status"}, 5*time.Second)
	if err != nil {
		return supervisor.Status{}, err
	}
	if resp.Status == nil {
		return supervisor.Status{}, fmt.Errorf("%s: no status in the answer", s.Name)
	}
	return *resp.Status, nil
}

// Checkpoint takes a checkpoint now (`ftrun checkpoint`) and returns its epoch.
func (s *Service) Checkpoint() (uint64, error) {
	resp, err := supervisor.Query(s.StateDir, supervisor.Request{Op: "checkpoint"}, 2*time.Minute)
	if err != nil {
		return 0, fmt.Errorf("%s: checkpoint: %w", s.Name, err)
	}
	return resp.Epoch, nil
}

// WaitFor polls the status until ok holds; it fails when ftrun exits or time runs out,
// quoting the end of ftrun's log.
func (s *Service) WaitFor(ctx context.Context, what string, timeout time.Duration, ok func(supervisor.Status) bool) (supervisor.Status, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		select {
		case <-s.Done():
			return supervisor.Status{}, fmt.Errorf("%s: waiting for %s: ftrun exited (%v); its log ends:\n%s", s.Name, what, s.Err(), s.Tail(15))
		default:
		}
		st, err := s.Status()
		if err == nil && ok(st) {
			return st, nil
		}
		last = err
		if time.Now().After(deadline) {
			return st, fmt.Errorf("%s: waiting for %s: timed out after %s (last error: %v); ftrun's log ends:\n%s", s.Name, what, timeout, last, s.Tail(15))
		}
		if err := Sleep(ctx, 20*time.Millisecond); err != nil {
			return st, err
		}
	}
}

// KillCgroup kills whatever is left in service name's cgroup and removes the group.
func KillCgroup(name string) {
	cg, err := supervisor.OpenCgroup(name)
	if err != nil {
		return
	}
	_ = cg.Kill()
	for i := 0; i < 200; i++ {
		if pids, _ := cg.Procs(); len(pids) == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = cg.Delete()
}

// Keys makes a CA and node certificate (what `ftrun keygen` makes) for a standby and
// its primaries.
func (e Env) Keys() (string, error) {
	dir := filepath.Join(e.Scratch, "keys")
	if err := auth.Keygen(dir, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		return "", fmt.Errorf("keygen: %w", err)
	}
	return dir, nil
}

// RunStandby starts `ftrun standby` listening on listen, in netns.
func (e Env) RunStandby(label, netns, listen, keys string, extra ...string) (*Proc, string, error) {
	state, err := e.Dir("state-" + label)
	if err != nil {
		return nil, "", err
	}
	argv := append([]string{e.Ftrun, "standby", "--listen", listen, "--state-dir", state, "--keys", keys}, extra...)
	p, err := e.Start(label, netns, argv...)
	return p, state, err
}

// NoTakeover is the `ftrun standby` flag for scenarios that measure something other
// than failover: a primary starved of CPU for a moment is not taken for dead (a
// take-over would start a second copy in the same cgroup on this one machine).
var NoTakeover = []string{"--takeover-timeout", "1h"}

// CheckNoTakeover fails when the standby at state took over any service: what was
// measured then is not what the scenario meant to measure.
func CheckNoTakeover(state string) error {
	ss, err := StandbyStatus(state)
	if err != nil {
		return err
	}
	for _, s := range ss {
		if s.Role == "live" {
			return fmt.Errorf("the standby took over %s while its primary was running", s.Service)
		}
	}
	return nil
}

// StandbyStatus asks a standby (`ftrun status --json --state-dir STATE`).
func StandbyStatus(state string) ([]failover.StandbyStatus, error) {
	resp, err := supervisor.Query(state, supervisor.Request{Op: "status"}, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return resp.Standby, nil
}

// FreePort is a TCP port free on 127.0.0.1 right now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// run runs a short command and returns its error with its output.
func run(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// copyFile copies a log into the report, best effort.
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	return errors.Join(err, out.Close())
}

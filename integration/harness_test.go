package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/bench"
	"github.com/ftrun/ftrun/supervisor"
)

var (
	ftrunBin   string
	buildFlags []string
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ftrun-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ftrunBin = filepath.Join(dir, "ftrun")
	args := append(append([]string{"build"}, buildFlags...), "-o", ftrunBin, "github.com/ftrun/ftrun/cmd/ftrun")
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build ftrun: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requiresRoot skips tests that need root and the tools scripts/setup installs.
func requiresRoot(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: CRIU, cgroups and namespaces")
	}
	for _, tool := range append([]string{"criu"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: run scripts/setup", tool)
		}
	}
}

// ftrunProc is one running `ftrun run`.
type ftrunProc struct {
	t        testing.TB
	cmd      *exec.Cmd
	stateDir string
	logPath  string
	done     chan struct{}
	err      error
}

func startFtrun(t testing.TB, stateDir string, env []string, args ...string) *ftrunProc {
	t.Helper()
	return startFtrunIn(t, "", stateDir, env, args...)
}

// startFtrunIn runs `ftrun run` in the network namespace at netns ("" for this one);
// nsenter enters it and then becomes ftrun, so signals reach ftrun itself.
func startFtrunIn(t testing.TB, netns, stateDir string, env []string, args ...string) *ftrunProc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "ftrun.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	full := append([]string{"run", "--state-dir", stateDir}, args...)
	cmd := exec.Command(ftrunBin, full...)
	if netns != "" {
		cmd = exec.Command("nsenter", append([]string{"--net=" + netns, "--", ftrunBin}, full...)...)
	}
	return launchFtrun(t, cmd, logf, env, stateDir)
}

// launchFtrun starts cmd, which becomes `ftrun run` on stateDir (it may exec ftrun
// after setting something up), logging to logf.
func launchFtrun(t testing.TB, cmd *exec.Cmd, logf *os.File, env []string, stateDir string) *ftrunProc {
	t.Helper()
	logPath := logf.Name()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	p := &ftrunProc{t: t, cmd: cmd, stateDir: stateDir, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop()
		if strings.Contains(p.log(), "DATA RACE") {
			t.Errorf("the race detector found a data race in ftrun (see its log)")
		}
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("ftrun log:\n%s", tail(string(data), 60))
			logFailedRestores(t, stateDir)
		}
	})
	return p
}

// logFailedRestores shows the end of every CRIU log a failed restore left under dir:
// the supervisor's one-line error names the cause, the log says why.
func logFailedRestores(t testing.TB, dir string) {
	if dir == "" {
		return
	}
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == "last-failed-restore.log" {
			data, _ := os.ReadFile(path)
			t.Logf("%s:\n%s", path, tail(string(data), 40))
		}
		return nil
	})
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// stop sends SIGTERM and waits; it returns ftrun's exit code.
func (p *ftrunProc) stop() int {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
			p.t.Errorf("ftrun did not stop within 30s of SIGTERM")
		}
	}
	return exitCode(p.err)
}

func (p *ftrunProc) kill9() {
	_ = p.cmd.Process.Kill()
	<-p.done
}

func (p *ftrunProc) wait(timeout time.Duration) (int, error) {
	select {
	case <-p.done:
		return exitCode(p.err), nil
	case <-time.After(timeout):
		return 0, errors.New("ftrun still running")
	}
}

func (p *ftrunProc) log() string {
	data, _ := os.ReadFile(p.logPath)
	return string(data)
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func status(stateDir string) (supervisor.Status, error) {
	resp, err := supervisor.Query(stateDir, supervisor.Request{Op: "status"}, 2*time.Second)
	if err != nil {
		return supervisor.Status{}, err
	}
	return *resp.Status, nil
}

// waitFor polls the supervisor's status until ok holds.
func (p *ftrunProc) waitFor(what string, timeout time.Duration, ok func(supervisor.Status) bool) supervisor.Status {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			p.t.Fatalf("waiting for %s: ftrun exited (%v)", what, p.err)
		default:
		}
		st, err := status(p.stateDir)
		if err == nil && ok(st) {
			return st
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	p.t.Fatalf("waiting for %s: timed out after %s (last error: %v)", what, timeout, last)
	return supervisor.Status{}
}

func (p *ftrunProc) checkpoint() uint64 {
	p.t.Helper()
	resp, err := supervisor.Query(p.stateDir, supervisor.Request{Op: "checkpoint"}, time.Minute)
	if err != nil {
		p.t.Fatalf("forced checkpoint: %v", err)
	}
	return resp.Epoch
}

// cgroupProcs lists the processes in service name's cgroup.
func cgroupProcs(t testing.TB, name string) []int {
	data, err := os.ReadFile(filepath.Join(cgroup2Mount(t), "ftrun", name, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(string(data)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

func cgroup2Mount(t testing.TB) string {
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		return "/sys/fs/cgroup"
	}
	return "/sys/fs/cgroup/unified"
}

// killService removes whatever a test left in a service's cgroup.
func killService(t testing.TB, name string) {
	path := filepath.Join(cgroup2Mount(t), "ftrun", name)
	_ = os.WriteFile(filepath.Join(path, "cgroup.kill"), []byte("1"), 0)
	for i := 0; i < 100 && len(cgroupProcs(t, name)) > 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	_ = os.Remove(path)
}

var portMu sync.Mutex

// freePort finds a free TCP port on 127.0.0.1.
func freePort(t testing.TB) int {
	portMu.Lock()
	defer portMu.Unlock()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// resp is bench's minimal RESP client: enough to speak to a real redis-server.
type resp = bench.RESP

func dialRedis(addr string, timeout time.Duration) (*resp, error) {
	return bench.DialRedis("", addr, timeout)
}

// waitRedis polls until PING answers on a new connection.
func waitRedis(ctx context.Context, addr string) (time.Time, error) {
	for {
		if c, err := dialRedis(addr, 200*time.Millisecond); err == nil {
			got, err := c.Do(500*time.Millisecond, "PING")
			c.Close()
			if err == nil && got == "PONG" {
				return time.Now(), nil
			}
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("redis at %s did not answer: %w", addr, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// redisArgs runs redis-server in the foreground on 127.0.0.1:port with no persistence
// of its own: only ftrun keeps its data.
func redisArgs(port int, dir string) []string {
	return []string{"redis-server", "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", dir, "--protected-mode", "no", "--logfile", "", "--enable-debug-command", "local"}
}

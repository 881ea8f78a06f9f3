package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
)

// Deadlines of one CRIU run when the Criu does not name its own. A dump of a few
// hundred MiB takes well under a second here and a restore about as long; these leave
// room for programs a hundred times larger and for a loaded disk, while still
// bounding a hang (a flock CRIU waits for, a stopped CRIU) to something an operator
// notices rather than forever.
const (
	DefaultDumpTimeout    = 30 * time.Second
	DefaultRestoreTimeout = 60 * time.Second
)

// ErrDeadline marks a CRIU run that overran its deadline and was killed.
var ErrDeadline = errors.New("criu overran its deadline")

// ErrCriuDied marks a CRIU run that a signal from elsewhere ended: the images it
// worked on are not to blame, and the same operation may well succeed again.
var ErrCriuDied = errors.New("criu was killed by a signal")

// DeadlineError is a CRIU run killed at its deadline, with what it was waiting on.
type DeadlineError struct {
	Op    string        // "dump" or "restore"
	After time.Duration // the deadline
	// Waits are the kernel wait channels of CRIU's tasks ("criu 123 in do_wait"), and
	// of whatever the caller added (the half-restored program's tasks).
	Waits   []string
	LastLog string // the last line of CRIU's log
	Log     string // CRIU's log file
}

func (e *DeadlineError) Error() string {
	msg := fmt.Sprintf("criu %s overran its %s deadline and was killed", e.Op, e.After)
	if len(e.Waits) > 0 {
		msg += "; waiting: " + strings.Join(e.Waits, ", ")
	}
	if e.LastLog != "" {
		msg += "; last log line: " + e.LastLog
	}
	return msg
}

func (e *DeadlineError) Unwrap() []error { return []error{ErrDeadline, ErrCriuFailed} }

// timeout is the deadline of op for this Criu.
func (c *Criu) timeout(op string) time.Duration {
	if op == "dump" {
		if c.DumpTimeout > 0 {
			return c.DumpTimeout
		}
		return DefaultDumpTimeout
	}
	if c.RestoreTimeout > 0 {
		return c.RestoreTimeout
	}
	return DefaultRestoreTimeout
}

// swrkMu serializes starting CRIU helpers, so the one child that appears across a
// start is the one just started.
var swrkMu sync.Mutex

// startSwrk starts cl's `criu swrk` and returns its PID. go-criu keeps the process to
// itself; its PID is what a deadline needs to kill it.
func startSwrk(cl *criu.Criu) (int, error) {
	swrkMu.Lock()
	defer swrkMu.Unlock()
	before := swrkChildren()
	if err := cl.Prepare(); err != nil {
		return 0, err
	}
	for pid := range swrkChildren() {
		if !before[pid] {
			return pid, nil
		}
	}
	_ = cl.Cleanup()
	return 0, fmt.Errorf("%w: cannot find the criu swrk process just started", ErrCriuFailed)
}

// swrkChildren are this process's children that run `criu swrk`.
func swrkChildren() map[int]bool {
	out := map[int]bool{}
	for _, pid := range children(os.Getpid()) {
		if argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil {
			if args := strings.Split(string(argv), "\x00"); len(args) > 1 && args[1] == "swrk" {
				out[pid] = true
			}
		}
	}
	return out
}

// children lists pid's children, from every thread's children file.
func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		data, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(data)) {
			if n, err := strconv.Atoi(f); err == nil {
				out = append(out, n)
			}
		}
	}
	return out
}

// Waiting describes where each of pids sleeps in the kernel ("redis-server 42 in
// flock_lock_inode_wait"), leaving out the ones that are running or gone.
func Waiting(pids []int) []string {
	var out []string
	for _, pid := range pids {
		wchan, err := os.ReadFile(fmt.Sprintf("/proc/%d/wchan", pid))
		w := strings.TrimSpace(string(wchan))
		if err != nil || w == "" || w == "0" {
			continue
		}
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		state, _ := procStateLetter(pid)
		desc := fmt.Sprintf("%s %d in %s", strings.TrimSpace(string(comm)), pid, w)
		if state == 'T' || state == 't' {
			desc += " (stopped)"
		}
		out = append(out, desc)
	}
	return out
}

func procStateLetter(pid int) (byte, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 >= len(s) {
		return 0, fmt.Errorf("malformed stat of %d", pid)
	}
	return s[i+2], nil
}

// tree is pid and its descendants.
func tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && i < 1024; i++ {
		out = append(out, children(out[i])...)
	}
	return out
}

// lastLogLine is the last line of a CRIU log, without CRIU's timestamp.
func lastLogLine(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var last string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			last = l
		}
	}
	if strings.HasPrefix(last, "(") {
		if i := strings.IndexByte(last, ')'); i > 0 {
			last = strings.TrimSpace(last[i+1:])
		}
	}
	return last
}

// withDeadline runs one CRIU operation (fn, over cl) under op's deadline. It starts
// CRIU itself so that it knows whom to kill: on overrun it notes what CRIU and the
// caller's extra tasks wait on, SIGKILLs them all (fn then fails on the closed RPC
// socket) and returns a *DeadlineError. CRIU's own children go too: a half-restored
// task holds the RPC socket, and fn would wait for it as long as for CRIU.
func (c *Criu) withDeadline(op, logPath string, cl *criu.Criu, extra func() []int, fn func() error) error {
	pid, err := startSwrk(cl)
	if err != nil {
		return err
	}
	timeout := c.timeout(op)
	var (
		mu   sync.Mutex
		done bool
		over *DeadlineError
	)
	timer := time.AfterFunc(timeout, func() {
		mu.Lock()
		defer mu.Unlock()
		if done {
			return // CRIU finished and may be reaped: its PID is no longer its own
		}
		pids := tree(pid)
		if extra != nil {
			pids = append(pids, extra()...)
		}
		over = &DeadlineError{Op: op, After: timeout, Waits: Waiting(pids), LastLog: lastLogLine(logPath), Log: logPath}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	err = fn()
	timer.Stop()
	mu.Lock()
	done = true
	mu.Unlock()
	cerr := cl.Cleanup() // closes the RPC socket and reaps CRIU
	if err != nil {
		// A CRIU that died or was killed cleans up nothing it mounted.
		_ = UnmountUnder(filepath.Dir(logPath))
	}
	if over != nil {
		return over
	}
	if err != nil {
		if sig, ok := killedBy(cerr); ok {
			return fmt.Errorf("%w (%s): %w", ErrCriuDied, sig, err)
		}
	}
	return err
}

// UnmountUnder detaches every mount below dir, deepest first. A CRIU killed in the
// middle leaves its cgroup yard (.criu.cgyard.*, a tmpfs with the cgroup hierarchies
// below it) mounted in its working directory, which then can be neither removed nor
// reused.
func UnmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	prefix := filepath.Clean(dir) + "/"
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(unescapeMount(f[4]), prefix) {
			points = append(points, unescapeMount(f[4]))
		}
	}
	// Deeper mounts first: a mount under another keeps it busy.
	slices.SortFunc(points, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var errs []error
	for _, p := range points {
		if err := syscall.Unmount(p, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %q: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// killedBy tells whether CRIU's end, as Cleanup reported it, was a signal.
func killedBy(err error) (string, bool) {
	ee, ok := errors.AsType[*exec.ExitError](err)
	if !ok {
		return "", false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() {
		return "", false
	}
	return ws.Signal().String(), true
}

package checkpoint

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"

	"github.com/ftrun/ftrun/internal/procfs"
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

// swrkMu serializes starting CRIU helpers, so the one socket that appears across a
// start is the one just made.
var swrkMu sync.Mutex

// swrk is a started `criu swrk`: its PID and ftrun's end of its RPC socket. go-criu
// keeps both to itself; a deadline needs them to kill CRIU and to stop waiting for an
// answer that a half-restored task, holding CRIU's end, may never send.
type swrk struct {
	pid  int
	sock int // -1 if not found
}

func startSwrk(cl *criu.Criu) (swrk, error) {
	swrkMu.Lock()
	defer swrkMu.Unlock()
	socks := seqpacketFds()
	if err := cl.Prepare(); err != nil {
		return swrk{}, err
	}
	w := swrk{pid: swrkPid(cl), sock: -1}
	for fd := range seqpacketFds() {
		if !socks[fd] {
			w.sock = fd
		}
	}
	if w.pid <= 0 {
		_ = cl.Cleanup()
		return swrk{}, fmt.Errorf("%w: go-criu did not keep the PID of the criu swrk it started", ErrCriuFailed)
	}
	return w, nil
}

// swrkPid is the PID of the `criu swrk` that cl.Prepare started. go-criu keeps the
// exec.Cmd in an unexported field and offers no accessor; reading it by reflection
// (read-only) is exact, where looking for the new child in /proc by its command line
// missed it now and then in full-suite runs. A go-criu that renames the field makes
// this 0, and TestSwrkPid fails.
func swrkPid(cl *criu.Criu) int {
	f := reflect.ValueOf(cl).Elem().FieldByName("swrkCmd")
	if !f.IsValid() || f.Kind() != reflect.Pointer || f.IsNil() {
		return 0
	}
	p := f.Elem().FieldByName("Process")
	if !p.IsValid() || p.IsNil() {
		return 0
	}
	return int(p.Elem().FieldByName("Pid").Int())
}

// seqpacketFds are this process's AF_UNIX SOCK_SEQPACKET descriptors: go-criu's
// sockets to CRIU are the only ones ftrun makes.
func seqpacketFds() map[int]bool {
	out := map[int]bool{}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if t, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_TYPE); err == nil && t == syscall.SOCK_SEQPACKET {
			out[fd] = true
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
		state, _ := procfs.State(pid)
		desc := fmt.Sprintf("%s %d in %s", strings.TrimSpace(string(comm)), pid, w)
		if procfs.Stopped(state) {
			desc += " (stopped)"
		}
		out = append(out, desc)
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
// caller's extra tasks wait on, SIGKILLs them all with every task CRIU forked, and
// stops waiting for CRIU's answer (fn then fails) and returns a *DeadlineError. A
// CRIU killed from elsewhere is given up on the same way after a short grace: a
// half-restored task it leaves behind holds the RPC socket, and fn would wait for it
// forever.
func (c *Criu) withDeadline(op, logPath string, cl *criu.Criu, extra func() []int, fn func() error) error {
	w, err := startSwrk(cl)
	if err != nil {
		return err
	}
	timeout := c.timeout(op)
	g := &guard{w: w, extra: extra, done: make(chan struct{})}
	g.wg.Add(1)
	go g.watch(timeout, func() *DeadlineError {
		return &DeadlineError{Op: op, After: timeout, Waits: Waiting(append(g.seenPids(), g.extraPids()...)), LastLog: lastLogLine(logPath), Log: logPath}
	})
	err = fn()
	close(g.done)
	g.wg.Wait()
	cerr := cl.Cleanup() // closes the RPC socket and reaps CRIU
	if err != nil {
		// A CRIU that died or was killed cleans up nothing it mounted.
		_ = UnmountUnder(filepath.Dir(logPath))
	}
	if g.over != nil {
		return g.over
	}
	if err != nil {
		if sig, ok := killedBy(cerr); ok {
			return fmt.Errorf("%w (%s): %w", ErrCriuDied, sig, err)
		}
	}
	return err
}

// criuGrace is how long a dead CRIU's operation may still answer before it is given up.
const criuGrace = time.Second

// guard watches one CRIU run: its deadline, CRIU's death, and the tasks it forks.
type guard struct {
	w     swrk
	extra func() []int
	done  chan struct{}
	wg    sync.WaitGroup
	seen  map[int]uint64 // every task of CRIU's tree seen, by start time
	over  *DeadlineError // set before done is read by the caller
}

func (g *guard) watch(timeout time.Duration, overrun func() *DeadlineError) {
	defer g.wg.Done()
	g.seen = map[int]uint64{}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var diedAt time.Time
	for {
		g.note()
		select {
		case <-g.done:
			return
		case <-deadline.C:
			g.over = overrun()
			g.abandon()
			return
		case now := <-tick.C:
			if diedAt.IsZero() && !alive(g.w.pid) {
				diedAt = now
			}
			if !diedAt.IsZero() && now.Sub(diedAt) > criuGrace {
				g.abandon()
				return
			}
		}
	}
}

// note remembers CRIU's tree as it is now.
func (g *guard) note() {
	for _, p := range procfs.Tree(g.w.pid) {
		if _, ok := g.seen[p]; !ok {
			if st, err := startTime(p); err == nil {
				g.seen[p] = st
			}
		}
	}
}

func (g *guard) seenPids() []int {
	var out []int
	for p, st := range g.seen {
		if now, err := startTime(p); err == nil && now == st {
			out = append(out, p)
		}
	}
	return out
}

func (g *guard) extraPids() []int {
	if g.extra == nil {
		return nil
	}
	return g.extra()
}

// abandon kills CRIU, what it forked and the caller's extra tasks, and shuts down
// ftrun's end of the RPC socket so the operation returns.
func (g *guard) abandon() {
	for _, p := range append(g.seenPids(), g.extraPids()...) {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	if g.w.sock >= 0 {
		_ = syscall.Shutdown(g.w.sock, syscall.SHUT_RDWR)
	}
}

// alive reports whether pid runs (a zombie, CRIU not yet reaped, does not).
func alive(pid int) bool {
	st, err := procfs.State(pid)
	return err == nil && st != 'Z' && st != 'X'
}

// startTime is field 22 of /proc/PID/stat: with the PID it names one process.
func startTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat of %d", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("malformed stat of %d", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
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
		if len(f) > 4 && strings.HasPrefix(procfs.Unescape(f[4]), prefix) {
			points = append(points, procfs.Unescape(f[4]))
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

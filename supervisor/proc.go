package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/internal/procfs"
	"github.com/ftrun/ftrun/supervisor/container"
)

// ExitStatus is how the program ended.
type ExitStatus struct {
	Code    int    // exit code when Exited
	Signal  string // signal name when killed by a signal
	Exited  bool
	Unknown bool // an adopted program (not our child): the kernel keeps its status from us
}

func (e ExitStatus) String() string {
	switch {
	case e.Unknown:
		return "exited (status unknown: the program was adopted)"
	case e.Exited:
		return fmt.Sprintf("exited with code %d", e.Code)
	default:
		return "killed by " + e.Signal
	}
}

// Clean is an exit with code 0.
func (e ExitStatus) Clean() bool { return e.Exited && e.Code == 0 }

// startProgram runs argv in a container of its own (see package container): PID 1 of
// new PID, mount and IPC namespaces, in its own session, placed into the cgroup at
// clone time, with stdin from /dev/null, stdout/stderr on the given pipes and extra as
// descriptors 3 and up (--preserve-fds). A new PID namespace means a restore never
// needs the original host PID to be free; a session of its own means CRIU need not
// treat it as a shell job. enter, when set, forks the program from a thread inside its
// own network namespace. user, when set, is who the program runs as.
func startProgram(argv []string, dir string, env []string, cg *os.File, stdout, stderr *os.File, extra []*os.File, enter func(func() error) error, user *container.Cred) (int, error) {
	if len(argv) == 0 {
		return 0, errors.New("no command to run")
	}
	prog, err := exec.LookPath(argv[0])
	if err != nil {
		return 0, fmt.Errorf("command %q: %w", argv[0], err)
	}
	if !filepath.IsAbs(prog) && dir != "" {
		// As before the container: a relative program is found from its working directory.
		prog = filepath.Join(dir, prog)
	}
	if prog, err = filepath.Abs(prog); err != nil {
		return 0, err
	}
	path, args, env, err := container.Command(container.Spec{Path: prog, Args: argv, Dir: dir, User: user, Fds: len(extra)}, env)
	if err != nil {
		return 0, err
	}
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return 0, err
	}
	defer devnull.Close()
	attr := &syscall.SysProcAttr{
		Setsid:     true,
		Cloneflags: container.Cloneflags,
	}
	if cg != nil {
		attr.UseCgroupFD = true
		attr.CgroupFD = int(cg.Fd())
	}
	// The container's first process is ftrun's own binary until it has set the
	// container up and exec'd the program: a checkpoint taken before then would hold
	// that half-made process (its fd 0 still the host's /dev/null, which CRIU cannot
	// find in the container's mounts). It holds the write end of this pipe, as the
	// descriptor after the preserved ones, until its exec closes it.
	execd, execdW, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("pipe: %w", err)
	}
	defer execd.Close()
	var proc *os.Process
	start := func() (err error) {
		proc, err = os.StartProcess(path, args, &os.ProcAttr{
			Dir:   dir,
			Env:   env,
			Files: append(append([]*os.File{devnull, stdout, stderr}, extra...), execdW),
			Sys:   attr,
		})
		return err
	}
	if enter != nil {
		err = enter(start)
	} else {
		err = start()
	}
	execdW.Close()
	if err != nil {
		return 0, fmt.Errorf("start %q: %w", argv[0], err)
	}
	pid := proc.Pid
	if err := awaitExec(execd, execTimeout); err != nil {
		_ = proc.Kill()
		_, _ = proc.Wait()
		return 0, fmt.Errorf("start %q: %w", argv[0], err)
	}
	// We wait with pidfd/wait4 ourselves so that started, restored and adopted programs
	// are watched the same way.
	_ = proc.Release()
	return pid, nil
}

// execTimeout bounds how long the container's first process may take to set the
// container up and exec the program.
const execTimeout = 30 * time.Second

// awaitExec waits for the end of file on r: the container's first process has
// exec'd the program, or exited (which the program's watcher reports).
func awaitExec(r *os.File, timeout time.Duration) error {
	if err := r.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	var b [64]byte
	for {
		_, err := r.Read(b[:])
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, os.ErrDeadlineExceeded):
			return fmt.Errorf("the container was not set up within %s (its first process never exec'd the program)", timeout)
		case err != nil:
			return fmt.Errorf("waiting for the container's first process to exec the program: %w", err)
		}
	}
}

// waitExit blocks until pid ends or ctx is done. For our own children it reaps them
// and returns their status; for adopted ones the status is Unknown.
func waitExit(ctx context.Context, pid int) (ExitStatus, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		if errors.Is(err, unix.ESRCH) {
			return reap(pid), nil
		}
		return ExitStatus{}, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(fd)
	for {
		if ctx.Err() != nil {
			return ExitStatus{}, ctx.Err()
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 100)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return ExitStatus{}, fmt.Errorf("poll pidfd %d: %w", pid, err)
		}
		if n > 0 {
			return reap(pid), nil
		}
	}
}

func reap(pid int) ExitStatus {
	var ws unix.WaitStatus
	for {
		got, err := unix.Wait4(pid, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || got != pid {
			return ExitStatus{Unknown: true}
		}
		break
	}
	if ws.Signaled() {
		return ExitStatus{Signal: unix.SignalName(ws.Signal())}
	}
	return ExitStatus{Exited: true, Code: ws.ExitStatus()}
}

// procStartTime reads field 22 of /proc/PID/stat: with the PID it identifies a process
// across PID reuse.
func procStartTime(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatStart(string(data))
}

func parseStatStart(stat string) (uint64, error) {
	// comm may contain spaces and parentheses: fields start after the last ')'.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	fields := strings.Fields(stat[i+1:])
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("malformed stat %q", stat)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// anyStopped reports a process of pids that is stopped (SIGSTOP, job control): such a
// tree must not be checkpointed, or every restore would bring back a stopped program.
func anyStopped(pids []int) (int, bool) {
	for _, p := range pids {
		if st, err := procfs.State(p); err == nil && procfs.Stopped(st) {
			return p, true
		}
	}
	return 0, false
}

// externalKey is how CRIU names the resource behind fd of pid ("pipe:[123]"), or "".
func externalKey(pid, fd int) string {
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%d", pid, fd))
	if err != nil || !strings.HasPrefix(link, "pipe:[") {
		return ""
	}
	return link
}

// reopenPipe opens a new read end of the pipe behind fd of pid. An adopted program's
// output pipes lost their reader when the previous ftrun died; this lets us relay them
// again without touching the program.
func reopenPipe(pid, fd int) (*os.File, error) {
	if externalKey(pid, fd) == "" {
		return nil, fmt.Errorf("fd %d of %d is not a pipe", fd, pid)
	}
	f, err := os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", pid, fd), os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("reopen output pipe of %d: %w", pid, err)
	}
	return f, nil
}

// relay copies lines from the program's output into the log until r ends or is closed.
type relay struct {
	wg sync.WaitGroup
}

func (r *relay) start(log *slog.Logger, stream string, rd io.Reader) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		sc := bufio.NewScanner(rd)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			log.Info(sc.Text(), "stream", stream)
		}
	}()
}

// run runs fn (which returns once its output source ends) as one of the relays.
func (r *relay) run(fn func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		fn()
	}()
}

func (r *relay) wait() { r.wg.Wait() }

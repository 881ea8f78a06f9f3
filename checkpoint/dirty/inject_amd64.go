package dirty

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/internal/procfs"
)

// stopDeadline bounds the wait for a process to stop for the injection. A thread in
// an uninterruptible sleep (a hung FUSE or NFS request, a vfork parent) stops only
// when it wakes, and the epoch loop must not wait for that.
const stopDeadline = 2 * time.Second

// injectUffd runs userfaultfd(2) inside pid, copies the new fd into this process
// and closes it in pid. It traces from an OS thread of its own that ends with it:
// should pid never stop, the kernel detaches it as that thread exits, where a
// PTRACE_DETACH (which needs a stopped tracee) could not, and a pending interrupt
// would stop the program later with nobody to resume it.
func injectUffd(pid int) (int, error) {
	type result struct {
		fd  int
		err error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		fd, err := injectUffdLocked(pid)
		done <- result{fd, err}
	}()
	r := <-done
	return r.fd, r.err
}

// injectUffdLocked is injectUffd on the tracing thread.
func injectUffdLocked(pid int) (int, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return -1, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	defer unix.Close(pidfd)

	others, err := holdOthers(pid)
	if err != nil {
		return -1, err
	}
	defer releaseAll(others)
	in, err := seize(pid)
	if err != nil {
		return -1, err
	}
	theirs, err := in.syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly)
	if afterUffd != nil {
		afterUffd(pid)
	}
	if err == nil && int64(theirs) < 0 {
		err = fmt.Errorf("%w: userfaultfd in process %d: %v", ErrUnsupported, pid, unix.Errno(-int64(theirs)))
	}
	fd := -1
	if err == nil {
		fd, err = unix.PidfdGetfd(pidfd, int(theirs), 0)
		if err != nil {
			err = fmt.Errorf("pidfd_getfd %d of process %d: %w", theirs, pid, err)
		}
		if _, cerr := in.syscall(unix.SYS_CLOSE, uintptr(theirs)); cerr != nil && err == nil {
			err = cerr
		}
	}
	if derr := in.detach(); derr != nil && err == nil {
		err = derr
	}
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return -1, err
	}
	unix.CloseOnExec(fd)
	return fd, nil
}

// afterUffd, when set (by a test), runs while the injected userfaultfd is in the
// process's fd table.
var afterUffd func(pid int)

// injection is one thread of a process held in a ptrace stop.
type injection struct {
	pid     int
	saved   unix.PtraceRegs
	sysAddr uint64 // address of a syscall instruction in the process
	mask    uint64 // the thread's blocked signals, put back on detach
	signal  int    // an unblockable stop signal that arrived meanwhile, delivered on detach
}

// hold seizes thread tid and waits for it to stop.
func hold(tid int) (*injection, error) {
	if err := unix.PtraceSeize(tid); err != nil {
		return nil, fmt.Errorf("ptrace seize %d: %w", tid, err)
	}
	in := &injection{pid: tid}
	if err := unix.PtraceInterrupt(tid); err != nil {
		unix.PtraceDetach(tid)
		return nil, fmt.Errorf("ptrace interrupt %d: %w", tid, err)
	}
	if err := in.waitStop(false, time.Now().Add(stopDeadline)); err != nil {
		unix.PtraceDetach(tid) // fails unless stopped; the thread's exit detaches then
		return nil, err
	}
	return in, nil
}

// holdOthers stops every thread of process pid but pid itself, until the list of
// threads holds still (a thread not held yet may start another), so that none can
// fork while the process has a userfaultfd in its fd table: a child would keep a
// copy, which no dump of it can save. A thread that ends meanwhile is passed over.
func holdOthers(pid int) (held []*injection, err error) {
	defer func() {
		if err != nil {
			releaseAll(held)
			held = nil
		}
	}()
	seen := map[int]bool{pid: true}
	for fresh := true; fresh; {
		fresh = false
		tids, err := procfs.Threads(pid)
		if err != nil {
			return held, fmt.Errorf("threads of process %d: %w", pid, err)
		}
		for _, tid := range tids {
			if seen[tid] {
				continue
			}
			seen[tid], fresh = true, true
			in, err := hold(tid)
			switch {
			case errors.Is(err, unix.ESRCH) || errors.Is(err, ErrGone):
				continue
			case err != nil:
				return held, err
			}
			held = append(held, in)
		}
	}
	return held, nil
}

// releaseAll lets the threads holdOthers held go, as they were.
func releaseAll(held []*injection) {
	for _, in := range held {
		_ = ptraceDetach(in.pid, in.signal)
	}
}

// seize holds thread pid for injections into it.
func seize(pid int) (*injection, error) {
	in, err := hold(pid)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*injection, error) { unix.PtraceDetach(pid); return nil, err }
	// Every signal but SIGKILL and SIGSTOP waits, pending with its siginfo, until
	// the thread runs its own code again: none is delivered over an injected
	// syscall's registers, and none has to be taken from it and sent anew.
	if err := ptraceSigmask(unix.PTRACE_GETSIGMASK, pid, &in.mask); err != nil {
		return fail(fmt.Errorf("ptrace getsigmask %d: %w", pid, err))
	}
	all := ^uint64(0)
	if err := ptraceSigmask(unix.PTRACE_SETSIGMASK, pid, &all); err != nil {
		return fail(fmt.Errorf("ptrace setsigmask %d: %w", pid, err))
	}
	fail = func(err error) (*injection, error) {
		_ = ptraceSigmask(unix.PTRACE_SETSIGMASK, pid, &in.mask)
		unix.PtraceDetach(pid)
		return nil, err
	}
	if err := unix.PtraceSetOptions(pid, unix.PTRACE_O_TRACESYSGOOD); err != nil {
		return fail(fmt.Errorf("ptrace options %d: %w", pid, err))
	}
	if err := unix.PtraceGetRegs(pid, &in.saved); err != nil {
		return fail(fmt.Errorf("ptrace getregs %d: %w", pid, err))
	}
	if in.saved.Cs != userCS64 {
		// A 32-bit task: the syscall instruction and numbers below are not its.
		return fail(fmt.Errorf("%w: process %d is not a 64-bit task", ErrUnsupported, pid))
	}
	addr, err := syscallInstruction(pid, in.saved.Rip)
	if err != nil {
		return fail(err)
	}
	in.sysAddr = addr
	return in, nil
}

// waitStop waits for the thread's next stop: the interrupt's (syscallStop false) or
// a syscall entry or exit. A signal that arrives before the interrupt's stop is
// delivered as it would have been (the thread still runs its own code); during the
// injection only an unblockable stop signal can, and it is kept for detach. With a
// deadline it gives up at it (ErrUnsupported: the process does not stop).
func (in *injection) waitStop(syscallStop bool, deadline time.Time) error {
	for {
		var ws unix.WaitStatus
		if err := in.wait(&ws, deadline); err != nil {
			return err
		}
		sig := ws.StopSignal()
		switch {
		case syscallStop && sig == unix.SIGTRAP|0x80:
			return nil
		case syscallStop && (sig == unix.SIGSEGV || sig == unix.SIGILL || sig == unix.SIGBUS):
			// The injected instruction faulted: it is ours, not the program's.
			return fmt.Errorf("%w: the syscall injected into process %d faulted (%v)", ErrUnsupported, in.pid, sig)
		case !syscallStop && stopEvent(ws) == unix.PTRACE_EVENT_STOP:
			// The interrupt's stop, or a group stop (SIGSTOP and its kin; the
			// interrupt of a stopped thread reports that): either holds the
			// thread for the injection, and a group stop is in force again
			// once it is detached.
			return nil
		case stopEvent(ws) == unix.PTRACE_EVENT_STOP:
			// A group stop during the injection: the injected syscall goes on,
			// and detach leaves the thread stopped as the group is.
			sig = 0
		case syscallStop:
			in.signal, sig = int(sig), 0
		}
		var err error
		if syscallStop {
			err = unix.PtraceSyscall(in.pid, 0)
		} else {
			err = unix.PtraceCont(in.pid, int(sig))
		}
		if err != nil {
			return fmt.Errorf("ptrace resume %d: %w", in.pid, err)
		}
	}
}

// stopEvent is the ptrace event of a stop, whatever its signal (WaitStatus.TrapCause
// knows SIGTRAP's only, and a group stop reports PTRACE_EVENT_STOP with SIGSTOP's).
func stopEvent(ws unix.WaitStatus) int { return int(ws>>16) & 0xff }

// wait waits for the thread's next stop, polled until deadline when there is one. It
// looks before it takes, and takes only a stop: a thread that ended is left unreaped,
// so that when it is ftrun's own child (the program's root) its parent's wait still
// gets its exit status. (A thread SIGKILLed between the look and the take has no stop
// left to take; the next look finds it ended.)
func (in *injection) wait(ws *unix.WaitStatus, deadline time.Time) error {
	peek := unix.WALL | unix.WEXITED | unix.WSTOPPED | unix.WNOWAIT
	if !deadline.IsZero() {
		peek |= unix.WNOHANG
	}
	nap := 20 * time.Microsecond // a running thread stops within microseconds
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, in.pid, &info, peek, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("wait for process %d: %w", in.pid, err)
		case info.Signo == 0: // WNOHANG: nothing to report yet
			if time.Now().After(deadline) {
				return fmt.Errorf("%w: process %d did not stop within %s (state %s): it sleeps uninterruptibly", ErrUnsupported, in.pid, stopDeadline, procState(in.pid))
			}
			time.Sleep(nap)
			nap = min(2*nap, time.Millisecond)
			continue
		case info.Code == cldExited || info.Code == cldKilled || info.Code == cldDumped:
			return fmt.Errorf("%w: process %d ended during an injection", ErrGone, in.pid)
		}
		if beforeTake != nil {
			beforeTake(in.pid)
		}
		// A stop: take it, and nothing else (no WEXITED, so no reaping).
		err = unix.Waitid(unix.P_PID, in.pid, &info, unix.WALL|unix.WSTOPPED|unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ECHILD), err == nil && info.Signo == 0:
			// The stop is gone (SIGKILL): the thread ended, or is ending, and
			// the next look sees it so. ECHILD is the kernel's word for a
			// child that can only report an exit, which this wait does not ask.
			continue
		case err != nil:
			return fmt.Errorf("wait for process %d: %w", in.pid, err)
		}
		*ws = stopStatus(&info)
		return nil
	}
}

// beforeTake, when set (by a test), runs between wait's look at a stop and its take.
var beforeTake func(pid int)

// stopStatus is the wait4 status of the ptrace stop a waitid reported: si_status
// holds the stop's whole code there (signal, and the event in its second byte).
func stopStatus(info *unix.Siginfo) unix.WaitStatus {
	chld := (*struct {
		Signo, Errno, Code, _ int32
		Pid                   int32
		UID                   uint32
		Status                int32
	})(unsafe.Pointer(info))
	return unix.WaitStatus(uint32(chld.Status)<<8 | 0x7f)
}

// si_code values of a waitid report (<asm-generic/siginfo.h>).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// procState is the one-letter state of pid, for an error message.
func procState(pid int) string {
	st, err := procfs.State(pid)
	if err != nil {
		return "unknown"
	}
	return string(st)
}

// syscall runs one syscall in the stopped thread and returns its raw result.
func (in *injection) syscall(nr uintptr, args ...uintptr) (uint64, error) {
	regs := in.saved
	regs.Rax, regs.Orig_rax, regs.Rip = uint64(nr), ^uint64(0), in.sysAddr
	a := [6]uint64{}
	for i, v := range args {
		a[i] = uint64(v)
	}
	regs.Rdi, regs.Rsi, regs.Rdx, regs.R10, regs.R8, regs.R9 = a[0], a[1], a[2], a[3], a[4], a[5]
	if err := unix.PtraceSetRegs(in.pid, &regs); err != nil {
		return 0, fmt.Errorf("ptrace setregs %d: %w", in.pid, err)
	}
	for range 2 { // entry, then exit
		if err := unix.PtraceSyscall(in.pid, 0); err != nil {
			return 0, fmt.Errorf("ptrace syscall %d: %w", in.pid, err)
		}
		if err := in.waitStop(true, time.Time{}); err != nil {
			return 0, err
		}
	}
	if err := unix.PtraceGetRegs(in.pid, &regs); err != nil {
		return 0, fmt.Errorf("ptrace getregs %d: %w", in.pid, err)
	}
	return regs.Rax, nil
}

// detach puts the thread back as it was and lets it go.
func (in *injection) detach() error {
	regs := restoreRegs(in.saved)
	err := unix.PtraceSetRegs(in.pid, &regs)
	if err != nil {
		err = fmt.Errorf("ptrace setregs %d: %w", in.pid, err)
	}
	if merr := ptraceSigmask(unix.PTRACE_SETSIGMASK, in.pid, &in.mask); merr != nil && err == nil {
		err = fmt.Errorf("ptrace setsigmask %d: %w", in.pid, merr)
	}
	if derr := ptraceDetach(in.pid, in.signal); derr != nil && err == nil {
		err = fmt.Errorf("ptrace detach %d: %w", in.pid, derr)
	}
	return err
}

// ptraceSigmask gets or sets (req) the blocked signals of the stopped thread pid.
func ptraceSigmask(req, pid int, mask *uint64) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, uintptr(req), uintptr(pid), 8, uintptr(unsafe.Pointer(mask)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func ptraceDetach(pid, sig int) error {
	_, _, e := unix.Syscall6(unix.SYS_PTRACE, unix.PTRACE_DETACH, uintptr(pid), 0, uintptr(sig), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// The syscall restart codes a thread stopped inside a syscall may show in rax
// (include/linux/errno.h); the kernel turns them into a restart on its way back to
// user space from a signal stop, but not on the way back from the syscall stop an
// injection ends in, so restoreRegs does it.
const (
	eRestartSys          = 512
	eRestartNoIntr       = 513
	eRestartNoHand       = 514
	eRestartRestartBlock = 516
)

// restoreRegs is the register set to resume a thread with that was stopped at
// saved: a syscall it was interrupted in is restarted, as the kernel would have.
func restoreRegs(saved unix.PtraceRegs) unix.PtraceRegs {
	if int64(saved.Orig_rax) < 0 {
		return saved
	}
	switch -int64(saved.Rax) {
	case eRestartSys, eRestartNoIntr, eRestartNoHand:
		saved.Rax = saved.Orig_rax
		saved.Rip -= 2
	case eRestartRestartBlock:
		saved.Rax = unix.SYS_RESTART_SYSCALL
		saved.Rip -= 2
	}
	return saved
}

var syscallOp = []byte{0x0f, 0x05}

// userCS64 is the code segment of a 64-bit user task on x86-64 (__USER_CS).
const userCS64 = 0x33

// syscallInstruction finds a syscall instruction in pid: the one the thread stopped
// after, when it was in a syscall, or else the first in its vDSO.
func syscallInstruction(pid int, rip uint64) (uint64, error) {
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, fmt.Errorf("open memory of %d: %w", pid, err)
	}
	defer mem.Close()
	b := make([]byte, 2)
	if _, err := mem.ReadAt(b, int64(rip-2)); err == nil && bytes.Equal(b, syscallOp) {
		return rip - 2, nil
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return 0, fmt.Errorf("read mappings of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(maps), "\n") {
		if !strings.HasSuffix(line, "[vdso]") {
			continue
		}
		r, ok := parseRange(strings.Fields(line)[0])
		if !ok {
			break
		}
		code := make([]byte, r.End-r.Start)
		if _, err := mem.ReadAt(code, int64(r.Start)); err != nil {
			return 0, fmt.Errorf("read vDSO of %d: %w", pid, err)
		}
		if i := bytes.Index(code, syscallOp); i >= 0 {
			return r.Start + uint64(i), nil
		}
	}
	return 0, fmt.Errorf("no syscall instruction found in process %d to run an injected syscall", pid)
}

// injectionArch says whether this build can inject the userfaultfd.
const injectionArch = true

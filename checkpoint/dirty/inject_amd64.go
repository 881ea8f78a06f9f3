package dirty

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/internal/procfs"
)

// A Tracker holds the userfaultfd of one process's memory: created inside that
// process by an injected syscall, taken out with pidfd_getfd and closed there again,
// so the tracked program keeps nothing in its fd table that a dump would trip on.
// Closing the Tracker ends the tracking; the process's mappings then read as
// untracked, which every user of them must count as written.
type Tracker struct {
	Pid  int
	uffd int
}

// Close drops the userfaultfd, and with it every registration.
func (t *Tracker) Close() error { return unix.Close(t.uffd) }

// Track creates a userfaultfd in process pid, hands it to the caller and registers
// every private mapping of the process for async write-protection. Nothing is
// write-protected yet: every page reads as written until a dump, taken while the
// process is frozen, protects what it has saved (protecting it now would hide the
// writes made between the last dump and now).
//
// The caller must not be in a blocking wait for pid meanwhile: the ptrace stops are
// reported to its waits too (a supervisor that waits for its program's exit on a
// pidfd, as ftrun does, is safe).
func Track(pid int) (*Tracker, error) {
	if filtered, err := seccompFiltered(pid); err != nil || filtered {
		if err == nil {
			err = fmt.Errorf("%w: process %d runs under a seccomp filter, which an injected userfaultfd(2) would have to pass", ErrUnsupported, pid)
		}
		return nil, err
	}
	fd, err := injectUffd(pid)
	if err != nil {
		return nil, err
	}
	t := &Tracker{Pid: pid, uffd: fd}
	if err := Handshake(fd); err != nil {
		t.Close()
		return nil, err
	}
	if _, err := t.Refresh(); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Refresh registers the private mappings made since the last call (brk, mmap and
// mremap make new, unregistered ones) and returns how many it registered. A mapping
// the kernel refuses stays untracked: safe, since untracked memory counts as written.
// ErrForeign means memory of the process is under another userfaultfd's async
// write-protection: a private mapping registered with it (EBUSY here), or any other
// mapping (which ftrun never registers) found so by PAGEMAP_SCAN. Its pages read as
// protected whoever protected them, so the process's written pages cannot be told;
// a scan that fails counts as a finding.
func (t *Tracker) Refresh() (int, error) {
	private, others, err := mappings(t.Pid)
	if err != nil {
		return 0, err
	}
	n, unmapped := 0, 0
	for _, r := range private {
		err := Register(t.uffd, r)
		switch {
		case err == nil:
			n++
		case errors.Is(err, unix.EBUSY):
			// Registering again with the same userfaultfd succeeds; EBUSY is another's.
			return 0, fmt.Errorf("%w: process %d, %#x-%#x", ErrForeign, t.Pid, r.Start, r.End)
		case errors.Is(err, unix.ENOMEM), errors.Is(err, unix.ESRCH):
			// Not mapped in the memory the userfaultfd was made for: unmapped since
			// the maps were read, or that memory is gone altogether.
			unmapped++
		default:
			// EINVAL for mappings uffd cannot take; they stay untracked.
		}
	}
	if len(private) > 0 && unmapped == len(private) {
		// None of the process's mappings is in the tracked memory: it exec'd (or
		// exited), and its new memory is nobody's.
		return 0, fmt.Errorf("%w: process %d", ErrGone, t.Pid)
	}
	switch err := noneWPAllowed(t.Pid, others); {
	case err == nil, errors.Is(err, ErrForeign):
		return n, err
	case errors.Is(err, os.ErrNotExist), errors.Is(err, unix.ESRCH):
		return 0, fmt.Errorf("%w: process %d", ErrGone, t.Pid)
	default:
		// What cannot be checked cannot be trusted.
		return 0, fmt.Errorf("%w: process %d: cannot tell (%v)", ErrForeign, t.Pid, err)
	}
}

// ErrGone says a Tracker's process no longer has the memory it was tracking.
var ErrGone = errors.New("tracked memory is gone")

// ErrForeign says memory of the process is under another userfaultfd's tracking.
var ErrForeign = errors.New("memory is registered with another userfaultfd")

// seccompFiltered says whether pid runs under a seccomp filter (Seccomp: 2 in its
// status): a filter may kill it or send it SIGSYS for the injected syscall.
func seccompFiltered(pid int) (bool, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return false, fmt.Errorf("read status of %d: %w", pid, err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Seccomp:"); ok {
			return strings.TrimSpace(v) != "0", nil
		}
	}
	return false, nil
}

// mappings lists the mappings of pid: the private anonymous ones (heap, stacks,
// anonymous mmaps), which a Tracker registers, and the others, which it leaves
// untracked so that a dump saves their copied-on-write pages whole: protecting a file
// mapping puts a marker in each page it has not mapped yet, PAGEMAP_SCAN reports a
// marker as a swapped page not written, and a dump would look for it in its parent,
// where it never was. [vdso], [vvar] and [vsyscall] are in neither.
func mappings(pid int) (private, others []Range, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return nil, nil, fmt.Errorf("read mappings: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || len(fields[1]) < 4 {
			continue
		}
		if len(fields) >= 6 && strings.HasPrefix(fields[5], "[v") { // [vdso], [vvar], [vsyscall]
			continue
		}
		r, ok := parseRange(fields[0])
		switch {
		case !ok:
		case fields[1][3] == 'p' && fields[4] == "0":
			private = append(private, r)
		default:
			others = append(others, r)
		}
	}
	return private, others, sc.Err()
}

// CheckForeign fails with ErrForeign when any mapping of process pid, one ftrun does
// not track, is under async write-protection: another tool's (a program cannot keep
// a userfaultfd of its own and be dumped). PAGEMAP_SCAN reports a page of such a
// mapping as unwritten whoever protected it, and a dump would leave the page in its
// parent. (For a tracked process, Refresh checks the same.)
func CheckForeign(pid int) error {
	private, others, err := mappings(pid)
	if err != nil {
		return err
	}
	return noneWPAllowed(pid, append(private, others...))
}

// noneWPAllowed fails with ErrForeign when any of ranges of pid's memory lies in a
// mapping under async write-protection.
func noneWPAllowed(pid int, ranges []Range) error {
	if len(ranges) == 0 {
		return nil
	}
	pagemap, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return fmt.Errorf("open pagemap: %w", err)
	}
	defer pagemap.Close()
	for _, r := range ranges {
		wp, err := wpAllowed(pagemap, r)
		if err != nil {
			return fmt.Errorf("PAGEMAP_SCAN of process %d, %#x-%#x: %w", pid, r.Start, r.End, err)
		}
		if wp {
			return fmt.Errorf("%w: process %d, %#x-%#x", ErrForeign, pid, r.Start, r.End)
		}
	}
	return nil
}

func parseRange(s string) (Range, bool) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return Range{}, false
	}
	start, err1 := strconv.ParseUint(a, 16, 64)
	end, err2 := strconv.ParseUint(b, 16, 64)
	return Range{start, end}, err1 == nil && err2 == nil && start < end
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
		if !ws.Stopped() {
			return fmt.Errorf("%w: process %d ended during an injection (status %#x)", ErrGone, in.pid, uint32(ws))
		}
		sig := ws.StopSignal()
		switch {
		case syscallStop && sig == unix.SIGTRAP|0x80:
			return nil
		case syscallStop && (sig == unix.SIGSEGV || sig == unix.SIGILL || sig == unix.SIGBUS):
			// The injected instruction faulted: it is ours, not the program's.
			return fmt.Errorf("%w: the syscall injected into process %d faulted (%v)", ErrUnsupported, in.pid, sig)
		case !syscallStop && sig == unix.SIGTRAP && ws.TrapCause() == unix.PTRACE_EVENT_STOP:
			return nil
		case ws.TrapCause() == unix.PTRACE_EVENT_STOP:
			// A group stop: resume it and keep waiting.
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

// wait is Wait4 for the thread's next stop, polled until deadline when there is one.
// It looks before it takes: a thread that ended is left unreaped, so that when it is
// ftrun's own child (the program's root) its parent's wait still gets its exit status.
func (in *injection) wait(ws *unix.WaitStatus, deadline time.Time) error {
	opts := unix.WALL | unix.WEXITED | unix.WSTOPPED | unix.WNOWAIT
	if !deadline.IsZero() {
		opts |= unix.WNOHANG
	}
	nap := 20 * time.Microsecond // a running thread stops within microseconds
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, in.pid, &info, opts, nil)
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
		// A stop: take it. Only SIGKILL ends a thread in a ptrace stop, and then
		// this reaps it; that window is the width of two system calls.
		got, err := unix.Wait4(in.pid, ws, unix.WALL, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("wait for process %d: %w", in.pid, err)
		case got == in.pid:
			return nil
		}
	}
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

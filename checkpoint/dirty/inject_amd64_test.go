package dirty

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/internal/procfs"
)

// The child the injection tests track: it maps a region, writes every page of it,
// says where it is, then writes the pages it is told to, one line each, and answers.
func init() {
	if os.Getenv("DIRTY_TEST_CHILD") != "1" {
		return
	}
	page := os.Getpagesize()
	if os.Getenv("DIRTY_TEST_SECCOMP") == "1" {
		// One instruction, "allow": a filter that changes nothing but is there.
		allow := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: unix.SECCOMP_RET_ALLOW}}
		prog := unix.SockFprog{Len: 1, Filter: &allow[0]}
		unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
		if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog))); e != 0 {
			fmt.Println("seccomp:", e)
			os.Exit(1)
		}
	}
	mem, err := unix.Mmap(-1, 0, 64*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		fmt.Println("mmap:", err)
		os.Exit(1)
	}
	for i := range 64 {
		mem[i*page] = 1
	}
	fmt.Printf("region %#x %#x\n", uintptr(unsafe.Pointer(&mem[0])), uintptr(unsafe.Pointer(&mem[0]))+uintptr(len(mem)))
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "exec":
			unix.Exec("/bin/sleep", []string{"sleep", "60"}, nil)
		case "own-uffd":
			// The program's own write-protect tracking of its region, kept open.
			uffd, err := NewUffd()
			if err == nil {
				err = Register(uffd, Range{uint64(uintptr(unsafe.Pointer(&mem[0]))), uint64(uintptr(unsafe.Pointer(&mem[0]))) + uint64(len(mem))})
			}
			fmt.Println("ok", err)
			continue
		}
		i, _ := strconv.Atoi(in.Text())
		mem[i*page+8]++
		fmt.Println("ok")
	}
	os.Exit(0)
}

type child struct {
	cmd    *exec.Cmd
	in     *os.File
	out    *bufio.Scanner
	region Range
}

func startChild(t *testing.T, env ...string) *child {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), "DIRTY_TEST_CHILD=1"), env...)
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	c := &child{cmd: cmd, in: inW, out: bufio.NewScanner(outR)}
	t.Cleanup(func() { inW.Close(); cmd.Process.Kill(); cmd.Wait(); outR.Close() })
	var start, end uint64
	if !c.out.Scan() {
		t.Fatal("child said nothing")
	}
	if _, err := fmt.Sscanf(c.out.Text(), "region %v %v", &start, &end); err != nil {
		t.Fatalf("child said %q: %v", c.out.Text(), err)
	}
	c.region = Range{start, end}
	return c
}

func (c *child) write(t *testing.T, page int) {
	t.Helper()
	fmt.Fprintln(c.in, page)
	if !c.out.Scan() || c.out.Text() != "ok" {
		t.Fatalf("child did not write page %d: %q", page, c.out.Text())
	}
}

// A userfaultfd made inside another process tracks that process's writes from here,
// and the process keeps no userfaultfd of its own: a dump of it finds no fd it
// cannot save. The child goes on as if nothing happened.
func TestTrackAnotherProcess(t *testing.T) {
	c := startChild(t)
	tr, err := Track(c.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", tr.Pid))
	for _, fd := range fds {
		if l, _ := os.Readlink(fd); strings.Contains(l, "userfaultfd") {
			t.Fatalf("the tracked process keeps %s -> %s", fd, l)
		}
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", tr.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	// Registered, never protected: every populated page reads as written.
	got, err := Written(pm, c.region)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != c.region {
		t.Fatalf("before any protection: written %v, want all of %v", got, c.region)
	}
	page := uint64(os.Getpagesize())
	for round := range 3 {
		want := []int{round, 17 + round, 40, 41}
		for _, p := range want {
			c.write(t, p)
		}
		got, err := Written(pm, c.region)
		if err != nil {
			t.Fatal(err)
		}
		var pages []int
		for _, r := range got {
			for a := r.Start; a < r.End; a += page {
				pages = append(pages, int((a-c.region.Start)/page))
			}
		}
		if fmt.Sprint(pages) != fmt.Sprint(want) {
			t.Fatalf("round %d: written pages %v, want %v", round, pages, want)
		}
	}
}

// A process stopped in a blocking syscall gets it back: the sleep it was in goes on
// after the injection instead of failing with EINTR or returning early.
func TestTrackRestartsTheInterruptedSyscall(t *testing.T) {
	cmd := exec.Command("sleep", "1.5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	time.Sleep(200 * time.Millisecond)
	tr, err := Track(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	tr.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("sleep ended right after the injection: %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if err := <-done; err != nil {
		t.Fatalf("sleep after the injection: %v", err)
	}
}

func TestRestoreRegs(t *testing.T) {
	nr := uint64(unix.SYS_NANOSLEEP)
	for _, tc := range []struct {
		name          string
		orig, rax     uint64
		wantRax       uint64
		wantRipOffset uint64
	}{
		{"not in a syscall", ^uint64(0), 5, 5, 0},
		{"syscall finished", nr, 0, 0, 0},
		{"ERESTARTSYS", nr, neg(eRestartSys), nr, 2},
		{"ERESTARTNOINTR", nr, neg(eRestartNoIntr), nr, 2},
		{"ERESTARTNOHAND", nr, neg(eRestartNoHand), nr, 2},
		{"ERESTART_RESTARTBLOCK", nr, neg(eRestartRestartBlock), unix.SYS_RESTART_SYSCALL, 2},
		{"EINTR stays", nr, neg(int(unix.EINTR)), neg(int(unix.EINTR)), 0},
	} {
		got := restoreRegs(unix.PtraceRegs{Orig_rax: tc.orig, Rax: tc.rax, Rip: 1000})
		if got.Rax != tc.wantRax || got.Rip != 1000-tc.wantRipOffset {
			t.Errorf("%s: rax %d rip %d, want rax %d rip %d", tc.name, got.Rax, got.Rip, tc.wantRax, 1000-tc.wantRipOffset)
		}
	}
}

func neg(v int) uint64 { return uint64(-int64(v)) }

// A process that execs leaves its tracked memory behind: Refresh says so, so that a
// supervisor tracks the new memory afresh instead of trusting the old registrations.
func TestRefreshAfterExec(t *testing.T) {
	c := startChild(t)
	tr, err := Track(c.cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	fmt.Fprintln(c.in, "exec")
	time.Sleep(300 * time.Millisecond)
	if _, err := tr.Refresh(); !errors.Is(err, ErrGone) {
		t.Fatalf("Refresh after exec: %v, want ErrGone", err)
	}
}

// Memory the program tracks with a userfaultfd of its own reads as protected whoever
// protected it: Refresh refuses it rather than let its writes be taken for none.
func TestRefreshRefusesAnotherUserfaultfd(t *testing.T) {
	c := startChild(t)
	fmt.Fprintln(c.in, "own-uffd")
	if !c.out.Scan() || c.out.Text() != "ok <nil>" {
		t.Fatalf("child's own userfaultfd: %q", c.out.Text())
	}
	tr, err := Track(c.cmd.Process.Pid)
	if err == nil {
		tr.Close()
	}
	if !errors.Is(err, ErrForeign) {
		t.Fatalf("Track of a process with its own write-protect tracking: %v, want ErrForeign", err)
	}
}

// A seccomp filter sees the injected syscall and may kill the program for it: such a
// process is not injected into (its memory is dumped whole), and lives on.
func TestTrackRefusesSeccompFiltered(t *testing.T) {
	c := startChild(t, "DIRTY_TEST_SECCOMP=1")
	tr, err := Track(c.cmd.Process.Pid)
	if err == nil {
		tr.Close()
		t.Fatal("Track injected into a process under a seccomp filter")
	}
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "seccomp") {
		t.Fatalf("Track under seccomp: %v, want ErrUnsupported naming seccomp", err)
	}
	c.write(t, 3)
}

// A process that cannot stop (a vfork parent sleeps uninterruptibly until its child
// exits) is not waited for: Track gives up, and the process, detached as the tracing
// thread ends, goes on when it wakes, not left in a ptrace stop nobody ends.
func TestTrackGivesUpOnAProcessThatCannotStop(t *testing.T) {
	cmd, lines := startC(t, `#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
	pid_t p;
	printf("ready\n");
	fflush(stdout);
	if ((p = vfork()) == 0) { sleep(3); _exit(0); }
	waitpid(p, 0, 0);
	printf("resumed\n");
	fflush(stdout);
	for (;;) pause();
}
`)
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if st, _ := procfs.State(cmd.Process.Pid); st == 'D' {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the vfork parent never slept uninterruptibly")
		}
	}
	if tr, err := Track(cmd.Process.Pid); err == nil {
		tr.Close()
		t.Fatal("tracked a process that could not stop")
	} else if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "did not stop") {
		t.Fatalf("Track: %v, want that it did not stop", err)
	}
	if !lines.Scan() || lines.Text() != "resumed" {
		t.Fatalf("the process did not go on after its child exited: %q (state %s)", lines.Text(), procState(cmd.Process.Pid))
	}
	time.Sleep(100 * time.Millisecond)
	if st, _ := procfs.State(cmd.Process.Pid); procfs.Stopped(st) {
		t.Fatalf("the process is left stopped (state %c)", st)
	}
}

// A process that dies while held for an injection is left for its parent to reap:
// when it is the program's root, ftrun is both its tracer and its parent, and a wait
// that took its exit would leave the supervisor an unknown status.
func TestInjectionLeavesAnEndedChildToItsParent(t *testing.T) {
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // ptrace belongs to this thread, which then exits
		in, err := seize(cmd.Process.Pid)
		if err != nil {
			done <- err
			return
		}
		if err := cmd.Process.Signal(unix.SIGKILL); err != nil {
			done <- err
			return
		}
		done <- in.waitStop(true, time.Time{})
	}()
	if err := <-done; !errors.Is(err, ErrGone) {
		t.Fatalf("waiting for a killed tracee: %v, want ErrGone", err)
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != unix.SIGKILL {
		t.Fatalf("the parent's wait: %v, want killed by SIGKILL", err)
	}
}

// Signals sent to a process while it is held for an injection all reach it after,
// each once and with its siginfo: none is delivered over the injected syscall, none
// is swallowed, and a queued signal's value survives.
func TestInjectionKeepsSignalsWithTheirInfo(t *testing.T) {
	cmd, lines := startC(t, `#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void on(int sig, siginfo_t *si, void *uc) {
	char b[64];
	int n = snprintf(b, sizeof b, "sig %d val %d\n", sig, si->si_value.sival_int);
	write(1, b, n);
}
int main(void) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_sigaction = on;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGRTMIN + 1, &sa, 0);
	sigaction(SIGUSR1, &sa, 0);
	printf("ready\n");
	fflush(stdout);
	for (;;) pause();
}
`)
	pid := cmd.Process.Pid
	rtmin1 := 35 // SIGRTMIN+1 as glibc numbers it
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		in, err := seize(pid)
		if err != nil {
			done <- err
			return
		}
		for _, s := range []struct{ sig, val int }{{rtmin1, 7}, {rtmin1, 8}, {int(unix.SIGUSR1), 9}} {
			if err := sigqueue(pid, s.sig, s.val); err != nil {
				done <- err
				return
			}
		}
		if _, err := in.syscall(unix.SYS_GETPID); err != nil {
			done <- err
			return
		}
		done <- in.detach()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	said := make(chan string)
	go func() {
		defer close(said)
		for lines.Scan() {
			said <- lines.Text()
		}
	}()
	got := map[string]bool{}
	for timeout := time.After(10 * time.Second); len(got) < 3; {
		select {
		case l, ok := <-said:
			if !ok {
				t.Fatalf("after the injection the process said only %v", got)
			}
			got[l] = true
		case <-timeout:
			t.Fatalf("after the injection the process said only %v", got)
		}
	}
	for _, want := range []string{"sig 35 val 7", "sig 35 val 8", "sig 10 val 9"} {
		if !got[want] {
			t.Errorf("no %q among %v", want, got)
		}
	}
}

// sigqueue sends sig with value val to pid, as sigqueue(3) does.
func sigqueue(pid, sig, val int) error {
	var info [128]byte
	*(*int32)(unsafe.Pointer(&info[0])) = int32(sig)
	*(*int32)(unsafe.Pointer(&info[8])) = -1 // SI_QUEUE
	*(*int32)(unsafe.Pointer(&info[16])) = int32(os.Getpid())
	*(*int32)(unsafe.Pointer(&info[24])) = int32(val)
	_, _, e := unix.Syscall(unix.SYS_RT_SIGQUEUEINFO, uintptr(pid), uintptr(sig), uintptr(unsafe.Pointer(&info[0])))
	if e != 0 {
		return fmt.Errorf("rt_sigqueueinfo %d: %w", sig, e)
	}
	return nil
}

// While the injected userfaultfd is in the process's fd table, every thread of the
// process is held: none can fork a child that would keep a copy of it. Afterwards
// all run on.
func TestInjectionHoldsEveryThread(t *testing.T) {
	c := startChild(t) // a Go program: several threads
	pid := c.cmd.Process.Pid
	var running []string
	afterUffd = func(pid int) {
		tids, err := procfs.Threads(pid)
		if err != nil || len(tids) < 2 {
			running = append(running, fmt.Sprintf("threads %v: %v", tids, err))
		}
		for _, tid := range tids {
			if st, err := procfs.State(tid); err != nil || st != 't' {
				running = append(running, fmt.Sprintf("%d: %c %v", tid, st, err))
			}
		}
	}
	defer func() { afterUffd = nil }()
	tr, err := Track(pid)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if len(running) > 0 {
		t.Fatalf("threads not held while the userfaultfd was there: %v", running)
	}
	c.write(t, 3) // the program goes on
	tids, _ := procfs.Threads(pid)
	for _, tid := range tids {
		if st, _ := procfs.State(tid); procfs.Stopped(st) {
			t.Errorf("thread %d left stopped", tid)
		}
	}
}

// startC compiles the C program src, starts it with args and waits for its "ready"
// line; the process is killed and reaped at the test's end.
func startC(t *testing.T, src string, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	dir := t.TempDir()
	file, bin := filepath.Join(dir, "prog.c"), filepath.Join(dir, "prog")
	if err := os.WriteFile(file, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("gcc", "-o", bin, file).CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v: %s", err, out)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "ready" {
		t.Fatalf("no ready line: %q", lines.Text())
	}
	return cmd, lines
}

// foreignWPSource maps 16 pages, shared (argv[1] "shared", a memfd) or private
// anonymous, and registers them for async write-protection with a userfaultfd of
// its own: a program that tracks its own writes.
const foreignWPSource = `#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(int argc, char **argv) {
	long page = sysconf(_SC_PAGESIZE);
	int shared = argc > 1 && strcmp(argv[1], "shared") == 0;
	int fd = memfd_create("fwp", 0);
	ftruncate(fd, 16 * page);
	char *m = shared ? mmap(0, 16 * page, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
			 : mmap(0, 16 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(m, 1, 16 * page);
	int u = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	/* WP_ASYNC, WP_UNPOPULATED, WP_HUGETLBFS_SHMEM: newer than Debian 12's headers */
	struct uffdio_api api = {.api = UFFD_API, .features = (1 << 15) | (1 << 13) | (1 << 12)};
	if (u < 0 || ioctl(u, UFFDIO_API, &api)) { perror("uffd api"); return 1; }
	struct uffdio_register reg = {.range = {(unsigned long)m, 16 * page}, .mode = UFFDIO_REGISTER_MODE_WP};
	if (ioctl(u, UFFDIO_REGISTER, &reg)) { perror("register"); return 1; }
	struct uffdio_writeprotect wp = {.range = {(unsigned long)m, 16 * page}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
	if (ioctl(u, UFFDIO_WRITEPROTECT, &wp)) { perror("writeprotect"); return 1; }
	printf("ready\n");
	fflush(stdout);
	for (;;) pause();
}
`

// Another userfaultfd's async write-protection is found wherever it is: Track (its
// Refresh) finds it on a shared mapping, which ftrun never registers, and on a private
// one, which it cannot register then; CheckForeign finds either in a process ftrun
// does not track. A process without any passes both.
func TestForeignWriteProtectionIsFound(t *testing.T) {
	shared, _ := startC(t, foreignWPSource, "shared")
	private, _ := startC(t, foreignWPSource)
	plain, _ := startC(t, `#include <stdio.h>
#include <unistd.h>
int main(void) { printf("ready\n"); fflush(stdout); for (;;) pause(); }
`)
	for _, c := range []struct {
		what    string
		pid     int
		foreign bool
	}{
		{"a shared mapping under it", shared.Process.Pid, true},
		{"a private mapping under it", private.Process.Pid, true},
		{"none", plain.Process.Pid, false},
	} {
		err := CheckForeign(c.pid)
		if got := errors.Is(err, ErrForeign); got != c.foreign || (err != nil && !got) {
			t.Errorf("%s, untracked: CheckForeign = %v, want foreign %v", c.what, err, c.foreign)
		}
		tr, err := Track(c.pid)
		if got := errors.Is(err, ErrForeign); got != c.foreign || (err != nil && !got) {
			t.Errorf("%s: Track = %v, want foreign %v", c.what, err, c.foreign)
		}
		if err == nil {
			if _, err := tr.Refresh(); err != nil {
				t.Errorf("%s: Refresh = %v", c.what, err)
			}
			tr.Close()
		}
	}
}

// A tracee SIGKILLed between the look at its stop and the take is not reaped either:
// the take asks for stops only.
func TestInjectionLeavesAChildKilledBeforeTheTake(t *testing.T) {
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	beforeTake = func(pid int) {
		if !killed && pid == cmd.Process.Pid {
			killed = true
			_ = unix.Kill(pid, unix.SIGKILL)
			for {
				// Until the kernel has woken it from the stop the look saw.
				if st, err := procfs.State(pid); err != nil || st == 'Z' {
					return
				}
				time.Sleep(time.Millisecond)
			}
		}
	}
	defer func() { beforeTake = nil }()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		in, err := seize(cmd.Process.Pid)
		if err != nil {
			done <- err
			return
		}
		_, err = in.syscall(unix.SYS_GETPID)
		done <- err
	}()
	if err := <-done; !errors.Is(err, ErrGone) {
		t.Fatalf("an injection into a tracee killed before the take: %v, want ErrGone", err)
	}
	if !killed {
		t.Fatal("the hook never ran")
	}
	err := cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != unix.SIGKILL {
		t.Fatalf("the parent's wait: %v, want killed by SIGKILL", err)
	}
}

// A process stopped by SIGSTOP is tracked where it stands and stays stopped: the
// injection runs from its group stop and the stop is in force again after it.
func TestTrackLeavesAStoppedProcessStopped(t *testing.T) {
	c := startChild(t)
	pid := c.cmd.Process.Pid
	if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	waitState := func(want func(byte) bool, what string) {
		t.Helper()
		for i := 0; ; i++ {
			st, err := procfs.State(pid)
			if err == nil && want(st) {
				return
			}
			if i == 500 {
				t.Fatalf("process %d: state %c, not %s", pid, st, what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	stopped := func(st byte) bool { return st == 'T' }
	waitState(stopped, "stopped")
	tr, err := Track(pid)
	if err != nil {
		t.Fatalf("Track of a stopped process: %v", err)
	}
	defer tr.Close()
	time.Sleep(100 * time.Millisecond)
	if st, _ := procfs.State(pid); st != 'T' {
		t.Fatalf("the injection left a stopped process in state %c, not T", st)
	}
	if err := unix.Kill(pid, unix.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitState(func(st byte) bool { return !procfs.Stopped(st) }, "running after SIGCONT")
}

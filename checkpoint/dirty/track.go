package dirty

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
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

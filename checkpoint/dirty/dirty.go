// Package dirty tells which pages of a process were written since a mark, the ground
// an incremental checkpoint stands on: a dump that carries only what changed.
//
// Two kernel mechanisms can say it. Soft-dirty bits (CONFIG_MEM_SOFT_DIRTY, read from
// /proc/PID/pagemap, reset through /proc/PID/clear_refs) are what CRIU's own
// --track-mem uses; many current kernels are built without them. Userfaultfd
// write-protection in async mode (UFFD_FEATURE_WP_ASYNC, Linux 6.7) with the PAGEMAP_SCAN ioctl on /proc/PID/pagemap does the same exactly: a
// registered range is write-protected, the first write to a page lifts its protection
// without a fault reaching anybody, and one PAGEMAP_SCAN with PM_SCAN_WP_MATCHING
// returns the pages written and protects them again in the same walk.
//
// The userfaultfd belongs to the memory of the process that created it; its ioctls
// act on that memory whoever calls them, so the fd may be held by another process
// (taken with pidfd_getfd) while the tracked one keeps none in its fd table. This
// package is the ABI and the probe; Probe runs the whole cycle on memory of its own
// and checks that exactly the pages written are found.
//
// Written by hand: golang.org/x/sys has neither the userfaultfd ioctls nor
// PAGEMAP_SCAN, and Debian 12's kernel headers lack PAGEMAP_SCAN; the structures and
// request numbers below are those of include/uapi/linux/userfaultfd.h and fs.h.
package dirty

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The userfaultfd ABI (include/uapi/linux/userfaultfd.h).
const (
	uffdAPI            = 0xAA
	uffdUserModeOnly   = 1
	uffdioAPI          = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	uffdioRegister     = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)
	uffdioWriteprotect = 0xc018aa06 // _IOWR(0xAA, 0x06, struct uffdio_writeprotect)
	uffdRegisterModeWP = 1 << 1
	uffdWriteprotectWP = 1 << 0
	featureWPAsync     = 1 << 15
)

// The PAGEMAP_SCAN ABI (include/uapi/linux/fs.h, Linux 6.7).
const (
	pagemapScan       = 0xc0606610 // _IOWR('f', 16, struct pm_scan_arg)
	pmScanWPMatching  = 1 << 0
	pmScanCheckWPSync = 1 << 1

	// PageWritten is PAGE_IS_WRITTEN: the page was written since it was last
	// write-protected (or it lies outside any write-protected range).
	PageWritten   = 1 << 1
	pageWPAllowed = 1 << 0
	pagePresent   = 1 << 3
	pageSwapped   = 1 << 4
)

type uffdioAPIArg struct{ API, Features, Ioctls uint64 }

type uffdioRange struct{ Start, Len uint64 }

type uffdioRegisterArg struct {
	Range  uffdioRange
	Mode   uint64
	Ioctls uint64
}

type uffdioWriteprotectArg struct {
	Range uffdioRange
	Mode  uint64
}

// Range is [Start, End) of addresses, page-aligned.
type Range struct{ Start, End uint64 }

// Pages is how many pages the range covers.
func (r Range) Pages() uint64 { return (r.End - r.Start) / uint64(os.Getpagesize()) }

type pageRegion struct{ Start, End, Categories uint64 }

type pmScanArg struct {
	Size, Flags, Start, End, WalkEnd, Vec, VecLen, MaxPages       uint64
	CategoryInverted, CategoryMask, CategoryAnyofMask, ReturnMask uint64
}

// ErrUnsupported says the kernel cannot track written pages this way.
var ErrUnsupported = errors.New("userfaultfd async write-protection with PAGEMAP_SCAN unsupported")

func ioctl(fd int, req uintptr, arg unsafe.Pointer) (uintptr, error) {
	r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return 0, errno
	}
	return r, nil
}

// NewUffd creates a userfaultfd for the calling process's memory, set up for async
// write-protection. It takes user-mode faults only, which an unprivileged process may
// ask for whatever vm.unprivileged_userfaultfd says; async resolution does not depend
// on it.
func NewUffd() (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	if errno != 0 {
		return -1, fmt.Errorf("%w: userfaultfd: %v", ErrUnsupported, errno)
	}
	if err := Handshake(int(fd)); err != nil {
		unix.Close(int(fd))
		return -1, err
	}
	return int(fd), nil
}

// Handshake enables async write-protection on a fresh userfaultfd (UFFDIO_API). It
// is done once per fd, by whoever holds it.
//
// The kernel turns WP_UNPOPULATED on with WP_ASYNC: protecting a range puts a marker
// in each of its holes, which PAGEMAP_SCAN then reports as a swapped page not
// written. So whatever protects (Written here, a dump's reset in the project's CRIU
// patch) must protect only pages that exist, or a dump looks for the holes in its
// parent.
func Handshake(uffd int) error {
	api := uffdioAPIArg{API: uffdAPI, Features: featureWPAsync}
	if _, err := ioctl(uffd, uffdioAPI, unsafe.Pointer(&api)); err != nil {
		return fmt.Errorf("%w: UFFDIO_API with WP_ASYNC: %v (Linux 6.7 or later needed)", ErrUnsupported, err)
	}
	return nil
}

// Register puts r under write-protect tracking of uffd. Any mapping may be
// registered for async write-protection, anonymous or file-backed.
func Register(uffd int, r Range) error {
	reg := uffdioRegisterArg{Range: uffdioRange{r.Start, r.End - r.Start}, Mode: uffdRegisterModeWP}
	if _, err := ioctl(uffd, uffdioRegister, unsafe.Pointer(&reg)); err != nil {
		return fmt.Errorf("UFFDIO_REGISTER %#x-%#x: %w", r.Start, r.End, err)
	}
	return nil
}

// Protect write-protects r (registered before), which marks every page of it clean,
// populated or not.
func Protect(uffd int, r Range) error {
	wp := uffdioWriteprotectArg{Range: uffdioRange{r.Start, r.End - r.Start}, Mode: uffdWriteprotectWP}
	if _, err := ioctl(uffd, uffdioWriteprotect, unsafe.Pointer(&wp)); err != nil {
		return fmt.Errorf("UFFDIO_WRITEPROTECT %#x-%#x: %w", r.Start, r.End, err)
	}
	return nil
}

// Written returns the pages of r written since they were last protected, read from
// pagemap (/proc/PID/pagemap of the tracked process), and protects them again in the
// same walk: a write that lands after the walk passed its page is seen next time. A
// range not registered for async write-protection is an error, not a silent "clean".
func Written(pagemap *os.File, r Range) ([]Range, error) {
	var out []Range
	vec := make([]pageRegion, 512)
	for start := r.Start; start < r.End; {
		arg := pmScanArg{
			Size: uint64(unsafe.Sizeof(pmScanArg{})), Flags: pmScanWPMatching | pmScanCheckWPSync,
			Start: start, End: r.End,
			Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: uint64(len(vec)),
			// Holes are left unprotected (see Handshake): written, they are found.
			CategoryMask: PageWritten, CategoryAnyofMask: pagePresent | pageSwapped, ReturnMask: PageWritten,
		}
		n, err := ioctl(int(pagemap.Fd()), pagemapScan, unsafe.Pointer(&arg))
		if err != nil {
			if err == unix.EPERM {
				return nil, fmt.Errorf("PAGEMAP_SCAN %#x-%#x: a mapping in it is not under async write-protection", start, r.End)
			}
			return nil, fmt.Errorf("PAGEMAP_SCAN %#x-%#x: %w", start, r.End, err)
		}
		for _, p := range vec[:n] {
			out = appendRange(out, Range{p.Start, p.End})
		}
		if arg.WalkEnd <= start {
			return nil, fmt.Errorf("PAGEMAP_SCAN %#x-%#x: the walk did not advance", start, r.End)
		}
		start = arg.WalkEnd
	}
	return out, nil
}

// wpAllowed says whether any of r lies in a mapping registered for async
// write-protection (PAGE_IS_WPALLOWED, by whatever userfaultfd). The kernel skips
// mappings without it whole, so a scan costs little but for those.
func wpAllowed(pagemap *os.File, r Range) (bool, error) {
	var vec [1]pageRegion
	arg := pmScanArg{
		Size: uint64(unsafe.Sizeof(pmScanArg{})), Start: r.Start, End: r.End,
		Vec: uint64(uintptr(unsafe.Pointer(&vec[0]))), VecLen: 1,
		CategoryMask: pageWPAllowed, ReturnMask: pageWPAllowed,
	}
	n, err := ioctl(int(pagemap.Fd()), pagemapScan, unsafe.Pointer(&arg))
	return n > 0, err
}

// appendRange adds r to sorted rs, merging it with the last range when they touch.
func appendRange(rs []Range, r Range) []Range {
	if n := len(rs); n > 0 && rs[n-1].End == r.Start {
		rs[n-1].End = r.End
		return rs
	}
	return append(rs, r)
}

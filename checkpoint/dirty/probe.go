package dirty

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ProbeResult is what Probe found.
type ProbeResult struct {
	OK      bool
	Detail  string        // what was found, or why it does not work
	Protect time.Duration // write-protecting the probe's region
	Scan    time.Duration // one scan-and-protect of it
}

// probePages is the size of the probe's region, and probeWrites the pages it writes
// after the region was protected: a run of two, single pages, one never touched
// before (mapped by its first write) and the last page.
const probePages = 64

var probeWrites = []int{3, 17, 18, 40, 50, probePages - 1}

// Probe runs the whole tracking cycle on a region of its own: register, protect,
// write some pages (some populated before, one not), scan; then check the scan found
// exactly those pages, that a second scan finds none, and that a write after it is
// found again.
// Where this build cannot inject the userfaultfd into another process, the probe
// says so and tracking is off, whatever the kernel can do.
func Probe() ProbeResult {
	if !injectionArch {
		return ProbeResult{Detail: fmt.Sprintf("tracking another process needs an injected userfaultfd(2), implemented for amd64 only, not %s", runtime.GOARCH)}
	}
	res, err := probe()
	if err != nil {
		return ProbeResult{Detail: err.Error()}
	}
	return res
}

func probe() (ProbeResult, error) {
	page := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, probePages*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return ProbeResult{}, fmt.Errorf("mmap: %w", err)
	}
	defer unix.Munmap(mem)
	for i := 0; i < probePages; i++ {
		if i != 50 {
			mem[i*page] = 1 // populated before the mark
		}
	}
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	r := Range{base, base + uint64(probePages*page)}
	uffd, err := NewUffd()
	if err != nil {
		return ProbeResult{}, err
	}
	defer unix.Close(uffd)
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		return ProbeResult{}, err
	}
	defer pm.Close()
	if err := Register(uffd, r); err != nil {
		return ProbeResult{}, err
	}
	t0 := time.Now()
	if err := Protect(uffd, r); err != nil {
		return ProbeResult{}, err
	}
	protect := time.Since(t0)
	for _, i := range probeWrites {
		mem[i*page+7] = 2
	}
	t0 = time.Now()
	got, err := Written(pm, r)
	if err != nil {
		return ProbeResult{}, err
	}
	scan := time.Since(t0)
	if want := pageRanges(base, page, probeWrites); !slices.Equal(got, want) {
		return ProbeResult{}, fmt.Errorf("%w: PAGEMAP_SCAN found pages %v written, want %v", ErrUnsupported, pageIndexes(base, page, got), probeWrites)
	}
	if again, err := Written(pm, r); err != nil || len(again) > 0 {
		return ProbeResult{}, fmt.Errorf("%w: a second scan with nothing written found %v (%v): pages were not protected again", ErrUnsupported, pageIndexes(base, page, again), err)
	}
	mem[17*page] = 3
	if after, err := Written(pm, r); err != nil || !slices.Equal(after, pageRanges(base, page, []int{17})) {
		return ProbeResult{}, fmt.Errorf("%w: a write after the scan found as %v (%v), want page 17", ErrUnsupported, pageIndexes(base, page, after), err)
	}
	return ProbeResult{OK: true, Protect: protect, Scan: scan,
		Detail: fmt.Sprintf("userfaultfd async write-protection + PAGEMAP_SCAN: exactly the %d pages written of %d found", len(probeWrites), probePages)}, nil
}

// pageRanges is the merged ranges of the pages idx (sorted) of a region at base.
func pageRanges(base uint64, page int, idx []int) []Range {
	var rs []Range
	for _, i := range idx {
		s := base + uint64(i*page)
		rs = appendRange(rs, Range{s, s + uint64(page)})
	}
	return rs
}

// pageIndexes lists the pages of rs as indexes into the region at base.
func pageIndexes(base uint64, page int, rs []Range) []int {
	var idx []int
	for _, r := range rs {
		for a := r.Start; a < r.End; a += uint64(page) {
			idx = append(idx, int((a-base)/uint64(page)))
		}
	}
	return idx
}

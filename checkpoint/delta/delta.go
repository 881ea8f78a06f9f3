// Package delta turns a full CRIU image set into what changed since a base set, and back.
//
// Why: this kernel has no soft-dirty tracking, so every epoch is a full dump; shipping
// only pages whose content changed (hashed per pagemap file and virtual address) keeps
// the stream at the size of what the program dirtied.
//
// A page never moves: its key is (pagemap file name, vaddr). The sender keeps an Index
// of the last set it shipped (a 128-bit hash per key) and the receiver keeps that set
// itself, so a page whose hash did not change travels as a CopyRun (a vaddr and a page
// count) and the receiver copies it out of its own base. Everything that is not page
// data (pagemaps, core, mm, files, ...) is small and travels whole.
//
// The receiver rebuilds with Apply (every file, through user space) or WritePages,
// which writes only the pages files and only what it must: the unchanged pages are
// copied in the kernel (copy_file_range, a reflink where the filesystem shares
// extents), or, when it is offered the pages file of the set before the base
// (WritePagesReusing), left where that file already holds them.
//
// What does not travel: CRIU's logs (*.log, the sender's diagnostics, not state) and
// MANIFEST.json (the receiver writes its own when it commits the set).
package delta

import (
	"errors"
	"fmt"
	"math"
	"slices"
)

// PageSize is the unit of CRIU's page images on the machines ftrun runs on (x86-64).
const PageSize = 4096

// ErrBadBase marks a delta that does not fit the base set it is applied to: the base
// lacks a page (or a pagemap) the delta says is unchanged, or it is another epoch.
var ErrBadBase = errors.New("delta does not fit its base image set")

// ErrTooBig marks a delta or pagemap that claims more pages than the images it is
// checked against hold: refused before anything of that size is allocated.
var ErrTooBig = errors.New("more pages than the image holds")

// ErrMalformed marks a delta or an image set that contradicts itself (runs that overlap
// or miss pages of the pagemap, a pages file of the wrong size, a file name with a path).
var ErrMalformed = errors.New("malformed delta or image set")

// PageRun is a run of pages at consecutive virtual addresses whose content changed;
// len(Data) is a multiple of PageSize.
type PageRun struct {
	Vaddr uint64
	Data  []byte
}

// CopyRun is a run of pages at consecutive virtual addresses whose content is the same
// as in the base set's pagemap of the same name.
type CopyRun struct {
	Vaddr   uint64
	NrPages uint32
}

// PagemapDelta is the page data of one pagemap-*.img. Together, Pages and Copies cover
// exactly the pagemap's present pages.
type PagemapDelta struct {
	Pagemap string
	Pages   []PageRun
	Copies  []CopyRun
}

// File is a whole non-page image (pagemap, core, mm, files, ...).
type File struct {
	Name string
	Data []byte
}

// Delta is one epoch's image set relative to the set of epoch Base (0: no base, every
// page travels).
type Delta struct {
	Base     uint64
	Epoch    uint64
	Files    []File
	Pagemaps []PagemapDelta
}

// Bytes is the payload a delta carries (page data and file data): what goes on the wire.
func (d *Delta) Bytes() int64 {
	var n int64
	for _, f := range d.Files {
		n += int64(len(f.Data))
	}
	for _, pm := range d.Pagemaps {
		for _, r := range pm.Pages {
			n += int64(len(r.Data))
		}
	}
	return n
}

// PageCounts is how many pages travel with the delta and how many the receiver copies
// from its base.
func (d *Delta) PageCounts() (shipped, copied uint64) {
	for _, pm := range d.Pagemaps {
		for _, r := range pm.Pages {
			shipped += uint64(len(r.Data) / PageSize)
		}
		for _, c := range pm.Copies {
			copied += uint64(c.NrPages)
		}
	}
	return shipped, copied
}

// runs coalesces pages, visited one at a time, into PageRuns and CopyRuns: a page
// extends the last run of its kind when it sits at the next virtual address.
type runs struct {
	pages  []PageRun
	copies []CopyRun
	// arena, when set, has room for every page to come; runs are cut from it.
	arena []byte
}

func (r *runs) addPage(vaddr uint64, page []byte) {
	var last *PageRun
	if n := len(r.pages); n > 0 && r.pages[n-1].Vaddr+uint64(len(r.pages[n-1].Data)) == vaddr {
		last = &r.pages[n-1]
	}
	if r.arena != nil && len(r.arena)+len(page) > cap(r.arena) {
		r.arena = nil // out of room: runs from here on grow on their own
	}
	if r.arena == nil {
		if last != nil {
			last.Data = append(last.Data, page...)
		} else {
			r.pages = append(r.pages, PageRun{Vaddr: vaddr, Data: append([]byte(nil), page...)})
		}
		return
	}
	// Every page so far went into the arena, and each one either started the last run
	// or extended it: the last run therefore ends where the arena does.
	off := len(r.arena)
	r.arena = append(r.arena, page...)
	if last != nil {
		last.Data = last.Data[:len(last.Data)+len(page)]
	} else {
		r.pages = append(r.pages, PageRun{Vaddr: vaddr, Data: r.arena[off:len(r.arena)]})
	}
}

// done returns the runs, their data clipped so that appending to one never writes
// into the next.
func (r *runs) done() ([]PageRun, []CopyRun) {
	for i := range r.pages {
		r.pages[i].Data = slices.Clip(r.pages[i].Data)
	}
	r.arena = nil
	return r.pages, r.copies
}

func (r *runs) addCopy(vaddr uint64) {
	if n := len(r.copies); n > 0 {
		last := &r.copies[n-1]
		if last.Vaddr+uint64(last.NrPages)*PageSize == vaddr && last.NrPages < ^uint32(0) {
			last.NrPages++
			return
		}
	}
	r.copies = append(r.copies, CopyRun{Vaddr: vaddr, NrPages: 1})
}

// pageSource is where Apply finds one page: data, or (data == nil) the base set.
type pageSource struct {
	data []byte
}

// counts is how many pages the runs of pm carry and copy, summed without overflow
// (each copy run is at most 2^32-1 pages, and there are fewer runs than bytes sent).
func counts(pm PagemapDelta) (shipped, copied uint64) {
	for _, r := range pm.Pages {
		shipped += uint64(len(r.Data) / PageSize)
	}
	for _, c := range pm.Copies {
		copied += uint64(c.NrPages)
	}
	return shipped, copied
}

// sources expands the runs of one pagemap into a page -> source map, refusing runs that
// are misaligned or overlap. want is the pagemap's page count: runs that add up to
// anything else are refused before the map is made, so its size is the pagemap's.
func sources(pm PagemapDelta, want int) (map[uint64]pageSource, error) {
	shipped, copied := counts(pm)
	if n := shipped + copied; n != uint64(want) {
		return nil, fmt.Errorf("%w: %q: runs hold %d pages, the pagemap %d", ErrMalformed, pm.Pagemap, n, want)
	}
	src := make(map[uint64]pageSource, want)
	add := func(vaddr uint64, s pageSource) error {
		if _, dup := src[vaddr]; dup {
			return fmt.Errorf("%w: %q: page 0x%x is in two runs", ErrMalformed, pm.Pagemap, vaddr)
		}
		src[vaddr] = s
		return nil
	}
	for _, r := range pm.Pages {
		if r.Vaddr%PageSize != 0 || len(r.Data)%PageSize != 0 || len(r.Data) == 0 {
			return nil, fmt.Errorf("%w: %q: page run at 0x%x of %d bytes is not whole pages", ErrMalformed, pm.Pagemap, r.Vaddr, len(r.Data))
		}
		for off := 0; off < len(r.Data); off += PageSize {
			if err := add(r.Vaddr+uint64(off), pageSource{data: r.Data[off : off+PageSize : off+PageSize]}); err != nil {
				return nil, err
			}
		}
	}
	for _, c := range pm.Copies {
		if c.Vaddr%PageSize != 0 || c.NrPages == 0 {
			return nil, fmt.Errorf("%w: %q: copy run at 0x%x of %d pages", ErrMalformed, pm.Pagemap, c.Vaddr, c.NrPages)
		}
		if c.Vaddr > math.MaxUint64-uint64(c.NrPages)*PageSize {
			return nil, fmt.Errorf("%w: %q: copy run at 0x%x of %d pages overflows the address space", ErrMalformed, pm.Pagemap, c.Vaddr, c.NrPages)
		}
		for i := uint64(0); i < uint64(c.NrPages); i++ {
			if err := add(c.Vaddr+i*PageSize, pageSource{}); err != nil {
				return nil, err
			}
		}
	}
	return src, nil
}

package delta

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ftrun/ftrun/checkpoint"
)

// Span is a byte range of a file.
type Span struct {
	Off, Len int64
}

// PagesFile is one pages file WritePages wrote.
type PagesFile struct {
	// Name is the pages file (pages-<id>.img) in the output directory.
	Name string
	// Base is the file whose bytes Same holds: the base set's pages file the unchanged
	// pages were copied from, or with Reused the older set's pages file that was
	// written over. "" when there is none. Same are the byte ranges of Name, in order,
	// that hold what Base holds at the same offsets: a receiver that verified Base
	// needs to read only the rest of Name again to check it.
	Base   string
	Reused bool
	Same   []Span
}

// Reuse offers WritePages the pages files of an older set, one the receiver is about
// to drop, to write over instead of copying the base: when the program's memory
// layout holds still, most pages of a pages file two epochs old are still right, and
// only the pages that changed in either epoch since need writing.
type Reuse struct {
	// Dir is the older set, already out of the receiver's store: its files are
	// moved and overwritten.
	Dir string
	// Unchanged are, per pagemap, the copy runs of the delta that made the base from
	// the older set: the pages whose content the base has unchanged from it.
	Unchanged map[string][]CopyRun
}

// WritePages writes into outDir the pages files of d the way Apply does, but neither
// d's other files (the receiver has them from the stream already) nor the unchanged
// pages through user space: every run of pages the delta copies is one
// checkpoint.CopyRange from the base's pages file (a reflink where the filesystem
// shares extents), and only the changed pages are written. It checks d against the
// base before it writes anything, refuses to overwrite a file, and on any error
// removes the files it created. A delta that does not fit baseDir fails with
// ErrBadBase, one that contradicts itself with ErrMalformed.
func WritePages(baseDir string, d *Delta, outDir string) ([]PagesFile, error) {
	return WritePagesReusing(baseDir, d, outDir, nil)
}

// WritePagesReusing is WritePages that, for every pagemap reuse has an older pages
// file of, moves that file into outDir and writes over it only the pages whose bytes
// there are not already the new ones: a page stays where the older file has the same
// page at the same offset, unchanged both in the base and in d. An older file that
// does not fit (another size than its pagemap says, or linked from elsewhere, which
// would make the overwrite reach another set) is left alone and the base copied.
func WritePagesReusing(baseDir string, d *Delta, outDir string, reuse *Reuse) (files []PagesFile, err error) {
	plans, err := plan(baseDir, d)
	if err != nil {
		return nil, err
	}
	var created []string
	defer func() {
		if err != nil {
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()
	for _, p := range plans {
		path := filepath.Join(outDir, p.out)
		pf := PagesFile{Name: p.out}
		old, f, err := reuse.take(p, path)
		if err != nil {
			return nil, err
		}
		if f == nil {
			if f, err = os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err != nil {
				return nil, err
			}
		}
		created = append(created, path)
		segs := segments(p, old)
		err = f.Truncate(int64(len(p.present)) * PageSize)
		if err == nil {
			err = writeSegments(f, p.basePath, segs)
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, fmt.Errorf("write %q: %w", p.out, err)
		}
		switch {
		case old != nil:
			pf.Base, pf.Reused, pf.Same = old.file, true, keptSpans(segs)
		case p.basePath != "":
			pf.Base, pf.Same = filepath.Base(p.basePath), sameSpans(segs)
		}
		files = append(files, pf)
	}
	return files, nil
}

// older is an older set's pages file taken over for one pagemap.
type older struct {
	file    string   // its name in the older set
	present []uint64 // its pages, in file order
	// unchanged are the vaddrs whose content the base has unchanged from it.
	unchanged map[uint64]bool
}

// take moves the older pages file of p's pagemap to path and opens it for writing,
// if reuse has one that fits; (nil, nil, nil) otherwise.
func (r *Reuse) take(p pagesPlan, path string) (*older, *os.File, error) {
	if r == nil {
		return nil, nil, nil
	}
	runs, ok := r.Unchanged[p.name]
	if !ok {
		return nil, nil, nil
	}
	pm, f, err := takePages(r.Dir, p.name, path)
	if pm == nil || err != nil {
		return nil, nil, err
	}
	o := &older{file: pm.pagesName(), present: pm.present, unchanged: map[uint64]bool{}}
	for _, c := range runs {
		for i := uint64(0); i < uint64(c.NrPages); i++ {
			o.unchanged[c.Vaddr+i*PageSize] = true
		}
	}
	return o, f, nil
}

// takePages moves the pages file of pagemap name in the set dir (one leaving its
// store) to path and opens it for writing, if it fits: a regular file of the size
// its pagemap says and linked nowhere else, since writing over a file another set
// links would change that set too. It returns the file's pagemap, or nil (and no
// error) for a file that does not fit; path must not exist.
func takePages(dir, name, path string) (*pagemapFile, *os.File, error) {
	pm, _, err := decodePagemapIn(dir, name)
	if err != nil {
		return nil, nil, nil
	}
	src := filepath.Join(dir, pm.pagesName())
	fi, err := os.Lstat(src)
	if err != nil || !fi.Mode().IsRegular() || fi.Size() != int64(len(pm.present))*PageSize {
		return nil, nil, nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink != 1 {
		return nil, nil, nil
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		return nil, nil, fmt.Errorf("%q: %w", path, os.ErrExist)
	}
	if err := os.Rename(src, path); err != nil {
		return nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		os.Remove(path)
		return nil, nil, err
	}
	return pm, f, nil
}

// Segment kinds.
const (
	segData = iota // the delta's pages
	segCopy        // a copy from the base's pages file
	segKeep        // already in the file (an older pages file written over)
)

// segment is a run of a pages file handled in one go.
type segment struct {
	kind   int
	off, n int64
	base   int64    // segCopy: offset in the base's pages file
	data   [][]byte // segData: the pages
}

// segments turns a plan into the runs it is written in, in file order: consecutive
// pages the delta carries form one run, and so do consecutive pages copied from
// consecutive offsets of the base, and pages the older file (if any) holds already.
func segments(p pagesPlan, old *older) []segment {
	var out []segment
	for i, vaddr := range p.present {
		off := int64(i) * PageSize
		s := p.src[vaddr]
		var last *segment
		if n := len(out); n > 0 {
			last = &out[n-1]
		}
		switch {
		case s.data == nil && old != nil && i < len(old.present) && old.present[i] == vaddr && old.unchanged[vaddr]:
			if last != nil && last.kind == segKeep {
				last.n += PageSize
				continue
			}
			out = append(out, segment{kind: segKeep, off: off, n: PageSize})
		case s.data == nil:
			from := p.baseOff[vaddr]
			if last != nil && last.kind == segCopy && last.base+last.n == from {
				last.n += PageSize
				continue
			}
			out = append(out, segment{kind: segCopy, off: off, n: PageSize, base: from})
		default:
			if last != nil && last.kind == segData {
				last.n += PageSize
				last.data = append(last.data, s.data)
				continue
			}
			out = append(out, segment{kind: segData, off: off, n: PageSize, data: [][]byte{s.data}})
		}
	}
	return out
}

// sameSpans are the copied runs that stay at their offset, adjacent ones joined.
func sameSpans(segs []segment) []Span {
	return spans(segs, func(s segment) bool { return s.kind == segCopy && s.base == s.off })
}

// keptSpans are the runs an older file held already, adjacent ones joined.
func keptSpans(segs []segment) []Span {
	return spans(segs, func(s segment) bool { return s.kind == segKeep })
}

func spans(segs []segment, pick func(segment) bool) []Span {
	var out []Span
	for _, s := range segs {
		if !pick(s) {
			continue
		}
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == s.off {
			out[n-1].Len += s.n
			continue
		}
		out = append(out, Span{Off: s.off, Len: s.n})
	}
	return out
}

// writeSegments writes segs into f: copies from the file at basePath, changed pages
// gathered into writes of up to 1 MiB; kept runs are left as they are.
func writeSegments(f *os.File, basePath string, segs []segment) error {
	var base *os.File
	if basePath != "" {
		var err error
		if base, err = os.Open(basePath); err != nil {
			return fmt.Errorf("%w: %v", ErrBadBase, err)
		}
		defer base.Close()
	}
	var buf []byte
	for _, s := range segs {
		switch s.kind {
		case segKeep:
		case segCopy:
			if base == nil {
				return fmt.Errorf("%w: pages to copy, but no base", ErrBadBase)
			}
			if err := checkpoint.CopyRange(f, base, s.off, s.base, s.n); err != nil {
				if errors.Is(err, io.ErrUnexpectedEOF) {
					return fmt.Errorf("%w: %v", ErrBadBase, err)
				}
				return err
			}
		case segData:
			off := s.off
			for _, page := range s.data {
				buf = append(buf, page...)
				if len(buf) >= 1<<20 {
					if _, err := f.WriteAt(buf, off); err != nil {
						return err
					}
					off += int64(len(buf))
					buf = buf[:0]
				}
			}
			if len(buf) > 0 {
				if _, err := f.WriteAt(buf, off); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
	}
	return nil
}

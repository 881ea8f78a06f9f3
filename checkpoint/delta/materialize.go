package delta

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"google.golang.org/protobuf/proto"

	"github.com/ftrun/ftrun/checkpoint"
)

// An incremental dump (checkpoint.Options.ParentDir) writes only the pages written
// since its parent's dump; every other page of its pagemaps is marked "in parent".
// Materialize turns such a set into a standalone one, off the frozen path: each page
// the dump left in the parent is copied from the parent's pages file (checkpoint.
// CopyRange, in the kernel), and the pagemap says "present" for all. The set is then
// what a full dump would have written, so everything after the dump (manifest, Diff,
// shipping, the standby, restore, pruning) reads sets as before and no restore ever
// follows a chain.

// ParentLink is the symlink CRIU leaves in an incremental set, to its parent.
const ParentLink = "parent"

// ErrChain says an incremental set could not be made standalone: the parent lacks a
// page the dump left to it, or is itself incremental. The set must not be committed;
// the next dump is a full one.
var ErrChain = errors.New("incremental image set does not match its parent")

// MaterializeStats counts the pages of one Materialize.
type MaterializeStats struct {
	// Pages the dump wrote, pages copied from the parent, and pages a retired set's
	// file held already at their place (see Retired).
	Dumped, FromParent, Kept uint64
	// Bytes is what Materialize wrote: the pages it copied, and pagemaps.
	Bytes int64
	// Written are, per pagemap, the runs of pages the dump wrote: what a later
	// Materialize writing over this set's files must count as changed.
	Written map[string][]CopyRun
}

// Retired is a set the store is dropping, offered to Materialize to write over
// instead of copying the parent whole: where the program's memory layout held still,
// most pages of a pages file a few epochs old are still right, and only the pages
// written since need copying (the standby's WritePagesReusing does the same).
type Retired struct {
	// Dir is the set, already out of the store (checkpoint.Store.Retire): its pages
	// files are moved into the new set and written over.
	Dir string
	// Written are, per pagemap, the pages written since that set: the runs that each
	// dump between it and the parent wrote (MaterializeStats.Written). A pagemap not
	// named here is not taken.
	Written map[string][]CopyRun
}

// Materialize makes the incremental set in dir standalone, taking what it left in its
// parent from parentDir (a standalone set), or, with retired, from a retired set's
// pages files where they still hold it. A set with nothing in a parent is left as it
// is. On error dir must be discarded; parentDir is only read, retired's files are
// spent.
func Materialize(dir, parentDir string, retired *Retired) (MaterializeStats, error) {
	st := MaterializeStats{Written: map[string][]CopyRun{}}
	names, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return st, err
	}
	for _, path := range names {
		name := filepath.Base(path)
		s, err := materializePagemap(dir, parentDir, name, retired)
		if err != nil {
			return st, fmt.Errorf("%s: %w", name, err)
		}
		st.Dumped += s.Dumped
		st.FromParent += s.FromParent
		st.Kept += s.Kept
		st.Bytes += s.bytes
		st.Written[name] = s.written
	}
	if err := os.Remove(filepath.Join(dir, ParentLink)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("remove the parent link: %w", err)
	}
	return st, nil
}

func readPagemapFile(path string) (*pagemapImage, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	img, err := readPagemapImage(data)
	if err != nil {
		return nil, fmt.Errorf("%w: pagemap %s: %w", checkpoint.ErrCorrupt, path, err)
	}
	return img, nil
}

// parentPages says where each page of a standalone pagemap lies in its pages file.
type parentPages struct {
	runs []pageRun // sorted by address
	file *os.File
}

type pageRun struct{ vaddr, pages, offset uint64 }

func openParent(parentDir, name string) (*parentPages, error) {
	img, err := readPagemapFile(filepath.Join(parentDir, name))
	if err != nil {
		return nil, fmt.Errorf("%w: parent: %v", ErrChain, err)
	}
	p := &parentPages{}
	var off uint64
	for _, e := range img.entries {
		flags := entryFlags(e)
		if flags&peParent != 0 {
			return nil, fmt.Errorf("%w: the parent is itself incremental", ErrChain)
		}
		if flags&pePresent == 0 {
			continue
		}
		n := entryPages(e)
		p.runs = append(p.runs, pageRun{e.GetVaddr(), n, off})
		off += n * PageSize
	}
	sort.Slice(p.runs, func(i, j int) bool { return p.runs[i].vaddr < p.runs[j].vaddr })
	if p.file, err = os.Open(filepath.Join(parentDir, pagesName(img.pagesID))); err != nil {
		return nil, fmt.Errorf("%w: parent pages: %v", ErrChain, err)
	}
	return p, nil
}

// find returns the offset in the parent's pages file of the page at vaddr, and how
// many pages follow it there contiguously.
func (p *parentPages) find(vaddr uint64) (offset, pages uint64, ok bool) {
	i := sort.Search(len(p.runs), func(i int) bool { return p.runs[i].vaddr+p.runs[i].pages*PageSize > vaddr })
	if i == len(p.runs) || p.runs[i].vaddr > vaddr {
		return 0, 0, false
	}
	r := p.runs[i]
	skip := (vaddr - r.vaddr) / PageSize
	return r.offset + skip*PageSize, r.pages - skip, true
}

// covers fails with ErrChain unless the parent holds the n pages at vaddr.
func (p *parentPages) covers(vaddr, n uint64) error {
	for n > 0 {
		_, have, ok := p.find(vaddr)
		if !ok {
			return fmt.Errorf("%w: page %#x is in neither the dump nor its parent", ErrChain, vaddr)
		}
		take := min(have, n)
		vaddr, n = vaddr+take*PageSize, n-take
	}
	return nil
}

func pagesName(id uint32) string { return (&pagemapFile{pagesID: id}).pagesName() }

// pagemapStats counts one pagemap's Materialize.
type pagemapStats struct {
	Dumped, FromParent, Kept uint64
	bytes                    int64 // written
	written                  []CopyRun
}

// materializePagemap rebuilds one pagemap's pages file in the order of its entries
// (what CRIU's restore reads), the dumped runs from the dump and the rest from the
// parent (or left where a retired file has them), then replaces the pagemap and the
// pages file.
func materializePagemap(dir, parentDir, name string, retired *Retired) (pagemapStats, error) {
	var st pagemapStats
	img, err := readPagemapFile(filepath.Join(dir, name))
	if err != nil {
		return st, err
	}
	inParent := false
	for _, e := range img.entries {
		// PE_LAZY only says the pages may be restored lazily; they are here or in
		// the parent all the same.
		switch f := entryFlags(e); {
		case f&peParent != 0:
			inParent = true
		case f&pePresent != 0:
			st.Dumped += entryPages(e)
			st.written = append(st.written, CopyRun{Vaddr: e.GetVaddr(), NrPages: uint32(entryPages(e))})
		}
	}
	if !inParent {
		return st, nil
	}
	parent, err := openParent(parentDir, name)
	if err != nil {
		return st, err
	}
	defer parent.file.Close()
	pagesPath := filepath.Join(dir, pagesName(img.pagesID))
	dumped, err := os.Open(pagesPath)
	if err != nil {
		return st, fmt.Errorf("open dumped pages: %w", err)
	}
	defer dumped.Close()
	tmp := pagesPath + ".full"
	out, old, err := openStandalone(tmp, name, retired, st.written)
	if err != nil {
		return st, err
	}
	defer out.Close()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	w := standaloneWriter{out: out, old: old}
	var dumpedOff int64
	for _, e := range img.entries {
		n, flags := entryPages(e), entryFlags(e)
		if flags&peParent == 0 {
			if flags&pePresent != 0 {
				if err = w.copy(dumped, dumpedOff, n); err != nil {
					return st, err
				}
				dumpedOff += int64(n * PageSize)
			}
			continue
		}
		if err = w.fromParent(parent, e.GetVaddr(), n); err != nil {
			return st, err
		}
		e.Flags, e.InParent = proto.Uint32(pePresent|flags&peLazy), nil
	}
	st.FromParent, st.Kept, st.bytes = w.fromParentPages, w.keptPages, w.copied
	if err = w.finish(); err != nil {
		return st, err
	}
	enc, err := img.encode()
	if err != nil {
		return st, fmt.Errorf("encode pagemap: %w", err)
	}
	if err = writeReplace(filepath.Join(dir, name), enc); err != nil {
		return st, err
	}
	st.bytes += int64(len(enc))
	if err = os.Rename(tmp, pagesPath); err != nil {
		return st, fmt.Errorf("place standalone pages: %w", err)
	}
	return st, nil
}

// openStandalone creates the standalone pages file at tmp: the retired set's pages
// file of pagemap name, moved there, when retired offers one that fits (with what of
// it is still right), or else a new, empty file.
func openStandalone(tmp, name string, retired *Retired, dumped []CopyRun) (*os.File, *keptPages, error) {
	if retired != nil {
		if since, ok := retired.Written[name]; ok {
			pm, f, err := takePages(retired.Dir, name, tmp)
			if err != nil {
				return nil, nil, fmt.Errorf("take the retired pages file: %w", err)
			}
			if pm != nil {
				return f, newKeptPages(pm.present, since, dumped), nil
			}
		}
	}
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, nil, checkpoint.MarkNoSpace(fmt.Errorf("create standalone pages: %w", err))
	}
	return f, nil, nil
}

// keptPages says which pages a retired pages file already holds for the standalone
// file written over it: a page at the same offset, for the same address, that no dump
// since wrote.
type keptPages struct {
	present []uint64        // the retired file's pages, in file order
	written map[uint64]bool // pages written since
}

func newKeptPages(present []uint64, since []CopyRun, dumped []CopyRun) *keptPages {
	k := &keptPages{present: present, written: map[uint64]bool{}}
	for _, runs := range [][]CopyRun{since, dumped} {
		for _, r := range runs {
			for i := uint64(0); i < uint64(r.NrPages); i++ {
				k.written[r.Vaddr+i*PageSize] = true
			}
		}
	}
	return k
}

// holds says whether the page at vaddr, at page index i of the standalone file, is
// in the retired file already.
func (k *keptPages) holds(i int64, vaddr uint64) bool {
	return k != nil && i < int64(len(k.present)) && k.present[i] == vaddr && !k.written[vaddr]
}

// standaloneWriter writes a standalone pages file in order, copying what it must.
type standaloneWriter struct {
	out                        *os.File
	old                        *keptPages // nil: out started empty
	off                        int64      // where the next page goes
	copied                     int64      // bytes copied
	fromParentPages, keptPages uint64
}

func (w *standaloneWriter) copy(src *os.File, off int64, pages uint64) error {
	n := int64(pages * PageSize)
	err := checkpoint.CopyRange(w.out, src, w.off, off, n)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: %v", ErrChain, err)
	}
	w.off += n
	w.copied += n
	return checkpoint.MarkNoSpace(err)
}

// fromParent places the n pages at vaddr that the dump left in its parent: left as
// they are where the retired file holds them, copied from the parent elsewhere.
func (w *standaloneWriter) fromParent(parent *parentPages, vaddr, n uint64) error {
	for left := n; left > 0; {
		kept := uint64(0)
		for kept < left && w.old.holds(w.off/PageSize+int64(kept), vaddr+kept*PageSize) {
			kept++
		}
		if kept > 0 {
			// Kept or copied, the pages must be the parent's: a dump that left in
			// its parent what the parent lacks is refused either way.
			if err := parent.covers(vaddr, kept); err != nil {
				return err
			}
			w.off += int64(kept * PageSize)
			w.keptPages += kept
			vaddr, left = vaddr+kept*PageSize, left-kept
			continue
		}
		off, have, ok := parent.find(vaddr)
		if !ok {
			return fmt.Errorf("%w: page %#x is in neither the dump nor its parent", ErrChain, vaddr)
		}
		take := uint64(1)
		for take < min(have, left) && !w.old.holds(w.off/PageSize+int64(take), vaddr+take*PageSize) {
			take++
		}
		if err := w.copy(parent.file, int64(off), take); err != nil {
			return err
		}
		vaddr, left = vaddr+take*PageSize, left-take
		w.fromParentPages += take
	}
	return nil
}

// finish cuts a file written over to its new size and closes it.
func (w *standaloneWriter) finish() error {
	if w.old != nil {
		if err := w.out.Truncate(w.off); err != nil {
			return checkpoint.MarkNoSpace(fmt.Errorf("size standalone pages: %w", err))
		}
	}
	if err := w.out.Close(); err != nil {
		return checkpoint.MarkNoSpace(fmt.Errorf("write standalone pages: %w", err))
	}
	return nil
}

// writeReplace replaces path with b by a rename, so a crash leaves one or the other.
func writeReplace(path string, b []byte) error {
	tmp := path + ".full"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return checkpoint.MarkNoSpace(fmt.Errorf("write %s: %w", filepath.Base(path), err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("place %s: %w", filepath.Base(path), err)
	}
	return nil
}

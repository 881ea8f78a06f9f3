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
	Dumped, FromParent uint64 // pages the dump wrote, pages taken from the parent
}

// Materialize makes the incremental set in dir standalone, taking what it left in its
// parent from parentDir (a standalone set). A set with nothing in a parent is left as
// it is. On error dir must be discarded; parentDir is only read.
func Materialize(dir, parentDir string) (MaterializeStats, error) {
	var st MaterializeStats
	names, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return st, err
	}
	for _, path := range names {
		s, err := materializePagemap(dir, parentDir, filepath.Base(path))
		if err != nil {
			return st, fmt.Errorf("%s: %w", filepath.Base(path), err)
		}
		st.Dumped += s.Dumped
		st.FromParent += s.FromParent
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

func pagesName(id uint32) string { return (&pagemapFile{pagesID: id}).pagesName() }

// materializePagemap rebuilds one pagemap's pages file in the order of its entries
// (what CRIU's restore reads), the dumped runs from the dump and the rest from the
// parent, then replaces the pagemap and the pages file.
func materializePagemap(dir, parentDir, name string) (MaterializeStats, error) {
	var st MaterializeStats
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
	out, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return st, checkpoint.MarkNoSpace(fmt.Errorf("create standalone pages: %w", err))
	}
	defer out.Close()
	var dumpedOff, outOff int64
	copyPages := func(src *os.File, off int64, pages uint64) error {
		n := int64(pages * PageSize)
		err := checkpoint.CopyRange(out, src, outOff, off, n)
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("%w: %v", ErrChain, err)
		}
		outOff += n
		return checkpoint.MarkNoSpace(err)
	}
	for _, e := range img.entries {
		n, flags := entryPages(e), entryFlags(e)
		if flags&peParent == 0 {
			if flags&pePresent != 0 {
				if err := copyPages(dumped, dumpedOff, n); err != nil {
					return st, err
				}
				dumpedOff += int64(n * PageSize)
			}
			continue
		}
		for v, left := e.GetVaddr(), n; left > 0; {
			off, have, ok := parent.find(v)
			if !ok {
				return st, fmt.Errorf("%w: page %#x is in neither the dump nor its parent", ErrChain, v)
			}
			take := min(have, left)
			if err := copyPages(parent.file, int64(off), take); err != nil {
				return st, err
			}
			v, left = v+take*PageSize, left-take
			st.FromParent += take
		}
		e.Flags, e.InParent = proto.Uint32(pePresent|flags&peLazy), nil
	}
	if err := out.Close(); err != nil {
		return st, checkpoint.MarkNoSpace(fmt.Errorf("write standalone pages: %w", err))
	}
	enc, err := img.encode()
	if err != nil {
		return st, fmt.Errorf("encode pagemap: %w", err)
	}
	if err := writeReplace(filepath.Join(dir, name), enc); err != nil {
		return st, err
	}
	if err := os.Rename(tmp, pagesPath); err != nil {
		return st, fmt.Errorf("place standalone pages: %w", err)
	}
	return st, nil
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

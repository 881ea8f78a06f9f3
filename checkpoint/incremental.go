package checkpoint

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"
)

// An incremental dump (Options.ParentDir) writes only the pages written since its
// parent's dump; every other page of its pagemaps is marked "in parent". Materialize
// turns such a set into a standalone one, off the frozen path: each page the dump
// left in the parent is copied from the parent's pages file (in the kernel, with
// copy_file_range), and the pagemap says "present" for all. The committed set is
// then what a full dump would have written, so everything after the dump (manifest,
// shipping, the standby, restore, pruning) reads sets as before and no restore ever
// follows a chain: the program is frozen for what changed, and the store never holds
// a set that needs another.
//
// Written by hand: go-criu's crit decodes pagemaps but does not rewrite a set.

// CRIU's pagemap entry flags (criu/include/pagemap.h).
const (
	peParent  = 1 << 0
	pePresent = 1 << 2
)

// ParentLink is the symlink CRIU leaves in an incremental set, to its parent.
const ParentLink = "parent"

// ErrChain says an incremental set could not be made standalone: the parent lacks a
// page the dump left to it. The set must not be committed; the next dump is a full
// one.
var ErrChain = errors.New("incremental image set does not match its parent")

// MaterializeStats counts the pages of one Materialize.
type MaterializeStats struct {
	Dumped, FromParent uint64 // pages the dump wrote, pages taken from the parent
}

// Materialize makes the incremental set in dir standalone, taking what it left in its
// parent from parentDir (a standalone set). A set with nothing in a parent is left as
// it is. On error dir is in an undefined state and must be discarded; parentDir is
// only read.
func Materialize(dir, parentDir string) (MaterializeStats, error) {
	var st MaterializeStats
	names, err := filepath.Glob(filepath.Join(dir, "pagemap-*.img"))
	if err != nil {
		return st, err
	}
	for _, path := range names {
		s, err := materializePagemap(dir, parentDir, filepath.Base(path))
		if err != nil {
			return st, err
		}
		st.Dumped += s.Dumped
		st.FromParent += s.FromParent
	}
	if err := os.Remove(filepath.Join(dir, ParentLink)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return st, fmt.Errorf("remove the parent link: %w", err)
	}
	return st, nil
}

// pagemapImage is one pagemap file: its magic words, the pages file it indexes and
// its entries.
type pagemapImage struct {
	magic   []byte
	pagesID uint32
	entries []*pagemap.PagemapEntry
}

func entryPages(e *pagemap.PagemapEntry) uint64 {
	if e.NrPages != nil {
		return e.GetNrPages()
	}
	return uint64(e.GetCompatNrPages())
}

func entryFlags(e *pagemap.PagemapEntry) uint32 {
	if e.Flags != nil {
		return e.GetFlags()
	}
	if e.GetInParent() {
		return peParent
	}
	return pePresent
}

func readPagemap(path string) (*pagemapImage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read pagemap: %w", err)
	}
	bad := func(what string) error { return fmt.Errorf("%w: pagemap %s: %s", ErrCorrupt, path, what) }
	if len(b) < 8 {
		return nil, bad("too short for its magic")
	}
	img := &pagemapImage{magic: b[:8]}
	b = b[8:]
	first := true
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, bad("truncated entry size")
		}
		n := binary.LittleEndian.Uint32(b)
		if uint64(n) > uint64(len(b)-4) {
			return nil, bad("truncated entry")
		}
		msg := b[4 : 4+n]
		b = b[4+n:]
		if first {
			var h pagemap.PagemapHead
			if err := proto.Unmarshal(msg, &h); err != nil {
				return nil, bad("head: " + err.Error())
			}
			img.pagesID, first = h.GetPagesId(), false
			continue
		}
		e := &pagemap.PagemapEntry{}
		if err := proto.Unmarshal(msg, e); err != nil {
			return nil, bad("entry: " + err.Error())
		}
		img.entries = append(img.entries, e)
	}
	if first {
		return nil, bad("no head")
	}
	return img, nil
}

func (img *pagemapImage) encode() ([]byte, error) {
	out := append([]byte(nil), img.magic...)
	add := func(m proto.Message) error {
		b, err := proto.Marshal(m)
		if err != nil {
			return err
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
		out = append(out, b...)
		return nil
	}
	if err := add(&pagemap.PagemapHead{PagesId: proto.Uint32(img.pagesID)}); err != nil {
		return nil, err
	}
	for _, e := range img.entries {
		if err := add(e); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func pagesName(id uint32) string { return fmt.Sprintf("pages-%d.img", id) }

// parentPages says where each page of a standalone pagemap lies in its pages file.
type parentPages struct {
	runs []pageRun // sorted by address
	file *os.File
}

type pageRun struct{ vaddr, pages, offset uint64 }

func openParent(parentDir, name string) (*parentPages, error) {
	img, err := readPagemap(filepath.Join(parentDir, name))
	if err != nil {
		return nil, fmt.Errorf("%w: parent: %v", ErrChain, err)
	}
	p := &parentPages{}
	var off uint64
	for _, e := range img.entries {
		n := entryPages(e)
		if entryFlags(e)&pePresent == 0 {
			return nil, fmt.Errorf("%w: the parent %s is itself incremental", ErrChain, name)
		}
		p.runs = append(p.runs, pageRun{e.GetVaddr(), n, off})
		off += n * pageSize
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
	i := sort.Search(len(p.runs), func(i int) bool { return p.runs[i].vaddr+p.runs[i].pages*pageSize > vaddr })
	if i == len(p.runs) || p.runs[i].vaddr > vaddr {
		return 0, 0, false
	}
	r := p.runs[i]
	skip := (vaddr - r.vaddr) / pageSize
	return r.offset + skip*pageSize, r.pages - skip, true
}

const pageSize = 4096

func materializePagemap(dir, parentDir, name string) (MaterializeStats, error) {
	var st MaterializeStats
	img, err := readPagemap(filepath.Join(dir, name))
	if err != nil {
		return st, err
	}
	inParent := false
	for _, e := range img.entries {
		// PE_LAZY only says the pages may be restored lazily; they are here or in
		// the parent all the same.
		if entryFlags(e)&peParent != 0 {
			inParent = true
		} else {
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
		return st, wrapNoSpace(fmt.Errorf("create standalone pages: %w", err))
	}
	defer out.Close()
	var dumpedOff int64
	for _, e := range img.entries {
		n := entryPages(e)
		if entryFlags(e)&peParent == 0 {
			if err := copyRange(out, dumped, dumpedOff, int64(n*pageSize)); err != nil {
				return st, err
			}
			dumpedOff += int64(n * pageSize)
			continue
		}
		for v, left := e.GetVaddr(), n; left > 0; {
			off, have, ok := parent.find(v)
			if !ok {
				return st, fmt.Errorf("%w: page %#x of %s is in neither the dump nor its parent", ErrChain, v, name)
			}
			take := min(have, left)
			if err := copyRange(out, parent.file, int64(off), int64(take*pageSize)); err != nil {
				return st, err
			}
			v, left = v+take*pageSize, left-take
			st.FromParent += take
		}
		e.Flags, e.InParent = proto.Uint32(pePresent), nil
	}
	if err := out.Close(); err != nil {
		return st, wrapNoSpace(fmt.Errorf("write standalone pages: %w", err))
	}
	enc, err := img.encode()
	if err != nil {
		return st, fmt.Errorf("encode pagemap %s: %w", name, err)
	}
	if err := writeReplace(filepath.Join(dir, name), enc); err != nil {
		return st, err
	}
	if err := os.Rename(tmp, pagesPath); err != nil {
		return st, fmt.Errorf("place standalone pages: %w", err)
	}
	return st, nil
}

// copyRange appends n bytes of src at off to dst, in the kernel where it can.
func copyRange(dst, src *os.File, off, n int64) error {
	for n > 0 {
		o := off
		c, err := unix.CopyFileRange(int(src.Fd()), &o, int(dst.Fd()), nil, int(n), 0)
		if errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP) {
			_, err = io.Copy(dst, io.NewSectionReader(src, off, n))
			return wrapNoSpace(err)
		}
		if err != nil {
			return wrapNoSpace(fmt.Errorf("copy pages: %w", err))
		}
		if c == 0 {
			return fmt.Errorf("%w: pages file %s ends before its pagemap does", ErrChain, src.Name())
		}
		off, n = off+int64(c), n-int64(c)
	}
	return nil
}

func writeReplace(path string, b []byte) error {
	tmp := path + ".full"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return wrapNoSpace(fmt.Errorf("write %s: %w", filepath.Base(path), err))
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("place %s: %w", filepath.Base(path), err)
	}
	return nil
}

package delta

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/zeebo/xxh3"

	"github.com/ftrun/ftrun/checkpoint"
)

// Index is what the sender keeps of a set to diff the next one against: per pagemap
// file, vaddr -> 128-bit page hash. 128 bits, because a collision would silently keep
// a stale page on the standby; at 64 bits that is unlikely, at 128 it is not a concern.
type Index struct {
	pagemaps map[string]map[uint64]xxh3.Uint128
}

// Pages is how many pages the index knows.
func (x *Index) Pages() int {
	n := 0
	for _, pm := range x.pagemaps {
		n += len(pm)
	}
	return n
}

// BuildIndex hashes every page of the image set in setDir.
func BuildIndex(setDir string) (*Index, error) {
	_, idx, err := scan(setDir, nil, false, nil)
	return idx, err
}

// Diff computes the delta of the set in newDir against base (nil base: a full delta,
// every page is a PageRun) and returns also the new set's Index for the next epoch.
// baseEpoch is recorded as the delta's Base (0 when base is nil).
func Diff(base *Index, newDir string, baseEpoch, epoch uint64) (*Delta, *Index, error) {
	return DiffExcept(base, newDir, baseEpoch, epoch, nil)
}

// DiffExcept is Diff that neither reads nor returns the files leave names (leave nil:
// none), for a caller that ships those its own way, such as large state files it
// sends as changed blocks; a pagemap is never left out.
func DiffExcept(base *Index, newDir string, baseEpoch, epoch uint64, leave func(name string) bool) (*Delta, *Index, error) {
	d, idx, err := scan(newDir, base, true, leave)
	if err != nil {
		return nil, nil, err
	}
	if base != nil {
		d.Base = baseEpoch
	}
	d.Epoch = epoch
	return d, idx, nil
}

// setLayout sorts the files of an image set into pagemaps (with the pages files they
// name) and whole files.
type setLayout struct {
	pagemaps map[string]*pagemapFile // by pagemap file name
	files    []File                  // everything else that travels, by name
}

// skipFile says which files of a set do not travel (see the package comment).
func skipFile(name string) bool {
	return name == checkpoint.ManifestName || strings.HasSuffix(name, ".log")
}

// readLayout reads the small files of the set in dir, but for those leave names;
// pages files stay on disk.
func readLayout(dir string, leave func(string) bool) (*setLayout, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read image set: %w", err)
	}
	l := &setLayout{pagemaps: map[string]*pagemapFile{}}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() && !skipFile(e.Name()) {
			names = append(names, e.Name())
		}
	}
	small := map[string][]byte{}
	for _, name := range names {
		if !isPagemapName(name) {
			continue
		}
		pm, data, err := decodePagemapIn(dir, name)
		if data == nil && err != nil {
			return nil, err
		}
		small[name] = data
		if errors.Is(err, errNotPagemap) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%w: %q in %q: %v", ErrMalformed, name, dir, err)
		}
		l.pagemaps[name] = pm
	}
	owner := map[string]string{}
	for name, pm := range l.pagemaps {
		pages := pm.pagesName()
		if other, ok := owner[pages]; ok {
			return nil, fmt.Errorf("%w: %q and %q in %q share %q", ErrMalformed, name, other, dir, pages)
		}
		owner[pages] = name
	}
	for _, name := range names {
		if _, isPages := owner[name]; isPages {
			continue
		}
		if _, isPagemap := l.pagemaps[name]; !isPagemap && leave != nil && leave(name) {
			continue
		}
		data, ok := small[name]
		if !ok {
			if data, err = os.ReadFile(filepath.Join(dir, name)); err != nil {
				return nil, err
			}
		}
		l.files = append(l.files, File{Name: name, Data: data})
	}
	return l, nil
}

// scan reads the set in dir, hashes its pages into a new Index and, with wantDelta,
// sorts them against base into changed pages and copies.
func scan(dir string, base *Index, wantDelta bool, leave func(string) bool) (*Delta, *Index, error) {
	l, err := readLayout(dir, leave)
	if err != nil {
		return nil, nil, err
	}
	idx := &Index{pagemaps: make(map[string]map[uint64]xxh3.Uint128, len(l.pagemaps))}
	d := &Delta{}
	if wantDelta {
		d.Files = l.files
	}
	names := make([]string, 0, len(l.pagemaps))
	for name := range l.pagemaps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		var old map[uint64]xxh3.Uint128
		if base != nil {
			old = base.pagemaps[name]
		}
		pd, hashes, err := scanPagemap(dir, name, l.pagemaps[name], old, base != nil, wantDelta)
		if err != nil {
			return nil, nil, err
		}
		idx.pagemaps[name] = hashes
		if wantDelta {
			d.Pagemaps = append(d.Pagemaps, pd)
		}
	}
	return d, idx, nil
}

// scanPagemap streams one pages file: every page is hashed, and a page whose hash is
// the one old has for its vaddr becomes a copy, any other page travels.
func scanPagemap(dir, name string, pm *pagemapFile, old map[uint64]xxh3.Uint128, haveBase, wantDelta bool) (PagemapDelta, map[uint64]xxh3.Uint128, error) {
	pd := PagemapDelta{Pagemap: name}
	path := filepath.Join(dir, pm.pagesName())
	f, err := os.Open(path)
	if err != nil {
		return pd, nil, fmt.Errorf("%w: pages of %q: %v", ErrMalformed, name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return pd, nil, err
	}
	if want := int64(len(pm.present)) * PageSize; fi.Size() != want {
		return pd, nil, fmt.Errorf("%w: %q is %d bytes, %q lists %d pages (%d bytes)", ErrMalformed, path, fi.Size(), name, len(pm.present), want)
	}
	r := bufio.NewReaderSize(f, 1<<20)
	page := make([]byte, PageSize)
	hashes := make(map[uint64]xxh3.Uint128, len(pm.present))
	var rs runs
	if wantDelta && old == nil {
		// Every page travels: one buffer holds them all instead of runs that grow by
		// doubling (a 100 MB heap would be copied about twice over).
		rs.arena = make([]byte, 0, len(pm.present)*PageSize)
	}
	for _, vaddr := range pm.present {
		if _, err := io.ReadFull(r, page); err != nil {
			return pd, nil, fmt.Errorf("read %q: %w", path, err)
		}
		h := xxh3.Hash128(page)
		hashes[vaddr] = h
		if !wantDelta {
			continue
		}
		if prev, ok := old[vaddr]; ok && haveBase && prev == h {
			rs.addCopy(vaddr)
		} else {
			rs.addPage(vaddr, page)
		}
	}
	pd.Pages, pd.Copies = rs.done()
	return pd, hashes, nil
}

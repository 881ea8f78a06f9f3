package delta

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ftrun/ftrun/checkpoint"
)

// pagesPlan is how Apply writes one pages file: the new pagemap's present pages in
// order, each from the delta or from the base's pages file.
type pagesPlan struct {
	name     string // the pagemap
	out      string // pages-<id>.img in outDir
	present  []uint64
	src      map[uint64]pageSource
	basePath string           // the base's pages file, when a copy needs it
	baseOff  map[uint64]int64 // vaddr -> offset in basePath
}

// Apply rebuilds in outDir the complete image set d describes, from baseDir (the
// receiver's committed copy of epoch d.Base) and d. Every file is byte-identical to the
// sender's; pages files are rebuilt in the order of their pagemaps.
//
// Apply checks the whole delta against the base before it writes anything, and on any
// error removes the files it created, so outDir never holds part of a set. It creates
// files only (it refuses to overwrite one) and neither fsyncs nor renames: outDir is
// meant to be a checkpoint.Store's Pending directory, which the caller commits (or
// aborts). A delta that does not fit baseDir fails with ErrBadBase. A full delta (no
// copies) needs no base: baseDir may then be empty or "".
func Apply(baseDir string, d *Delta, outDir string) (err error) {
	plans, err := plan(baseDir, d)
	if err != nil {
		return err
	}
	var created []string
	defer func() {
		if err != nil {
			for _, p := range created {
				os.Remove(p)
			}
		}
	}()
	create := func(name string) (*os.File, error) {
		path := filepath.Join(outDir, name)
		f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		created = append(created, path)
		return f, nil
	}
	for _, file := range d.Files {
		f, err := create(file.Name)
		if err != nil {
			return err
		}
		_, err = f.Write(file.Data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %q: %w", file.Name, err)
		}
	}
	for _, p := range plans {
		f, err := create(p.out)
		if err != nil {
			return err
		}
		err = writePages(f, p)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("write %q: %w", p.out, err)
		}
	}
	return nil
}

// plan checks d against itself and against the base, and says how to write every
// pages file. It writes nothing.
func plan(baseDir string, d *Delta) ([]pagesPlan, error) {
	if err := checkBaseEpoch(baseDir, d.Base); err != nil {
		return nil, err
	}
	files := make(map[string][]byte, len(d.Files))
	for _, f := range d.Files {
		if f.Name == "" || f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." {
			return nil, fmt.Errorf("%w: file name %q", ErrMalformed, f.Name)
		}
		if _, dup := files[f.Name]; dup {
			return nil, fmt.Errorf("%w: file %q twice", ErrMalformed, f.Name)
		}
		files[f.Name] = f.Data
	}
	deltas := make(map[string]PagemapDelta, len(d.Pagemaps))
	for _, pd := range d.Pagemaps {
		if _, dup := deltas[pd.Pagemap]; dup {
			return nil, fmt.Errorf("%w: pagemap %q twice", ErrMalformed, pd.Pagemap)
		}
		deltas[pd.Pagemap] = pd
		if _, ok := files[pd.Pagemap]; !ok {
			return nil, fmt.Errorf("%w: pages for %q, but no such pagemap", ErrMalformed, pd.Pagemap)
		}
	}
	var plans []pagesPlan
	outs := map[string]bool{}
	for _, f := range d.Files {
		if !isPagemapName(f.Name) {
			continue
		}
		pd, ok := deltas[f.Name]
		if !ok {
			if _, err := decodePagemap(f.Data, 0); errors.Is(err, errNotPagemap) {
				continue
			}
			return nil, fmt.Errorf("%w: no pages for pagemap %q", ErrMalformed, f.Name)
		}
		p, err := planPages(baseDir, f, pd)
		if errors.Is(err, errNotPagemap) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if _, clash := files[p.out]; clash || outs[p.out] {
			return nil, fmt.Errorf("%w: %q written twice", ErrMalformed, p.out)
		}
		outs[p.out] = true
		plans = append(plans, p)
	}
	if len(plans) != len(deltas) {
		return nil, fmt.Errorf("%w: %d pagemap deltas, %d pagemaps", ErrMalformed, len(deltas), len(plans))
	}
	return plans, nil
}

// planPages plans one pages file. Every count a peer declares is checked against
// what bounds it before it sizes anything: the pages copied against the base's
// pages file (which this host holds), the new pagemap's pages against the pages
// shipped plus those copied, and the runs against the new pagemap.
func planPages(baseDir string, f File, pd PagemapDelta) (pagesPlan, error) {
	shipped, copied := counts(pd)
	p := pagesPlan{name: f.Name}
	if copied > 0 {
		if err := p.loadBase(baseDir); err != nil {
			return p, err
		}
		if have := uint64(len(p.baseOff)); copied > have {
			return p, fmt.Errorf("%w: %w: %q copies %d pages, the base's pagemap has %d", ErrMalformed, ErrTooBig, f.Name, copied, have)
		}
	}
	pm, err := decodePagemap(f.Data, shipped+copied)
	if errors.Is(err, errNotPagemap) {
		return p, err
	}
	if err != nil {
		return p, fmt.Errorf("%w: %q: %w", ErrMalformed, f.Name, err)
	}
	p.out, p.present = pm.pagesName(), pm.present
	if p.src, err = sources(pd, len(pm.present)); err != nil {
		return p, err
	}
	for _, vaddr := range pm.present {
		s, ok := p.src[vaddr]
		if !ok {
			return p, fmt.Errorf("%w: %q: page 0x%x is in no run", ErrMalformed, f.Name, vaddr)
		}
		if s.data == nil {
			if _, ok := p.baseOff[vaddr]; !ok {
				return p, fmt.Errorf("%w: %q: page 0x%x is to be copied, but %q has no such page", ErrBadBase, p.name, vaddr, baseDir)
			}
		}
	}
	return p, nil
}

// loadBase finds the base set's pages file of p's pagemap and where each of its
// pages sits in it.
func (p *pagesPlan) loadBase(baseDir string) error {
	if baseDir == "" {
		return fmt.Errorf("%w: %q copies pages, but there is no base", ErrBadBase, p.name)
	}
	base, _, err := decodePagemapIn(baseDir, p.name)
	if err != nil {
		return fmt.Errorf("%w: %q in %q: %v", ErrBadBase, p.name, baseDir, err)
	}
	p.basePath = filepath.Join(baseDir, base.pagesName())
	fi, err := os.Stat(p.basePath)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadBase, err)
	}
	if want := int64(len(base.present)) * PageSize; fi.Size() != want {
		return fmt.Errorf("%w: %q is %d bytes, its pagemap lists %d", ErrBadBase, p.basePath, fi.Size(), want)
	}
	p.baseOff = make(map[uint64]int64, len(base.present))
	for i, vaddr := range base.present {
		p.baseOff[vaddr] = int64(i) * PageSize
	}
	return nil
}

// checkBaseEpoch refuses a committed base set of another epoch than the delta's base.
// A base directory without a manifest (not committed by a Store) is taken as it is.
func checkBaseEpoch(baseDir string, epoch uint64) error {
	if baseDir == "" || epoch == 0 {
		return nil
	}
	if _, err := os.Stat(filepath.Join(baseDir, checkpoint.ManifestName)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	m, err := checkpoint.ReadManifest(baseDir)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadBase, err)
	}
	if m.Epoch != epoch {
		return fmt.Errorf("%w: %q holds epoch %d, the delta is against epoch %d", ErrBadBase, baseDir, m.Epoch, epoch)
	}
	return nil
}

// writePages writes one pages file; pages copied from consecutive base offsets are
// read in one go.
func writePages(f *os.File, p pagesPlan) error {
	w := bufio.NewWriterSize(f, 1<<20)
	var base *os.File
	if p.basePath != "" {
		var err error
		if base, err = os.Open(p.basePath); err != nil {
			return fmt.Errorf("%w: %v", ErrBadBase, err)
		}
		defer base.Close()
	}
	var from, n int64 // pending copy from the base
	flush := func() error {
		if n == 0 {
			return nil
		}
		got, err := io.Copy(w, io.NewSectionReader(base, from, n))
		if err == nil && got != n {
			err = fmt.Errorf("%w: %q ends early", ErrBadBase, p.basePath)
		}
		n = 0
		return err
	}
	for _, vaddr := range p.present {
		s := p.src[vaddr]
		if s.data == nil {
			off := p.baseOff[vaddr]
			if n > 0 && from+n == off {
				n += PageSize
				continue
			}
			if err := flush(); err != nil {
				return err
			}
			from, n = off, PageSize
			continue
		}
		if err := flush(); err != nil {
			return err
		}
		if _, err := w.Write(s.data); err != nil {
			return err
		}
	}
	if err := flush(); err != nil {
		return err
	}
	return w.Flush()
}

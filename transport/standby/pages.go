package standby

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/transport/frame"
)

// PagePatcher is a PageApplier that may write over the pages files of an older set
// the standby is dropping (reuse, nil when there is none) instead of copying the
// base, and says which bytes of the files it wrote are those of a verified file at
// the same offsets: the standby then re-reads only the rest to verify them.
type PagePatcher interface {
	PageApplier
	PatchPages(baseDir string, pages []frame.PageDelta, outDir string, reuse *delta.Reuse) ([]delta.PagesFile, error)
}

// DeltaPages rebuilds page images with checkpoint/delta: the pages file of every
// pagemap that came with page deltas, from the changed pages and the base's copy of
// the unchanged ones.
type DeltaPages struct{}

// ApplyPages implements PageApplier.
func (dp DeltaPages) ApplyPages(baseDir string, pages []frame.PageDelta, outDir string) error {
	_, err := dp.PatchPages(baseDir, pages, outDir, nil)
	return err
}

// PatchPages implements PagePatcher with delta.WritePagesReusing: an older pages
// file gets only the pages it does not hold already; otherwise the unchanged pages
// are copied from the base in the kernel (a reflink where the filesystem shares
// extents) and only the changed ones written. The pagemap files arrived whole and are
// in outDir already.
func (DeltaPages) PatchPages(baseDir string, pages []frame.PageDelta, outDir string, reuse *delta.Reuse) ([]delta.PagesFile, error) {
	d, err := collectPages(pages, outDir)
	if err != nil {
		return nil, err
	}
	files, err := delta.WritePagesReusing(baseDir, d, outDir, reuse)
	switch {
	case errors.Is(err, delta.ErrBadBase), errors.Is(err, delta.ErrMalformed):
		return nil, fmt.Errorf("%w: %w", checkpoint.ErrCorrupt, err)
	case errors.Is(err, os.ErrExist):
		return nil, fmt.Errorf("%w: a pages file came whole and as page deltas: %w", checkpoint.ErrCorrupt, err)
	case err != nil:
		return nil, err
	}
	for _, f := range files {
		// Images hold the program's memory: owner-only, whatever the umask.
		if err := os.Chmod(filepath.Join(outDir, f.Name), 0o600); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// collectPages turns the PageDelta frames of an epoch into one delta.Delta, with the
// pagemaps they name (read from outDir, where they arrived whole) as its files.
func collectPages(pages []frame.PageDelta, outDir string) (*delta.Delta, error) {
	d := &delta.Delta{}
	byName := map[string]int{}
	for _, p := range pages {
		i, ok := byName[p.Pagemap]
		if !ok {
			data, err := os.ReadFile(filepath.Join(outDir, p.Pagemap))
			if err != nil {
				return nil, fmt.Errorf("%w: page delta for %q, which did not arrive: %v", checkpoint.ErrCorrupt, p.Pagemap, err)
			}
			i = len(d.Pagemaps)
			byName[p.Pagemap] = i
			d.Files = append(d.Files, delta.File{Name: p.Pagemap, Data: data})
			d.Pagemaps = append(d.Pagemaps, delta.PagemapDelta{Pagemap: p.Pagemap})
		}
		// A large pagemap travels in several frames; they add up to one delta.
		pm := &d.Pagemaps[i]
		for _, r := range p.Pages {
			pm.Pages = append(pm.Pages, delta.PageRun{Vaddr: r.Vaddr, Data: r.Data})
		}
		for _, c := range p.CopyRuns {
			pm.Copies = append(pm.Copies, delta.CopyRun{Vaddr: c.Vaddr, NrPages: c.NrPages})
		}
	}
	return d, nil
}

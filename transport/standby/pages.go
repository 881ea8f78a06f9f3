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

// DeltaPages rebuilds page images with checkpoint/delta: the pages file of every
// pagemap that came with page deltas, from the changed pages and the base's copy of
// the unchanged ones.
type DeltaPages struct{}

// ApplyPages implements PageApplier. The pagemap files arrived whole and are in
// outDir already; delta.Apply writes every file of its delta itself, so it runs in a
// scratch directory and only the pages files it produced are moved into outDir.
func (DeltaPages) ApplyPages(baseDir string, pages []frame.PageDelta, outDir string) error {
	d := &delta.Delta{}
	byName := map[string]int{}
	for _, p := range pages {
		i, ok := byName[p.Pagemap]
		if !ok {
			data, err := os.ReadFile(filepath.Join(outDir, p.Pagemap))
			if err != nil {
				return fmt.Errorf("%w: page delta for %q, which did not arrive: %v", checkpoint.ErrCorrupt, p.Pagemap, err)
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
	scratch, err := os.MkdirTemp(outDir, ".apply-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)
	if err := delta.Apply(baseDir, d, scratch); err != nil {
		if errors.Is(err, delta.ErrBadBase) || errors.Is(err, delta.ErrMalformed) {
			return fmt.Errorf("%w: %w", checkpoint.ErrCorrupt, err)
		}
		return err
	}
	ents, err := os.ReadDir(scratch)
	if err != nil {
		return err
	}
	for _, e := range ents {
		dst := filepath.Join(outDir, e.Name())
		if _, err := os.Lstat(dst); err == nil {
			continue // a pagemap we handed in
		}
		if err := os.Rename(filepath.Join(scratch, e.Name()), dst); err != nil {
			return err
		}
		if err := os.Chmod(dst, 0o600); err != nil {
			return err
		}
	}
	return nil
}

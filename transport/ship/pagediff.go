package ship

import (
	"fmt"
	"path/filepath"
	"slices"
	"sync"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/transport/frame"
)

// PageDiffer ships only the pages whose content changed (checkpoint/delta), the
// blocks that changed of the program's synced state files (see FileBlockSize), and
// whole the other files that changed. It keeps the page index of recent sets so
// that the base is not re-read every epoch: after a full epoch the base is indexed
// once, after that each Diff indexes the new set as a by-product.
type PageDiffer struct {
	mu      sync.Mutex
	indexes map[uint64]*delta.Index
}

// NewPageDiffer returns a PageDiffer with an empty index cache.
func NewPageDiffer() *PageDiffer { return &PageDiffer{indexes: map[uint64]*delta.Index{}} }

// Diff implements Differ.
func (p *PageDiffer) Diff(base Base, dir string, m *checkpoint.Manifest) (*Delta, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	idx := p.indexes[base.Epoch]
	if idx == nil {
		var err error
		if idx, err = delta.BuildIndex(base.Dir); err != nil {
			return nil, fmt.Errorf("index base epoch %d: %w", base.Epoch, err)
		}
	}
	// The synced state files may be large: they are not read here, but compared
	// block by block below where they changed, and otherwise sent from disk.
	synced := map[string]bool{}
	for _, f := range m.Synced {
		synced[f.Name] = true
	}
	d, next, err := delta.DiffExcept(idx, dir, base.Epoch, m.Epoch, func(name string) bool { return synced[name] })
	if err != nil {
		return nil, err
	}
	// Only the base of the next delta can be this epoch (if acked) or the same base
	// (if not): everything older is dropped.
	p.indexes = map[uint64]*delta.Index{base.Epoch: idx, m.Epoch: next}

	changed := changedFiles(base.Manifest, m)
	withPages := map[string]bool{}
	out := &Delta{Blocks: syncedBlocks(base, dir, m, changed)}
	sent := map[string]bool{}
	for _, b := range out.Blocks {
		sent[b.Name] = true
	}
	for _, pm := range d.Pagemaps {
		withPages[pm.Pagemap] = true
		fp := frame.PageDelta{Pagemap: pm.Pagemap}
		for _, r := range pm.Pages {
			fp.Pages = append(fp.Pages, frame.PageRun{Vaddr: r.Vaddr, Data: r.Data})
		}
		for _, c := range pm.Copies {
			fp.CopyRuns = append(fp.CopyRuns, frame.CopyRun{Vaddr: c.Vaddr, NrPages: c.NrPages})
		}
		out.Pagemaps = append(out.Pagemaps, fp)
	}
	for _, f := range d.Files {
		// A pagemap with page deltas travels even unchanged: the standby rebuilds its
		// pages file from it. Other unchanged files are taken from the base there.
		if sent[f.Name] {
			continue
		}
		if changed[f.Name] || withPages[f.Name] {
			out.Files = append(out.Files, File{Name: f.Name, Data: f.Data})
			sent[f.Name] = true
		}
	}
	// What the delta leaves out (CRIU's logs) but the manifest lists still has to
	// arrive when it changed; pages files are rebuilt from their pagemaps.
	for _, f := range m.Files {
		if changed[f.Name] && !sent[f.Name] && !isPagesFile(f.Name) {
			out.Files = append(out.Files, File{Name: f.Name})
		}
	}
	return out, nil
}

// isPagesFile matches CRIU's page data files (pages-<id>.img), which the standby
// rebuilds from the pagemap of the same id.
func isPagesFile(name string) bool {
	ok, _ := filepath.Match("pages-*.img", name)
	return ok
}

// changedFiles names the files of m whose size or checksums differ from base's.
func changedFiles(base, m *checkpoint.Manifest) map[string]bool {
	old := make(map[string]checkpoint.FileSum, len(base.Files))
	for _, f := range base.Files {
		old[f.Name] = f
	}
	changed := map[string]bool{}
	for _, f := range m.Files {
		o, ok := old[f.Name]
		if !ok || o.Size != f.Size || !slices.Equal(o.XXH3, f.XXH3) {
			changed[f.Name] = true
		}
	}
	return changed
}

package ship

import (
	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/frame"
)

// Base is the last epoch the standby acked: what a delta is taken against.
type Base struct {
	Epoch    uint64
	Dir      string
	Manifest *checkpoint.Manifest
}

// File is one image file sent whole. Data nil means: read Name from the new set.
type File struct {
	Name string
	Data []byte
}

// Delta is what travels for a delta epoch; every file of the new set that is in
// none of Files and Blocks nor produced from Pagemaps is taken unchanged from the base.
type Delta struct {
	Files    []File
	Pagemaps []frame.PageDelta
	// Blocks are files sent as what changed since the base's file of the same name.
	Blocks []FileBlocks
}

// FileBlocks is one file of the new set sent as the ranges in which it differs from
// the base's file of the same name, and its new size; the standby takes every other
// byte from its copy of the base. The data is read from the new set when it is sent.
type FileBlocks struct {
	Name string
	Size int64
	// Mode is the state file's mode (SyncedFile.Mode), for information: the manifest
	// carries it to a restore, and a set's own files are private whatever it says.
	Mode uint32
	// Ranges are sorted, do not overlap and lie within Size.
	Ranges []Range
}

// Range is a byte range of a file.
type Range struct {
	Off, Len int64
}

// wholeFiles turns the block deltas of d into whole files, for a standby that cannot
// rebuild files from blocks.
func (d *Delta) wholeFiles() {
	for _, b := range d.Blocks {
		d.Files = append(d.Files, File{Name: b.Name})
	}
	d.Blocks = nil
}

// Differ computes the delta from base to the set in dir, described by m.
type Differ interface {
	Diff(base Base, dir string, m *checkpoint.Manifest) (*Delta, error)
}

// FileDiffer sends every file whose size or checksums differ from the base's, and
// nothing else. It reads no image: the manifests already hold the checksums.
type FileDiffer struct{}

// Diff implements Differ.
func (FileDiffer) Diff(base Base, _ string, m *checkpoint.Manifest) (*Delta, error) {
	d := &Delta{}
	changed := changedFiles(base.Manifest, m)
	for _, f := range m.Files {
		if changed[f.Name] {
			d.Files = append(d.Files, File{Name: f.Name})
		}
	}
	return d, nil
}

// splitPages cuts a page delta into frames of at most max payload bytes (roughly:
// runs are split at page boundaries), so a large dirty region never exceeds the
// frame limit. Copy runs travel in the first piece.
func splitPages(p frame.PageDelta, max int) []frame.PageDelta {
	const overhead = 8 + 4
	max = max - len(p.Pagemap) - 64 - len(p.CopyRuns)*12
	if max < frame.PageSize+overhead {
		max = frame.PageSize + overhead
	}
	out := []frame.PageDelta{{Pagemap: p.Pagemap, CopyRuns: p.CopyRuns}}
	size := 0
	for _, r := range p.Pages {
		data, vaddr := r.Data, r.Vaddr
		for len(data) > 0 {
			room := (max - size - overhead) / frame.PageSize * frame.PageSize
			if room <= 0 {
				out = append(out, frame.PageDelta{Pagemap: p.Pagemap})
				size = 0
				continue
			}
			n := min(room, len(data))
			cur := &out[len(out)-1]
			cur.Pages = append(cur.Pages, frame.PageRun{Vaddr: vaddr, Data: data[:n]})
			size += n + overhead
			data, vaddr = data[n:], vaddr+uint64(n)
		}
	}
	return out
}

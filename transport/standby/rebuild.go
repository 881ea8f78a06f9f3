package standby

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/transport/frame"
)

// origin is how a file of a delta epoch came to be from files this process verified
// and that are never written since (the base's, or those of the older set whose pages
// file was written over); a file with no origin arrived whole over the wire.
type origin struct {
	// linked: the file is a hard link of from.
	linked bool
	// from is the manifest entry of the verified file, and same the byte ranges of
	// this file holding exactly what from holds at the same offsets.
	from checkpoint.FileSum
	same []delta.Span
}

// knownChunks decides which chunks of the rebuilt set need not be read to verify it
// against its manifest m. The files origins names were verified against their
// manifests by this process and are never written, so
//   - a hard link of a file whose manifest entry is the one m has is known whole;
//   - a chunk that lies entirely in same-offset copies of a verified file, where that
//     file's chunk has the same extent and the same checksum as the new chunk in m,
//     holds exactly the bytes the manifest describes.
//
// Everything else (files that came over the wire, chunks touched by a changed page or
// block, chunks whose checksum the primary says moved) is read and checksummed. A
// delta that leaves out a change the manifest announces is caught too: its chunk
// keeps the old checksum, which is not m's, so it is read and fails.
func knownChunks(m *checkpoint.Manifest, origins map[string]origin) map[string][]bool {
	known := map[string][]bool{}
	for _, f := range m.Files {
		o, ok := origins[f.Name]
		if !ok {
			continue
		}
		k := make([]bool, len(f.XXH3))
		for i := range k {
			if o.linked {
				k[i] = o.from.SameContent(f)
				continue
			}
			off := int64(i) * checkpoint.ChunkSize
			end := min(off+checkpoint.ChunkSize, f.Size)
			k[i] = i < len(o.from.XXH3) && min(off+checkpoint.ChunkSize, o.from.Size) == end &&
				o.from.XXH3[i] == f.XXH3[i] && covered(o.same, off, end)
		}
		known[f.Name] = k
	}
	return known
}

// covered says whether [off, end) lies within the union of spans (sorted by offset).
func covered(spans []delta.Span, off, end int64) bool {
	for _, s := range spans {
		if s.Off > off {
			return false
		}
		if s.Off+s.Len > off {
			off = s.Off + s.Len
		}
		if off >= end {
			return true
		}
	}
	return off >= end
}

// subtract is the parts of whole that no span of cut touches, in order.
func subtract(whole delta.Span, cut []delta.Span) []delta.Span {
	cut = slices.Clone(cut)
	slices.SortFunc(cut, func(a, b delta.Span) int { return cmp.Compare(a.Off, b.Off) })
	var out []delta.Span
	off, end := whole.Off, whole.Off+whole.Len
	for _, c := range cut {
		if c.Off > off {
			out = append(out, delta.Span{Off: off, Len: min(c.Off, end) - off})
		}
		off = max(off, c.Off+c.Len)
		if off >= end {
			return out
		}
	}
	if off < end {
		out = append(out, delta.Span{Off: off, Len: end - off})
	}
	return out
}

// written names the files of m that were written for this epoch (everything but hard
// links of the base's files, which are durable already): the ones to fsync.
func written(m *checkpoint.Manifest, origins map[string]origin) []string {
	var out []string
	for _, f := range m.Files {
		if !origins[f.Name].linked {
			out = append(out, f.Name)
		}
	}
	return out
}

// blockFile is a file being rebuilt from FileDeltas: a copy of the base's file of the
// same name, or the retired older set's written over (reused), cut or extended to
// size, over which the changed blocks are written.
type blockFile struct {
	size   int64
	reused bool
	// same are the ranges holding the source's bytes (the base's, or with reused the
	// older set's) at the same offsets before any block was written; blocks are the
	// ranges the FileDeltas wrote.
	same   []delta.Span
	blocks []delta.Span
}

// startBlockFile creates name in the pending set from its base copy: over the older
// set's copy when there is one to reuse, else as a copy of the base's.
func (in *incoming) startBlockFile(name string, size int64) (*blockFile, *epochError) {
	base, err := os.Open(filepath.Join(in.baseDir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, badBase("file delta for %q, which the base does not hold", name)
	}
	if err != nil {
		return nil, classify("open base "+name, err)
	}
	defer base.Close()
	fi, err := base.Stat()
	if err != nil {
		return nil, classify("open base "+name, err)
	}
	path := filepath.Join(in.pending.Dir, name)
	bf, err := in.reuseBlockFile(name, path, base, fi.Size(), size)
	if bf == nil && err == nil {
		bf = &blockFile{size: size, same: []delta.Span{{Off: 0, Len: min(fi.Size(), size)}}}
		err = copyPrefix(path, base, bf.same[0].Len, size)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		err = fmt.Errorf("%w: base changed while copied: %v", checkpoint.ErrCorrupt, err)
	}
	if err == nil {
		// Images hold the program's state: owner-only, whatever the umask.
		err = os.Chmod(path, 0o600)
	}
	if err != nil {
		return nil, classify("copy "+name+" from base", err)
	}
	return bf, nil
}

// copyPrefix creates path holding the first n bytes of src, extended to size.
func copyPrefix(path string, src *os.File, n, size int64) error {
	dst, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	err = checkpoint.CopyRange(dst, src, 0, 0, n)
	if err == nil {
		err = dst.Truncate(size)
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// reuseBlockFile moves the retired older set's copy of name to path, if it is one the
// base's epoch rebuilt from blocks (so what changed since is known) and no other set
// shares it, cuts or extends it to size and copies into it, from the base, what the
// base's epoch changed. (nil, nil) means there is nothing to reuse.
func (in *incoming) reuseBlockFile(name, path string, base *os.File, baseSize, size int64) (*blockFile, error) {
	if in.older == nil {
		return nil, nil
	}
	changed, ok := in.chain.blocks[name]
	if !ok {
		return nil, nil
	}
	src := filepath.Join(in.retired, name)
	fi, err := os.Lstat(src)
	if err != nil || !fi.Mode().IsRegular() {
		return nil, nil
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || st.Nlink != 1 {
		return nil, nil
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%q: %w", path, fs.ErrExist)
	}
	if err := os.Rename(src, path); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, err
	}
	err = f.Truncate(size)
	// What the older copy holds up to here, the base holds too except where the base's
	// epoch wrote: those ranges come from the base.
	keep := min(fi.Size(), size)
	for _, c := range changed {
		if n := min(c.Len, keep-c.Off, baseSize-c.Off); err == nil && n > 0 {
			err = checkpoint.CopyRange(f, base, c.Off, c.Off, n)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return &blockFile{size: size, reused: true, same: subtract(delta.Span{Off: 0, Len: keep}, changed)}, nil
}

// write writes blocks into the file (the frame checked they lie within its size).
func (bf *blockFile) write(dir, name string, blocks []frame.Block) *epochError {
	if len(blocks) == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY, 0)
	if err != nil {
		return classify("open "+name, err)
	}
	for _, b := range blocks {
		if _, err = f.WriteAt(b.Data, int64(b.Offset)); err != nil {
			break
		}
		bf.blocks = append(bf.blocks, delta.Span{Off: int64(b.Offset), Len: int64(len(b.Data))})
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return classify("write "+name, err)
	}
	return nil
}

// origin is what of the rebuilt file is still its source's (the base's, or the
// older set's when reused); from is the source's manifest entry.
func (bf *blockFile) origin(from checkpoint.FileSum) origin {
	var same []delta.Span
	for _, s := range bf.same {
		same = append(same, subtract(s, bf.blocks)...)
	}
	return origin{from: from, same: same}
}

package ship

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/frame"
)

// FileBlockSize is the unit in which a changed synced file is compared with its base
// and shipped. 4 KiB is the page size, the unit in which the kernel writes a file back
// and in which the storage engines programs keep state with (SQLite, LMDB, BoltDB)
// write, so a small write by the program rarely changes more than one block; a
// coarser block would ship bytes that did not change (a 4 KiB update costs 64 KiB in
// 64 KiB blocks). Finding the blocks costs the same at any size: a comparison of the
// manifest chunks whose checksums moved with the base's. What a small block costs is
// 12 bytes of framing per run of changed blocks, adjacent ones travelling as one run.
const FileBlockSize = 4096

// comparePiece is how much of a file diffBlocks compares at a time.
const comparePiece = 1 << 20

// diffBlocks finds where the file newPath (described by cur in its manifest) differs
// from basePath (described by prev in the base's), in FileBlockSize blocks, adjacent
// ones joined. Only the manifest chunks whose extent or checksum moved are read; the
// manifests are what the standby checks the result against, so a chunk they agree on
// is the base's on both hosts.
func diffBlocks(basePath, newPath string, prev, cur checkpoint.FileSum) ([]Range, error) {
	var stale []int
	for i := range cur.XXH3 {
		off := int64(i) * checkpoint.ChunkSize
		end := min(off+checkpoint.ChunkSize, cur.Size)
		if i >= len(prev.XXH3) || min(off+checkpoint.ChunkSize, prev.Size) != end || prev.XXH3[i] != cur.XXH3[i] {
			stale = append(stale, i)
		}
	}
	if len(stale) == 0 {
		return nil, nil
	}
	nf, err := os.Open(newPath)
	if err != nil {
		return nil, err
	}
	defer nf.Close()
	bf, err := os.Open(basePath)
	if err != nil {
		return nil, err
	}
	defer bf.Close()
	nb, bb := make([]byte, comparePiece), make([]byte, comparePiece)
	var out []Range
	for _, i := range stale {
		off := int64(i) * checkpoint.ChunkSize
		end := min(off+checkpoint.ChunkSize, cur.Size)
		for ; off < end; off += comparePiece {
			n := min(comparePiece, end-off)
			if err := readAt(nf, nb[:n], off); err != nil {
				return nil, err
			}
			m := max(0, min(n, prev.Size-off))
			if err := readAt(bf, bb[:m], off); err != nil {
				return nil, err
			}
			out = changedBlocks(out, nb[:n], bb[:m], off)
		}
	}
	return out, nil
}

func readAt(f *os.File, b []byte, off int64) error {
	if _, err := f.ReadAt(b, off); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return fmt.Errorf("read %q at %d: %w", f.Name(), off, err)
	}
	return nil
}

// changedBlocks appends to out the blocks of cur (the new file's bytes at off, off a
// multiple of FileBlockSize) that differ from prev (the base's bytes at the same
// offset, shorter where the base ends), joining a block to the range before it.
func changedBlocks(out []Range, cur, prev []byte, off int64) []Range {
	for b := 0; b < len(cur); b += FileBlockSize {
		e := min(b+FileBlockSize, len(cur))
		if e <= len(prev) && bytes.Equal(cur[b:e], prev[b:e]) {
			continue
		}
		at := off + int64(b)
		if n := len(out); n > 0 && out[n-1].Off+out[n-1].Len == at {
			out[n-1].Len += int64(e - b)
			continue
		}
		out = append(out, Range{Off: at, Len: int64(e - b)})
	}
	return out
}

// syncedBlocks picks the changed files of m that are the program's synced state files
// with a version in the base, and describes each as its changed blocks. A file whose
// blocks cannot be found (the base's copy is gone here) is left to travel whole.
func syncedBlocks(base Base, dir string, m *checkpoint.Manifest, changed map[string]bool) []FileBlocks {
	var out []FileBlocks
	for _, s := range m.Synced {
		if !changed[s.Name] || base.Dir == "" {
			continue
		}
		cur, ok := m.File(s.Name)
		if !ok {
			continue
		}
		prev, ok := base.Manifest.File(s.Name)
		if !ok {
			continue
		}
		ranges, err := diffBlocks(filepath.Join(base.Dir, s.Name), filepath.Join(dir, s.Name), prev, cur)
		if err != nil {
			continue
		}
		out = append(out, FileBlocks{Name: s.Name, Size: cur.Size, Mode: s.Mode, Ranges: ranges})
	}
	return out
}

// sendBlocks sends one file's changed blocks, read from dir, in FileDelta frames of up
// to size bytes of data; a file with no changed block (cut short, or changed back) is
// one FileDelta without blocks. It returns the data bytes sent.
func sendBlocks(dir string, fb FileBlocks, size int, put func(frame.Payload) error) (int64, error) {
	f, err := os.Open(filepath.Join(dir, fb.Name))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 0, size)
	p := &frame.FileDelta{Path: fb.Name, Size: uint64(fb.Size), Mode: fb.Mode}
	var sent int64
	flush := func() error {
		err := put(p)
		p.Blocks, buf = p.Blocks[:0], buf[:0]
		return err
	}
	for _, r := range fb.Ranges {
		for off, end := r.Off, r.Off+r.Len; off < end; {
			if len(buf) == cap(buf) {
				if err := flush(); err != nil {
					return sent, err
				}
			}
			n := min(int64(cap(buf)-len(buf)), end-off)
			data := buf[len(buf) : len(buf)+int(n)]
			if err := readAt(f, data, off); err != nil {
				return sent, err
			}
			buf = buf[:len(buf)+int(n)]
			p.Blocks = append(p.Blocks, frame.Block{Offset: uint64(off), Data: data})
			off += n
			sent += n
		}
	}
	if len(p.Blocks) > 0 || sent == 0 {
		return sent, flush()
	}
	return sent, nil
}

package standby

import (
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/transport/frame"
)

// spillName is the page data of an epoch in flight, in its pending directory. It
// starts with a dot, so it is never taken for an image, and is removed before the
// set is checked against its manifest.
const spillName = ".pages.spill"

// writeBackEvery: written data is pushed to disk and dropped from the page cache in
// steps of this size, so the page cache a peer fills is bounded too (in a memory
// cgroup, dirty page cache counts as the standby's memory).
const writeBackEvery = 32 << 20

// spill is an append-only file of page data. The commit maps it read-only, so
// what it holds is file-backed memory the kernel can drop and read back.
type spill struct {
	f        *os.File
	off      int64
	unsynced int64
	runs     []spillRun
}

// spillRun is where PageRun run of page delta frame sits in the spill.
type spillRun struct {
	frame, run int
	off, n     int64
}

func newSpill(dir string) (*spill, error) {
	f, err := os.OpenFile(filepath.Join(dir, spillName), os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	return &spill{f: f}, nil
}

func (sp *spill) write(data []byte) (int64, error) {
	off := sp.off
	if _, err := sp.f.WriteAt(data, off); err != nil {
		return 0, err
	}
	sp.off += int64(len(data))
	if sp.unsynced += int64(len(data)); sp.unsynced >= writeBackEvery {
		writtenBack(sp.f, sp.off-sp.unsynced, sp.unsynced)
		sp.unsynced = 0
	}
	return off, nil
}

// load returns pages with every run's Data in the mapped spill; release unmaps it.
// A nil spill (no page data travelled) leaves pages as they are.
func (sp *spill) load(pages []frame.PageDelta) ([]frame.PageDelta, func(), error) {
	if sp == nil || sp.off == 0 {
		return pages, func() {}, nil
	}
	mem, err := unix.Mmap(int(sp.f.Fd()), 0, int(sp.off), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	out := make([]frame.PageDelta, len(pages))
	for i, p := range pages {
		out[i] = p
		out[i].Pages = append([]frame.PageRun(nil), p.Pages...)
	}
	for _, r := range sp.runs {
		out[r.frame].Pages[r.run].Data = mem[r.off : r.off+r.n : r.off+r.n]
	}
	return out, func() { _ = unix.Munmap(mem) }, nil
}

// close removes the spill; its mapping, if any, stays valid until released.
func (sp *spill) close() {
	if sp == nil {
		return
	}
	_ = os.Remove(sp.f.Name())
	_ = sp.f.Close()
}

// writtenBack starts writing [off, off+n) of f to disk, waits for it and drops it
// from the page cache, every writeBackEvery bytes of a file: the fsync at commit
// still makes the set durable, this only keeps a large transfer from piling up
// dirty memory. Failures are left for that fsync to report.
func writtenBack(f *os.File, off, n int64) {
	end := off + n
	step := off / writeBackEvery
	if end/writeBackEvery == step {
		return
	}
	from := step * writeBackEvery
	to := (end / writeBackEvery) * writeBackEvery
	fd := int(f.Fd())
	_ = unix.SyncFileRange(fd, from, to-from, unix.SYNC_FILE_RANGE_WAIT_BEFORE|unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER)
	_ = unix.Fadvise(fd, from, to-from, unix.FADV_DONTNEED)
}

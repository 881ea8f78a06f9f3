package delta

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/internal/criutest"
)

// dirtier is one running dirtier program (internal/dirtier) for one test.
type dirtier struct {
	*criutest.Prog
	t testing.TB
}

// startDirtier starts the dirtier with a heap of mib MiB, dirtying n pages per round;
// it is killed when the test ends.
func startDirtier(t testing.TB, mib, n int) *dirtier {
	t.Helper()
	return &dirtier{Prog: criutest.Dirtier(t, mib, n), t: t}
}

// dump checkpoints the program into a new directory, leaving it running. CRIU's log
// goes elsewhere, so the directory holds the image set only.
func (d *dirtier) dump(dir string) {
	d.t.Helper()
	must(d.t, os.MkdirAll(dir, 0o700))
	work := d.t.TempDir()
	if _, err := (&checkpoint.Criu{}).Dump(checkpoint.Options{ImagesDir: dir, WorkDir: work, Pid: d.Pid, LeaveRunning: true}); err != nil {
		d.t.Fatalf("dump: %v", err)
	}
}

func dirBytes(t testing.TB, dir string) int64 {
	ents, err := os.ReadDir(dir)
	must(t, err)
	var n int64
	for _, e := range ents {
		info, err := e.Info()
		must(t, err)
		n += info.Size()
	}
	return n
}

// TestRealDumps diffs two real dumps of a program that dirtied a known number of pages
// between them, rebuilds the second from the first and the delta, and restores the
// program from the rebuilt set.
func TestRealDumps(t *testing.T) {
	criutest.Require(t, "gcc")
	const n = 256
	p := startDirtier(t, 100, n)
	root := t.TempDir()
	a, b, c := filepath.Join(root, "a"), filepath.Join(root, "b"), filepath.Join(root, "c")
	p.dump(a)
	p.MustDirty()
	p.dump(b)

	checkDecoderAgreesWithCrit(t, b)

	idx, err := BuildIndex(a)
	must(t, err)
	d, _, err := Diff(idx, b, 1, 2)
	must(t, err)
	shipped, copied := d.PageCounts()
	var pageBytes, fileBytes int64
	for _, pm := range d.Pagemaps {
		for _, r := range pm.Pages {
			pageBytes += int64(len(r.Data))
		}
	}
	for _, f := range d.Files {
		fileBytes += int64(len(f.Data))
	}
	t.Logf("dirtied %d pages; delta ships %d pages (%d KiB) and %d files (%d KiB), copies %d pages; the full set is %d KiB",
		n, shipped, pageBytes>>10, len(d.Files), fileBytes>>10, copied, dirBytes(t, b)>>10)
	if shipped < n {
		t.Errorf("delta ships %d pages, fewer than the %d dirtied", shipped, n)
	}
	if limit := int64(n*PageSize*11/10) + 64<<10; pageBytes > limit {
		t.Errorf("delta ships %d bytes of pages, more than %d", pageBytes, limit)
	}
	if fileBytes > 256<<10 {
		t.Errorf("delta ships %d bytes of whole files, want them small", fileBytes)
	}

	must(t, os.Mkdir(c, 0o700))
	must(t, Apply(a, d, c))
	sameSet(t, b, c)

	t.Run("full delta onto an empty base", func(t *testing.T) {
		full, _, err := Diff(nil, b, 0, 2)
		must(t, err)
		if s, c := full.PageCounts(); c != 0 || s != shipped+copied {
			t.Errorf("full delta ships %d pages and copies %d, want %d and 0", s, c, shipped+copied)
		}
		out := t.TempDir()
		must(t, Apply(t.TempDir(), full, out))
		sameSet(t, b, out)
	})

	t.Run("a base without the copied pages", func(t *testing.T) {
		out := t.TempDir()
		must(t, os.WriteFile(filepath.Join(out, "callers-file"), nil, 0o600))
		if err := Apply(t.TempDir(), d, out); !errors.Is(err, ErrBadBase) {
			t.Errorf("Apply onto an empty base = %v, want ErrBadBase", err)
		}
		onlyCallersFile(t, out)
	})

	// The rebuilt set restores: the program comes back and does its next round.
	p.Kill()
	pid := criutest.Restore(t, c)
	restored := &dirtier{Prog: p.Restored(pid), t: t}
	if pid != p.Pid {
		t.Errorf("restored pid %d, dumped %d", pid, p.Pid)
	}
	restored.MustDirty()
}

// checkDecoderAgreesWithCrit compares the present pages decodePagemap finds with what
// crit itself decodes from every pagemap of a real set.
func checkDecoderAgreesWithCrit(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range ents {
		if !isPagemapName(e.Name()) {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		must(t, err)
		img, err := crit.New(f, nil, "", false, false).Decode(&pagemap.PagemapEntry{})
		f.Close()
		must(t, err)
		var want []uint64
		for _, ce := range img.Entries[1:] {
			pe := ce.Message.(*pagemap.PagemapEntry)
			if pe.GetFlags()&pePresent == 0 {
				continue
			}
			for i := uint64(0); i < pe.GetNrPages(); i++ {
				want = append(want, pe.GetVaddr()+i*PageSize)
			}
		}
		got, _, err := decodePagemapIn(dir, e.Name())
		must(t, err)
		if got.pagesID != img.Entries[0].Message.(*pagemap.PagemapHead).GetPagesId() || !equalU64(got.present, want) {
			t.Errorf("%s: decoded %d present pages, crit %d", e.Name(), len(got.present), len(want))
		}
		if len(want) == 0 {
			t.Errorf("%s: crit finds no present pages", e.Name())
		}
	}
}

func equalU64(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A real full dump has nothing in a parent: Materialize leaves every file of it as
// CRIU wrote it, and counts its pages as dumped (CRIU marks them present and lazy).
func TestMaterializeLeavesARealFullDumpAlone(t *testing.T) {
	criutest.Require(t, "gcc")
	p := startDirtier(t, 20, 16)
	dir := filepath.Join(t.TempDir(), "full")
	p.dump(dir)
	before := snapshot(t, dir)
	st, err := Materialize(dir, filepath.Join(t.TempDir(), "no-parent"), nil)
	if err != nil {
		t.Fatalf("Materialize of a full dump: %v", err)
	}
	if st.FromParent != 0 || st.Dumped < 20<<20/PageSize {
		t.Errorf("stats = %+v, want no page from a parent and the 20 MiB heap dumped", st)
	}
	if !sameFiles(before, snapshot(t, dir)) {
		t.Error("Materialize changed a full dump")
	}
}

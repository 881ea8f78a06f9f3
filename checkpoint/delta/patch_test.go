package delta

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// WritePages rebuilds the pages files byte for byte, writes nothing else, and says
// truly which ranges hold the base's bytes at the same offsets.
func TestWritePages(t *testing.T) {
	a, b, d := synthDelta(t)
	out := t.TempDir()
	for _, f := range d.Files { // what the receiver already has from the stream
		must(t, os.WriteFile(filepath.Join(out, f.Name), f.Data, 0o600))
	}
	files, err := WritePages(a, d, out)
	must(t, err)
	sameSet(t, b, out)
	want := []PagesFile{
		// pages 0, 2, 4 and 5 of pages-3.img are where they were in pages-1.img.
		{Name: "pages-3.img", Base: "pages-1.img", Same: []Span{{0, PageSize}, {2 * PageSize, PageSize}, {4 * PageSize, 2 * PageSize}}},
		// the shared memory lost its first page: what is copied moved down a page.
		{Name: "pages-4.img", Base: "pages-2.img"},
	}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("WritePages = %+v, want %+v", files, want)
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(out, f.Name))
		must(t, err)
		base, err := os.ReadFile(filepath.Join(a, f.Base))
		must(t, err)
		for _, s := range f.Same {
			if !bytes.Equal(got[s.Off:s.Off+s.Len], base[s.Off:s.Off+s.Len]) {
				t.Errorf("%s: span %+v is not the base's", f.Name, s)
			}
		}
	}

	full, _, err := Diff(nil, b, 0, 5)
	must(t, err)
	out2 := t.TempDir()
	files, err = WritePages("", full, out2)
	must(t, err)
	for _, f := range files {
		if f.Base != "" || f.Same != nil {
			t.Errorf("full delta: %+v names a base", f)
		}
	}
}

func TestWritePagesRefusesAndCleansUp(t *testing.T) {
	a, _, d := synthDelta(t)

	truncated := t.TempDir()
	baseSet(t, truncated)
	must(t, os.Truncate(filepath.Join(truncated, "pages-1.img"), 3*PageSize))
	out := t.TempDir()
	must(t, os.WriteFile(filepath.Join(out, "callers-file"), []byte("x"), 0o600))
	if _, err := WritePages(truncated, d, out); !errors.Is(err, ErrBadBase) {
		t.Errorf("WritePages on a cut base = %v, want ErrBadBase", err)
	}
	onlyCallersFile(t, out)

	// A file already there is never overwritten, and what was written is removed.
	must(t, os.WriteFile(filepath.Join(out, "pages-4.img"), []byte("callers"), 0o600))
	if _, err := WritePages(a, d, out); !errors.Is(err, os.ErrExist) {
		t.Errorf("WritePages over a file = %v, want ErrExist", err)
	}
	ents, err := os.ReadDir(out)
	must(t, err)
	if len(ents) != 2 {
		t.Errorf("out dir holds %d files after a failed WritePages, want the caller's two", len(ents))
	}
	if data, _ := os.ReadFile(filepath.Join(out, "pages-4.img")); string(data) != "callers" {
		t.Errorf("caller's file changed to %q", data)
	}
}

// Three epochs; the third is written over the first one's pages files: only pages
// that changed in the second or the third epoch, or moved, are written.
func TestWritePagesReusing(t *testing.T) {
	ids := map[string]uint32{"pagemap-10.img": 1, "pagemap-shmem-77.img": 2}
	set := func(pm10, shm []entry) string {
		dir := t.TempDir()
		writeSet(t, dir, map[string][]entry{"pagemap-10.img": pm10, "pagemap-shmem-77.img": shm}, ids, map[string]string{"core-10.img": "core"})
		return dir
	}
	older := set([]entry{{vaddr: 0x10000, n: 4, flags: present, fill: []byte{1, 2, 3, 4}}, {vaddr: 0x40000, n: 2, flags: present, fill: []byte{5, 6}}},
		[]entry{{vaddr: 0, n: 3, flags: present, fill: []byte{7, 8, 9}}})
	base := set([]entry{{vaddr: 0x10000, n: 4, flags: present, fill: []byte{1, 22, 3, 4}}, {vaddr: 0x40000, n: 2, flags: present, fill: []byte{5, 6}}},
		[]entry{{vaddr: 0, n: 3, flags: present, fill: []byte{7, 8, 9}}})
	next := set([]entry{{vaddr: 0x10000, n: 4, flags: present, fill: []byte{1, 22, 33, 4}}, {vaddr: 0x40000, n: 2, flags: present, fill: []byte{50, 6}}},
		[]entry{{vaddr: 0x1000, n: 2, flags: present, fill: []byte{8, 9}}}) // first page gone: the rest moved
	idx1, err := BuildIndex(older)
	must(t, err)
	d1, idx2, err := Diff(idx1, base, 1, 2)
	must(t, err)
	d2, _, err := Diff(idx2, next, 2, 3)
	must(t, err)
	unchanged := map[string][]CopyRun{}
	for _, pm := range d1.Pagemaps {
		unchanged[pm.Pagemap] = pm.Copies
	}
	pristine := map[string][]byte{}
	for _, name := range []string{"pages-1.img", "pages-2.img"} {
		pristine[name], err = os.ReadFile(filepath.Join(older, name))
		must(t, err)
	}

	out := t.TempDir()
	for _, f := range d2.Files {
		must(t, os.WriteFile(filepath.Join(out, f.Name), f.Data, 0o600))
	}
	files, err := WritePagesReusing(base, d2, out, &Reuse{Dir: older, Unchanged: unchanged})
	must(t, err)
	sameSet(t, next, out)
	want := []PagesFile{
		// pages 0, 3 and 5 changed in neither epoch and did not move.
		{Name: "pages-1.img", Base: "pages-1.img", Reused: true, Same: []Span{{0, PageSize}, {3 * PageSize, PageSize}, {5 * PageSize, PageSize}}},
		{Name: "pages-2.img", Base: "pages-2.img", Reused: true},
	}
	if !reflect.DeepEqual(files, want) {
		t.Errorf("WritePagesReusing = %+v, want %+v", files, want)
	}
	for _, f := range files {
		got, err := os.ReadFile(filepath.Join(out, f.Name))
		must(t, err)
		for _, s := range f.Same {
			if !bytes.Equal(got[s.Off:s.Off+s.Len], pristine[f.Base][s.Off:s.Off+s.Len]) {
				t.Errorf("%s: span %+v is not the older file's", f.Name, s)
			}
		}
		if _, err := os.Stat(filepath.Join(older, f.Base)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("older %s was not moved: %v", f.Base, err)
		}
	}
}

// An older pages file linked from elsewhere (another set) is never written over.
func TestWritePagesReusingLeavesLinkedFiles(t *testing.T) {
	a, b, d := synthDelta(t)
	older := t.TempDir()
	baseSet(t, older)
	other := filepath.Join(t.TempDir(), "elsewhere")
	must(t, os.Link(filepath.Join(older, "pages-1.img"), other))
	before, err := os.ReadFile(other)
	must(t, err)
	out := t.TempDir()
	for _, f := range d.Files {
		must(t, os.WriteFile(filepath.Join(out, f.Name), f.Data, 0o600))
	}
	unchanged := map[string][]CopyRun{"pagemap-10.img": {{0x10000, 4}, {0x40000, 2}}, "pagemap-shmem-77.img": {{0, 3}}}
	files, err := WritePagesReusing(a, d, out, &Reuse{Dir: older, Unchanged: unchanged})
	must(t, err)
	sameSet(t, b, out)
	if files[0].Reused || files[0].Base != "pages-1.img" {
		t.Errorf("linked file reused: %+v", files[0])
	}
	if !files[1].Reused {
		t.Errorf("unlinked file not reused: %+v", files[1])
	}
	after, err := os.ReadFile(other)
	must(t, err)
	if !bytes.Equal(before, after) {
		t.Error("a linked older pages file was written over")
	}
}

func TestDiffExceptLeavesFilesOut(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	baseSet(t, a)
	nextSet(t, b)
	idx, err := BuildIndex(a)
	must(t, err)
	d, _, err := DiffExcept(idx, b, 4, 5, func(name string) bool { return name == "core-10.img" || name == "pagemap-10.img" })
	must(t, err)
	var names []string
	for _, f := range d.Files {
		names = append(names, f.Name)
	}
	if want := []string{"mm-10.img", "pagemap-10.img", "pagemap-odd.img", "pagemap-shmem-77.img"}; !reflect.DeepEqual(names, want) {
		t.Errorf("files = %q, want %q (a pagemap is never left out)", names, want)
	}
	if len(d.Pagemaps) != 2 {
		t.Errorf("%d pagemap deltas, want 2", len(d.Pagemaps))
	}
}

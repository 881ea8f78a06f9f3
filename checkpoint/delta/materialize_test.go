package delta

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ftrun/ftrun/checkpoint"
)

// The flags CRIU writes, spelled out as numbers (criu/include/pagemap.h), so a test
// does not lean on the constants it checks.
var (
	inParent    = u32(1)
	presentLazy = u32(4 | 2)
	hole        = u32(0)
)

// writeChain writes a standalone parent set and an incremental child of it, and
// returns their directories and the pages the child stands for, in order.
func writeChain(t *testing.T, root string) (parent, child string, want []byte) {
	t.Helper()
	parent, child = filepath.Join(root, "parent"), filepath.Join(root, "child")
	must(t, os.MkdirAll(parent, 0o700))
	must(t, os.MkdirAll(child, 0o700))
	writeSet(t, parent, map[string][]entry{"pagemap-7.img": {
		{vaddr: 0x1000, n: 2, flags: present, fill: []byte{1, 2}},
		{vaddr: 0x10000, n: 3, flags: presentLazy, fill: []byte{3, 4, 5}},
	}}, map[string]uint32{"pagemap-7.img": 1}, map[string]string{"core-7.img": "old"})
	writeSet(t, child, map[string][]entry{"pagemap-7.img": {
		{vaddr: 0x1000, n: 1, flags: inParent},
		{vaddr: 0x2000, n: 1, flags: present, fill: []byte{9}},
		{vaddr: 0x3000, n: 1, flags: hole},
		{vaddr: 0x10000, n: 1, flags: presentLazy, fill: []byte{8}},
		{vaddr: 0x11000, n: 2, flags: inParent},
	}}, map[string]uint32{"pagemap-7.img": 3}, map[string]string{"core-7.img": "new"})
	must(t, os.Symlink("../parent", filepath.Join(child, ParentLink)))
	for _, b := range []byte{1, 9, 8, 4, 5} {
		want = append(want, page(b)...)
	}
	return parent, child, want
}

// snapshot is every file of dir with its bytes.
func snapshot(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	must(t, err)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		must(t, err)
		out[e.Name()] = b
	}
	return out
}

func sameFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func TestMaterialize(t *testing.T) {
	parent, child, want := writeChain(t, t.TempDir())
	before := snapshot(t, parent)
	st, err := Materialize(child, parent, nil)
	if err != nil {
		t.Fatal(err)
	}
	if st.Dumped != 2 || st.FromParent != 3 {
		t.Errorf("stats = %+v, want 2 dumped, 3 from the parent", st)
	}
	if st.Bytes < 5*PageSize || st.Bytes >= 6*PageSize {
		t.Errorf("wrote %d bytes, want the 5 pages of the standalone file and the pagemap", st.Bytes)
	}
	pm, _, err := decodePagemapIn(child, "pagemap-7.img")
	if err != nil {
		t.Fatalf("the standalone pagemap does not decode as a full one: %v", err)
	}
	if wantPresent := []uint64{0x1000, 0x2000, 0x10000, 0x11000, 0x12000}; !slices.Equal(pm.present, wantPresent) {
		t.Errorf("present = %#x, want %#x", pm.present, wantPresent)
	}
	got, err := os.ReadFile(filepath.Join(child, "pages-3.img"))
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Errorf("standalone pages differ from what a full dump holds (%d bytes, want %d)", len(got), len(want))
	}
	if _, err := os.Lstat(filepath.Join(child, ParentLink)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the parent link is still there: %v", err)
	}
	if ents, _ := filepath.Glob(filepath.Join(child, "*.full")); len(ents) != 0 {
		t.Errorf("temporary files left: %v", ents)
	}
	if !sameFiles(before, snapshot(t, parent)) {
		t.Error("the parent set changed")
	}
	// Done twice, the second finds nothing in a parent and changes nothing.
	again := snapshot(t, child)
	if _, err := Materialize(child, "/nonexistent", nil); err != nil || !sameFiles(again, snapshot(t, child)) {
		t.Errorf("a standalone set is not left alone: %v", err)
	}
}

// A parent that does not explain the child is refused, whatever is wrong with it, and
// the parent is never written.
func TestMaterializeRefusesABadParent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		spoil func(t *testing.T, parent, child string)
		want  error
	}{
		{"parent lacks a page", func(t *testing.T, parent, _ string) {
			writeSet(t, parent, map[string][]entry{"pagemap-7.img": {{vaddr: 0x1000, n: 1, flags: present, fill: []byte{1}}}}, map[string]uint32{"pagemap-7.img": 1}, nil)
		}, ErrChain},
		{"parent itself incremental", func(t *testing.T, parent, _ string) {
			writeSet(t, parent, map[string][]entry{"pagemap-7.img": {{vaddr: 0x1000, n: 2, flags: present, fill: []byte{1, 2}}, {vaddr: 0x10000, n: 3, flags: inParent}}}, map[string]uint32{"pagemap-7.img": 1}, nil)
		}, ErrChain},
		{"parent pages file cut short", func(t *testing.T, parent, _ string) {
			must(t, os.Truncate(filepath.Join(parent, "pages-1.img"), 3*PageSize))
		}, ErrChain},
		{"parent gone", func(t *testing.T, parent, _ string) {
			must(t, os.RemoveAll(parent))
			must(t, os.Mkdir(parent, 0o700))
		}, ErrChain},
		{"child pagemap corrupt", func(t *testing.T, _, child string) {
			b, err := os.ReadFile(filepath.Join(child, "pagemap-7.img"))
			must(t, err)
			must(t, os.WriteFile(filepath.Join(child, "pagemap-7.img"), b[:len(b)-3], 0o600))
		}, checkpoint.ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parent, child, _ := writeChain(t, t.TempDir())
			tc.spoil(t, parent, child)
			before := snapshot(t, parent)
			_, err := Materialize(child, parent, nil)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Materialize = %v, want %v", err, tc.want)
			}
			if !sameFiles(before, snapshot(t, parent)) {
				t.Error("the parent set changed")
			}
		})
	}
}

// On a full disk Materialize says so in the error the supervisor reports as "disk
// full", and the parent is untouched.
func TestMaterializeDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v %s", err, out)
		}
	})
	parent := filepath.Join(t.TempDir(), "parent")
	child := filepath.Join(mnt, "child")
	must(t, os.MkdirAll(parent, 0o700))
	must(t, os.MkdirAll(child, 0o700))
	big := make([]byte, 512) // 2 MiB of pages in the parent, onto 1 MiB
	writeSet(t, parent, map[string][]entry{"pagemap-7.img": {{vaddr: 0x100000, n: 512, flags: present, fill: big}}}, map[string]uint32{"pagemap-7.img": 1}, nil)
	writeSet(t, child, map[string][]entry{"pagemap-7.img": {{vaddr: 0x100000, n: 512, flags: inParent}}}, map[string]uint32{"pagemap-7.img": 2}, nil)
	before := snapshot(t, parent)
	if _, err := Materialize(child, parent, nil); !errors.Is(err, checkpoint.ErrNoSpace) {
		t.Fatalf("Materialize onto a full disk = %v, want ErrNoSpace", err)
	}
	if !sameFiles(before, snapshot(t, parent)) {
		t.Error("the parent set changed")
	}
}

// writeRetired writes a standalone set in dir whose pagemap-7.img lists layout (all
// at one page each) with the fill bytes fills.
func writeRetired(t *testing.T, dir string, layout []uint64, fills []byte) {
	t.Helper()
	must(t, os.MkdirAll(dir, 0o700))
	var entries []entry
	for i, v := range layout {
		entries = append(entries, entry{vaddr: v, n: 1, flags: present, fill: []byte{fills[i]}})
	}
	writeSet(t, dir, map[string][]entry{"pagemap-7.img": entries}, map[string]uint32{"pagemap-7.img": 5}, nil)
}

// Over a retired set's pages file, Materialize writes only what that file does not
// hold already: the pages this dump wrote and those written since the retired set,
// each where the layout held still; what lies at another place is copied.
func TestMaterializeOverARetiredSet(t *testing.T) {
	root := t.TempDir()
	parent, child, want := writeChain(t, root)
	retired := filepath.Join(root, "retired")
	// The child's standalone layout is 0x1000 0x2000 0x10000 0x11000 0x12000.
	// 0x1000 and 0x12000 are still right in the retired file; 0x2000 and 0x10000
	// are this dump's; 0x11000 was written since (its old bytes are stale).
	writeRetired(t, retired, []uint64{0x1000, 0x2000, 0x10000, 0x11000, 0x12000}, []byte{1, 0xa, 0xb, 0xc, 5})
	before := snapshot(t, parent)
	st, err := Materialize(child, parent, &Retired{Dir: retired, Written: map[string][]CopyRun{"pagemap-7.img": {{Vaddr: 0x11000, NrPages: 1}}}})
	if err != nil {
		t.Fatal(err)
	}
	if st.Dumped != 2 || st.FromParent != 1 || st.Kept != 2 {
		t.Errorf("stats = %+v, want 2 dumped, 1 from the parent, 2 kept", st)
	}
	if st.Bytes < 3*PageSize || st.Bytes >= 4*PageSize {
		t.Errorf("wrote %d bytes, want the 3 pages not kept and the pagemap", st.Bytes)
	}
	if w := st.Written["pagemap-7.img"]; !slices.Equal(w, []CopyRun{{0x2000, 1}, {0x10000, 1}}) {
		t.Errorf("written = %+v, want the two dumped pages", w)
	}
	got, err := os.ReadFile(filepath.Join(child, "pages-3.img"))
	must(t, err)
	if !bytes.Equal(got, want) {
		t.Errorf("standalone pages over the retired file differ from what a full dump holds")
	}
	if _, err := os.Lstat(filepath.Join(retired, "pages-5.img")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the retired pages file was not moved: %v", err)
	}
	if !sameFiles(before, snapshot(t, parent)) {
		t.Error("the parent set changed")
	}
}

// A retired file whose layout moved, one longer than the new file, and one linked
// from another set: each gives the same bytes as a copy, and the linked one is not
// touched.
func TestMaterializeOverAnUnfitRetiredSet(t *testing.T) {
	for _, tc := range []struct {
		name    string
		present []uint64
		fills   []byte
		linked  bool
		kept    uint64
	}{
		{"moved", []uint64{0x2000, 0x3000, 0x1000, 0x12000, 0x11000}, []byte{9, 1, 1, 5, 4}, false, 0},
		{"longer", []uint64{0x1000, 0x2000, 0x10000, 0x11000, 0x12000, 0x13000, 0x14000}, []byte{1, 2, 3, 4, 5, 6, 7}, false, 3},
		{"linked", []uint64{0x1000, 0x2000, 0x10000, 0x11000, 0x12000}, []byte{1, 2, 3, 4, 5}, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			parent, child, want := writeChain(t, root)
			retired := filepath.Join(root, "retired")
			writeRetired(t, retired, tc.present, tc.fills)
			other := filepath.Join(root, "other-pages.img")
			if tc.linked {
				must(t, os.Link(filepath.Join(retired, "pages-5.img"), other))
			}
			st, err := Materialize(child, parent, &Retired{Dir: retired, Written: map[string][]CopyRun{"pagemap-7.img": nil}})
			if err != nil {
				t.Fatal(err)
			}
			if st.Kept != tc.kept {
				t.Errorf("kept %d pages, want %d", st.Kept, tc.kept)
			}
			got, err := os.ReadFile(filepath.Join(child, "pages-3.img"))
			must(t, err)
			if !bytes.Equal(got, want) {
				t.Errorf("standalone pages differ from what a full dump holds (%d bytes, want %d)", len(got), len(want))
			}
			if tc.linked {
				b, err := os.ReadFile(other)
				must(t, err)
				var orig []byte
				for _, f := range tc.fills {
					orig = append(orig, page(f)...)
				}
				if !bytes.Equal(b, orig) {
					t.Error("a pages file linked from elsewhere was written over")
				}
			}
		})
	}
}

// A dump that left in its parent a page the parent lacks is refused also where a
// retired file holds that page at its place: the page there may have been dropped
// since, and its old bytes are not the program's.
func TestMaterializeOverARetiredSetRefusesABadParent(t *testing.T) {
	root := t.TempDir()
	parent, child, _ := writeChain(t, root)
	// The parent loses 0x12000 (the last of its second run).
	writeSet(t, parent, map[string][]entry{"pagemap-7.img": {
		{vaddr: 0x1000, n: 2, flags: present, fill: []byte{1, 2}},
		{vaddr: 0x10000, n: 2, flags: presentLazy, fill: []byte{3, 4}},
	}}, map[string]uint32{"pagemap-7.img": 1}, nil)
	retired := filepath.Join(root, "retired")
	writeRetired(t, retired, []uint64{0x1000, 0x2000, 0x10000, 0x11000, 0x12000}, []byte{1, 2, 3, 4, 5})
	_, err := Materialize(child, parent, &Retired{Dir: retired, Written: map[string][]CopyRun{"pagemap-7.img": nil}})
	if !errors.Is(err, ErrChain) {
		t.Fatalf("Materialize with a page in neither the dump nor its parent: %v, want ErrChain", err)
	}
}

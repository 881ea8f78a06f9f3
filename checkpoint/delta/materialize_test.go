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
	st, err := Materialize(child, parent)
	if err != nil {
		t.Fatal(err)
	}
	if st.Dumped != 2 || st.FromParent != 3 {
		t.Errorf("stats = %+v, want 2 dumped, 3 from the parent", st)
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
	if _, err := Materialize(child, "/nonexistent"); err != nil || !sameFiles(again, snapshot(t, child)) {
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
			_, err := Materialize(child, parent)
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
	if _, err := Materialize(child, parent); !errors.Is(err, checkpoint.ErrNoSpace) {
		t.Fatalf("Materialize onto a full disk = %v, want ErrNoSpace", err)
	}
	if !sameFiles(before, snapshot(t, parent)) {
		t.Error("the parent set changed")
	}
}

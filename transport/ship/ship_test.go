package ship

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/frame"
)

func TestSplitPagesKeepsEveryPageInOrder(t *testing.T) {
	page := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, frame.PageSize) }
	var big []byte
	for i := range 40 {
		big = append(big, page(i)...)
	}
	in := frame.PageDelta{
		Pagemap:  "pagemap-1.img",
		Pages:    []frame.PageRun{{Vaddr: 0x10000, Data: big}, {Vaddr: 0x100000, Data: page(99)}},
		CopyRuns: []frame.CopyRun{{Vaddr: 0x200000, NrPages: 3}},
	}
	for _, max := range []int{1, 5 * frame.PageSize, 64 << 10, 16 << 20} {
		out := splitPages(in, max)
		var got []byte
		var copies []frame.CopyRun
		next := uint64(0x10000)
		for i, p := range out {
			b, err := p.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if max >= 64<<10 && len(b) > max {
				t.Errorf("max %d: piece %d is %d bytes", max, i, len(b))
			}
			if p.Pagemap != in.Pagemap {
				t.Fatalf("piece %d names %q", i, p.Pagemap)
			}
			copies = append(copies, p.CopyRuns...)
			for _, r := range p.Pages {
				if r.Vaddr != next && r.Vaddr != 0x100000 {
					t.Fatalf("max %d: run at %#x, expected %#x", max, r.Vaddr, next)
				}
				next = r.Vaddr + uint64(len(r.Data))
				got = append(got, r.Data...)
			}
		}
		if want := append(append([]byte(nil), big...), page(99)...); !bytes.Equal(got, want) {
			t.Errorf("max %d: %d bytes of pages out, %d in", max, len(got), len(want))
		}
		if !slices.Equal(copies, in.CopyRuns) {
			t.Errorf("max %d: copy runs %v", max, copies)
		}
		if max == 16<<20 && len(out) != 1 {
			t.Errorf("a small delta was split in %d", len(out))
		}
	}
}

func TestFileDifferSendsChangedFilesOnly(t *testing.T) {
	base := &checkpoint.Manifest{Files: []checkpoint.FileSum{
		{Name: "a.img", Size: 1, XXH3: []uint64{1}},
		{Name: "b.img", Size: 1, XXH3: []uint64{2}},
		{Name: "gone.img", Size: 1, XXH3: []uint64{3}},
	}}
	m := &checkpoint.Manifest{Files: []checkpoint.FileSum{
		{Name: "a.img", Size: 1, XXH3: []uint64{1}},
		{Name: "b.img", Size: 1, XXH3: []uint64{9}},
		{Name: "new.img", Size: 0},
	}}
	d, err := FileDiffer{}.Diff(Base{Epoch: 1, Manifest: base}, "", m)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range d.Files {
		names = append(names, f.Name)
	}
	if !slices.Equal(names, []string{"b.img", "new.img"}) {
		t.Errorf("sent %v", names)
	}
}

func TestShipWithoutConnection(t *testing.T) {
	s := New(Config{Service: "x"})
	if err := s.Ship(context.Background(), 1, t.TempDir()); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Ship: %v", err)
	}
	if err := s.Heartbeat(context.Background()); !errors.Is(err, ErrNotConnected) {
		t.Errorf("Heartbeat: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Error(err)
	}
}

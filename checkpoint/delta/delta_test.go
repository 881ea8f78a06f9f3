package delta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"google.golang.org/protobuf/proto"

	"github.com/ftrun/ftrun/checkpoint"
)

func page(b byte) []byte { return bytes.Repeat([]byte{b}, PageSize) }

func TestRunsCoalesce(t *testing.T) {
	type op struct {
		copy  bool
		vaddr uint64
		fill  byte
	}
	cases := []struct {
		name       string
		ops        []op
		wantPages  []PageRun
		wantCopies []CopyRun
	}{
		{name: "nothing"},
		{
			name:      "consecutive pages make one run",
			ops:       []op{{false, 0x1000, 1}, {false, 0x2000, 2}, {false, 0x3000, 3}},
			wantPages: []PageRun{{0x1000, append(append(page(1), page(2)...), page(3)...)}},
		},
		{
			name:      "a gap starts a new run",
			ops:       []op{{false, 0x1000, 1}, {false, 0x3000, 3}},
			wantPages: []PageRun{{0x1000, page(1)}, {0x3000, page(3)}},
		},
		{
			name:       "copies coalesce the same way",
			ops:        []op{{true, 0x1000, 0}, {true, 0x2000, 0}, {true, 0x5000, 0}},
			wantCopies: []CopyRun{{0x1000, 2}, {0x5000, 1}},
		},
		{
			name:       "interleaved kinds split runs",
			ops:        []op{{true, 0x1000, 0}, {false, 0x2000, 2}, {true, 0x3000, 0}, {false, 0x4000, 4}},
			wantPages:  []PageRun{{0x2000, page(2)}, {0x4000, page(4)}},
			wantCopies: []CopyRun{{0x1000, 1}, {0x3000, 1}},
		},
		{
			name:       "a run resumes after the other kind only when contiguous",
			ops:        []op{{false, 0x1000, 1}, {true, 0x10000, 0}, {false, 0x2000, 2}},
			wantPages:  []PageRun{{0x1000, append(page(1), page(2)...)}},
			wantCopies: []CopyRun{{0x10000, 1}},
		},
		{
			name:      "a lower vaddr never joins",
			ops:       []op{{false, 0x3000, 3}, {false, 0x2000, 2}},
			wantPages: []PageRun{{0x3000, page(3)}, {0x2000, page(2)}},
		},
	}
	for _, tc := range cases {
		// arena pages: none, room for every page, room for one page only.
		for _, arena := range []int{-1, len(tc.ops), 1} {
			t.Run(fmt.Sprintf("%s/arena %d", tc.name, arena), func(t *testing.T) {
				var r runs
				if arena >= 0 {
					r.arena = make([]byte, 0, arena*PageSize)
				}
				for _, o := range tc.ops {
					if o.copy {
						r.addCopy(o.vaddr)
					} else {
						r.addPage(o.vaddr, page(o.fill))
					}
				}
				pages, copies := r.done()
				if !reflect.DeepEqual(pages, tc.wantPages) {
					t.Errorf("pages = %v, want %v", summary(pages), summary(tc.wantPages))
				}
				if !reflect.DeepEqual(copies, tc.wantCopies) {
					t.Errorf("copies = %v, want %v", copies, tc.wantCopies)
				}
			})
		}
	}
}

func TestArenaRunsDoNotOverlap(t *testing.T) {
	r := runs{arena: make([]byte, 0, 3*PageSize)}
	r.addPage(0x1000, page(1))
	r.addPage(0x5000, page(5))
	r.addPage(0x6000, page(6))
	pages, _ := r.done()
	_ = append(pages[0].Data, page(9)...)
	if pages[1].Data[0] != 5 {
		t.Errorf("appending to one run overwrote the next")
	}
	if len(pages) != 2 || len(pages[1].Data) != 2*PageSize || pages[1].Data[PageSize] != 6 {
		t.Errorf("runs = %v", summary(pages))
	}
}

func summary(rs []PageRun) [][2]uint64 {
	var s [][2]uint64
	for _, r := range rs {
		s = append(s, [2]uint64{r.Vaddr, uint64(len(r.Data) / PageSize)})
	}
	return s
}

func TestRunDoesNotAliasCallerBuffer(t *testing.T) {
	var r runs
	buf := page(1)
	r.addPage(0, buf)
	copy(buf, page(9))
	r.addPage(PageSize, buf)
	if r.pages[0].Data[0] != 1 || r.pages[0].Data[PageSize] != 9 {
		t.Errorf("run data follows the caller's reused buffer")
	}
}

func TestCopyRunSaturates(t *testing.T) {
	r := runs{copies: []CopyRun{{Vaddr: 0, NrPages: ^uint32(0)}}}
	r.addCopy(uint64(^uint32(0)) * PageSize)
	if len(r.copies) != 2 || r.copies[1].NrPages != 1 {
		t.Errorf("copies = %v, want a second run once NrPages is full", r.copies)
	}
}

func TestSources(t *testing.T) {
	cases := []struct {
		name  string
		pd    PagemapDelta
		pages int
		err   error
	}{
		{"pages and copies", PagemapDelta{Pages: []PageRun{{0x2000, append(page(1), page(2)...)}}, Copies: []CopyRun{{0x1000, 1}, {0x4000, 3}}}, 6, nil},
		{"overlap", PagemapDelta{Pages: []PageRun{{0x2000, page(1)}}, Copies: []CopyRun{{0x1000, 2}}}, 0, ErrMalformed},
		{"partial page", PagemapDelta{Pages: []PageRun{{0x2000, make([]byte, 100)}}}, 0, ErrMalformed},
		{"misaligned", PagemapDelta{Copies: []CopyRun{{0x2001, 1}}}, 0, ErrMalformed},
		{"empty copy run", PagemapDelta{Copies: []CopyRun{{0x2000, 0}}}, 0, ErrMalformed},
		// 2^32-1 pages in 12 bytes: refused by its count, before any map is made.
		{"copy run larger than the pagemap", PagemapDelta{Copies: []CopyRun{{0x1000, ^uint32(0)}}}, 0, ErrMalformed},
		{"copy run past the address space", PagemapDelta{Copies: []CopyRun{{1<<64 - PageSize, 2}}}, 0, ErrMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			want := tc.pages
			if tc.err != nil {
				want = 1
			}
			if tc.name == "copy run past the address space" {
				want = 2
			}
			src, err := sources(tc.pd, want)
			if !errors.Is(err, tc.err) || (tc.err == nil && len(src) != tc.pages) {
				t.Errorf("sources = %d pages, %v; want %d, %v", len(src), err, tc.pages, tc.err)
			}
		})
	}
}

func TestBytesAndPageCounts(t *testing.T) {
	d := &Delta{
		Files: []File{{"core-1.img", make([]byte, 10)}, {"pagemap-1.img", make([]byte, 5)}},
		Pagemaps: []PagemapDelta{
			{Pagemap: "pagemap-1.img", Pages: []PageRun{{0, make([]byte, 2*PageSize)}}, Copies: []CopyRun{{0x10000, 7}}},
			{Pagemap: "pagemap-shmem-3.img", Pages: []PageRun{{0, make([]byte, PageSize)}}},
		},
	}
	if got, want := d.Bytes(), int64(15+3*PageSize); got != want {
		t.Errorf("Bytes = %d, want %d", got, want)
	}
	if s, c := d.PageCounts(); s != 3 || c != 7 {
		t.Errorf("PageCounts = %d, %d; want 3, 7", s, c)
	}
}

// entry is one pagemap entry of a synthetic image set.
type entry struct {
	vaddr   uint64
	n       uint64
	flags   *uint32 // nil: no flags field, as in old images
	compat  bool    // count in compat_nr_pages only, as before CRIU 4
	fill    []byte  // one fill byte per present page
	inParen bool
}

func u32(v uint32) *uint32 { return &v }

var present = u32(pePresent)

// encodePagemap writes a pagemap image the way CRIU does.
func encodePagemap(t testing.TB, pagesID uint32, entries []entry) []byte {
	t.Helper()
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, magicCommon)
	b = binary.LittleEndian.AppendUint32(b, magicPagemap)
	add := func(m proto.Message) {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	add(&pagemap.PagemapHead{PagesId: proto.Uint32(pagesID)})
	for _, e := range entries {
		pe := &pagemap.PagemapEntry{Vaddr: proto.Uint64(e.vaddr), Flags: e.flags}
		if e.compat {
			pe.CompatNrPages = proto.Uint32(uint32(e.n))
		} else {
			pe.CompatNrPages = proto.Uint32(0)
			pe.NrPages = proto.Uint64(e.n)
		}
		if e.inParen {
			pe.InParent = proto.Bool(true)
		}
		add(pe)
	}
	return b
}

// writeSet writes a synthetic image set: per pagemap name, its pages id and entries,
// plus whole files.
func writeSet(t testing.TB, dir string, pagemaps map[string][]entry, ids map[string]uint32, files map[string]string) {
	t.Helper()
	for name, entries := range pagemaps {
		var pages []byte
		for _, e := range entries {
			for _, f := range e.fill {
				pages = append(pages, page(f)...)
			}
		}
		must(t, os.WriteFile(filepath.Join(dir, name), encodePagemap(t, ids[name], entries), 0o600))
		must(t, os.WriteFile(filepath.Join(dir, (&pagemapFile{pagesID: ids[name]}).pagesName()), pages, 0o600))
	}
	for name, data := range files {
		must(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestDecodePagemap(t *testing.T) {
	cases := []struct {
		name    string
		entries []entry
		want    []uint64
		wantErr bool
	}{
		{name: "CRIU 4 nr_pages", entries: []entry{{vaddr: 0x1000, n: 2, flags: present}}, want: []uint64{0x1000, 0x2000}},
		{name: "compat count", entries: []entry{{vaddr: 0x1000, n: 3, flags: present, compat: true}}, want: []uint64{0x1000, 0x2000, 0x3000}},
		{name: "no flags means present", entries: []entry{{vaddr: 0x5000, n: 1}}, want: []uint64{0x5000}},
		{name: "holes carry no data", entries: []entry{{vaddr: 0x1000, n: 1, flags: present}, {vaddr: 0x2000, n: 8, flags: u32(0)}, {vaddr: 0x10000, n: 4, flags: u32(peLazy)}, {vaddr: 0x20000, n: 1, flags: u32(pePresent | peLazy)}}, want: []uint64{0x1000, 0x20000}},
		{name: "parent pages refused", entries: []entry{{vaddr: 0x1000, n: 1, inParen: true}}, wantErr: true},
		{name: "misaligned refused", entries: []entry{{vaddr: 0x1001, n: 1, flags: present}}, wantErr: true},
		// One entry of a few bytes claiming 2^40 pages: refused by the bound, not allocated.
		{name: "2^40 pages refused", entries: []entry{{vaddr: 0x1000, n: 1 << 40, flags: present}}, wantErr: true},
		{name: "entries past the bound refused", entries: []entry{{vaddr: 0x1000, n: 1 << 19, flags: present}, {vaddr: 0x90000000, n: 1<<19 + 1, flags: present}}, wantErr: true},
		{name: "entry past the address space refused", entries: []entry{{vaddr: 1<<64 - PageSize, n: 2, flags: present}}, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pm, err := decodePagemap(encodePagemap(t, 7, tc.entries), 1<<20)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("decodePagemap = %v, want an error", pm.present)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if pm.pagesID != 7 || !reflect.DeepEqual(pm.present, tc.want) {
				t.Errorf("decodePagemap = id %d %#x, want id 7 %#x", pm.pagesID, pm.present, tc.want)
			}
		})
	}
	good := encodePagemap(t, 1, []entry{{vaddr: 0x1000, n: 1, flags: present}})
	if _, err := decodePagemap(good[:len(good)-2], 1<<20); err == nil || errors.Is(err, errNotPagemap) {
		t.Errorf("truncated pagemap: %v, want a decode error", err)
	}
	if _, err := decodePagemap([]byte("not an image"), 1<<20); !errors.Is(err, errNotPagemap) {
		t.Errorf("other magic: %v, want errNotPagemap", err)
	}
}

// synthDelta writes baseSet to a and nextSet to b and returns the delta from a to b
// (epochs 4 and 5).
func synthDelta(t *testing.T) (a, b string, d *Delta) {
	t.Helper()
	a, b = t.TempDir(), t.TempDir()
	baseSet(t, a)
	nextSet(t, b)
	idx, err := BuildIndex(a)
	must(t, err)
	d, _, err = Diff(idx, b, 4, 5)
	must(t, err)
	return a, b, d
}

// baseSet and nextSet are two epochs of a synthetic program: a process pagemap and a
// shared memory pagemap, with pages changed, added, dropped and turned into holes.
func baseSet(t testing.TB, dir string) {
	writeSet(t, dir, map[string][]entry{
		"pagemap-10.img":       {{vaddr: 0x10000, n: 4, flags: present, fill: []byte{1, 2, 3, 4}}, {vaddr: 0x40000, n: 2, flags: present, fill: []byte{5, 6}}},
		"pagemap-shmem-77.img": {{vaddr: 0, n: 3, flags: present, fill: []byte{7, 8, 9}}},
	}, map[string]uint32{"pagemap-10.img": 1, "pagemap-shmem-77.img": 2}, map[string]string{
		"core-10.img": "core v1", "mm-10.img": "mm", "dump.log": "log v1", "pagemap-odd.img": "not a pagemap",
	})
}

func nextSet(t testing.TB, dir string) {
	writeSet(t, dir, map[string][]entry{
		"pagemap-10.img": {
			{vaddr: 0x10000, n: 4, flags: present, fill: []byte{1, 22, 3, 44}}, // two changed
			{vaddr: 0x20000, n: 1, flags: u32(0)},                              // a hole: no data
			{vaddr: 0x40000, n: 3, flags: present, fill: []byte{5, 6, 10}},     // one new page
			{vaddr: 0x90000, n: 2, flags: present, fill: []byte{11, 12}},       // a new mapping
		},
		"pagemap-shmem-77.img": {{vaddr: 0x1000, n: 2, flags: present, fill: []byte{8, 9}}}, // first page gone
	}, map[string]uint32{"pagemap-10.img": 3, "pagemap-shmem-77.img": 4}, map[string]string{
		"core-10.img": "core v2", "mm-10.img": "mm", "dump.log": "log v2", checkpoint.ManifestName: "{}",
		"pagemap-odd.img": "not a pagemap",
	})
}

func TestDiffApplySynthetic(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	baseSet(t, a)
	nextSet(t, b)
	idx, err := BuildIndex(a)
	must(t, err)
	if idx.Pages() != 9 {
		t.Errorf("index of the base holds %d pages, want 9", idx.Pages())
	}
	d, next, err := Diff(idx, b, 4, 5)
	must(t, err)
	if d.Base != 4 || d.Epoch != 5 || next.Pages() != 11 {
		t.Errorf("delta base %d epoch %d, next index %d pages; want 4, 5, 11", d.Base, d.Epoch, next.Pages())
	}
	want := []PagemapDelta{
		{Pagemap: "pagemap-10.img",
			Pages:  []PageRun{{0x11000, page(22)}, {0x13000, page(44)}, {0x42000, page(10)}, {0x90000, append(page(11), page(12)...)}},
			Copies: []CopyRun{{0x10000, 1}, {0x12000, 1}, {0x40000, 2}}},
		{Pagemap: "pagemap-shmem-77.img", Copies: []CopyRun{{0x1000, 2}}},
	}
	if !reflect.DeepEqual(d.Pagemaps, want) {
		for _, pm := range d.Pagemaps {
			t.Errorf("got %s: pages %#x copies %+v", pm.Pagemap, summary(pm.Pages), pm.Copies)
		}
	}
	var names []string
	for _, f := range d.Files {
		names = append(names, f.Name)
	}
	// Logs and the manifest stay behind; a pagemap-looking file that is no pagemap travels whole.
	if wantNames := []string{"core-10.img", "mm-10.img", "pagemap-10.img", "pagemap-odd.img", "pagemap-shmem-77.img"}; !reflect.DeepEqual(names, wantNames) {
		t.Errorf("files = %q, want %q", names, wantNames)
	}

	out := t.TempDir()
	must(t, Apply(a, d, out))
	sameSet(t, b, out)

	full, _, err := Diff(nil, b, 4, 5)
	must(t, err)
	if full.Base != 0 {
		t.Errorf("full delta has base %d", full.Base)
	}
	if s, c := full.PageCounts(); s != 11 || c != 0 {
		t.Errorf("full delta ships %d pages and copies %d, want 11 and 0", s, c)
	}
	out2 := t.TempDir()
	must(t, Apply("", full, out2))
	sameSet(t, b, out2)
}

// sameSet checks that got holds exactly want's files that travel, byte for byte.
func sameSet(t testing.TB, want, got string) {
	t.Helper()
	wantEnts, err := os.ReadDir(want)
	must(t, err)
	n := 0
	for _, e := range wantEnts {
		if skipFile(e.Name()) {
			continue
		}
		n++
		w, err := os.ReadFile(filepath.Join(want, e.Name()))
		must(t, err)
		g, err := os.ReadFile(filepath.Join(got, e.Name()))
		if err != nil {
			t.Errorf("rebuilt set: %v", err)
			continue
		}
		if !bytes.Equal(w, g) {
			t.Errorf("%s differs: %d bytes, want %d", e.Name(), len(g), len(w))
		}
	}
	gotEnts, err := os.ReadDir(got)
	must(t, err)
	if len(gotEnts) != n {
		t.Errorf("rebuilt set has %d files, want %d", len(gotEnts), n)
	}
}

func TestApplyBadBase(t *testing.T) {
	a, _, d := synthDelta(t)

	// A base that lost the last page of its first mapping, which the delta copies.
	short := t.TempDir()
	writeSet(t, short, map[string][]entry{
		"pagemap-10.img":       {{vaddr: 0x10000, n: 3, flags: present, fill: []byte{1, 2, 3}}, {vaddr: 0x40000, n: 2, flags: present, fill: []byte{5, 6}}},
		"pagemap-shmem-77.img": {{vaddr: 0, n: 3, flags: present, fill: []byte{7, 8, 9}}},
	}, map[string]uint32{"pagemap-10.img": 1, "pagemap-shmem-77.img": 2}, nil)
	d.Pagemaps[0].Copies = append(d.Pagemaps[0].Copies, CopyRun{0x13000, 1})
	d.Pagemaps[0].Pages = slicesDelete(d.Pagemaps[0].Pages, 1) // 0x13000 now comes from the base
	truncated := t.TempDir()
	baseSet(t, truncated)
	must(t, os.Truncate(filepath.Join(truncated, "pages-1.img"), 3*PageSize))
	committed := t.TempDir()
	baseSet(t, committed)
	must(t, os.WriteFile(filepath.Join(committed, checkpoint.ManifestName), []byte(`{"version":2,"epoch":3}`), 0o600))

	cases := []struct {
		name string
		base string
	}{
		{"page missing", short},
		{"no base", ""},
		{"empty base", t.TempDir()},
		{"pages file cut short", truncated},
		{"another epoch", committed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := t.TempDir()
			must(t, os.WriteFile(filepath.Join(out, "callers-file"), []byte("x"), 0o600))
			err := Apply(tc.base, d, out)
			if !errors.Is(err, ErrBadBase) {
				t.Errorf("Apply = %v, want ErrBadBase", err)
			}
			onlyCallersFile(t, out)
		})
	}
	// The same delta fits the real base.
	must(t, Apply(a, d, t.TempDir()))
}

func slicesDelete(rs []PageRun, i int) []PageRun {
	return append(rs[:i:i], rs[i+1:]...)
}

func onlyCallersFile(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	must(t, err)
	if len(ents) != 1 || ents[0].Name() != "callers-file" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Errorf("out dir holds %q after a failed Apply, want only the caller's file", names)
	}
}

func TestApplyMalformed(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	baseSet(t, a)
	nextSet(t, b)
	idx, err := BuildIndex(a)
	must(t, err)
	fresh := func() *Delta {
		d, _, err := Diff(idx, b, 4, 5)
		must(t, err)
		return d
	}
	cases := []struct {
		name   string
		change func(d *Delta)
	}{
		{"a page in no run", func(d *Delta) { d.Pagemaps[0].Pages = d.Pagemaps[0].Pages[1:] }},
		{"a run outside the pagemap", func(d *Delta) {
			d.Pagemaps[1].Pages = append(d.Pagemaps[1].Pages, PageRun{0x100000, page(1)})
		}},
		{"no pages for a pagemap", func(d *Delta) { d.Pagemaps = d.Pagemaps[:1] }},
		{"pages for a missing pagemap", func(d *Delta) { d.Pagemaps = append(d.Pagemaps, PagemapDelta{Pagemap: "pagemap-99.img"}) }},
		{"a path for a name", func(d *Delta) { d.Files[0].Name = "../core-10.img" }},
		{"a file twice", func(d *Delta) { d.Files = append(d.Files, d.Files[0]) }},
		{"a file where pages go", func(d *Delta) { d.Files = append(d.Files, File{Name: "pages-3.img"}) }},
		{"a broken pagemap", func(d *Delta) { d.Files[2].Data = d.Files[2].Data[:len(d.Files[2].Data)-1] }},
		// The 37-byte frames that used to OOM a standby: a copy run of 2^32-1 pages,
		// and a pagemap of 2^40 pages.
		{"a copy run of 2^32-1 pages", func(d *Delta) {
			d.Pagemaps[0].Copies = append(d.Pagemaps[0].Copies, CopyRun{0x7000000000, ^uint32(0)})
		}},
		{"a pagemap of 2^40 pages", func(d *Delta) {
			d.Files[2].Data = encodePagemap(t, 3, []entry{{vaddr: 0x10000, n: 1 << 40, flags: present}})
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := fresh()
			tc.change(d)
			out := t.TempDir()
			must(t, os.WriteFile(filepath.Join(out, "callers-file"), []byte("x"), 0o600))
			if err := Apply(a, d, out); !errors.Is(err, ErrMalformed) {
				t.Errorf("Apply = %v, want ErrMalformed", err)
			}
			onlyCallersFile(t, out)
		})
	}
}

func TestApplyRemovesWhatItWroteOnFailure(t *testing.T) {
	a, _, d := synthDelta(t)
	out := t.TempDir()
	// A file already there is never overwritten; Apply fails after writing others.
	must(t, os.WriteFile(filepath.Join(out, "pages-4.img"), []byte("callers"), 0o600))
	if err := Apply(a, d, out); err == nil {
		t.Fatal("Apply overwrote a file in out dir")
	}
	ents, err := os.ReadDir(out)
	must(t, err)
	if len(ents) != 1 {
		t.Errorf("out dir holds %d files after a failed Apply, want the caller's one", len(ents))
	}
	if data, _ := os.ReadFile(filepath.Join(out, "pages-4.img")); string(data) != "callers" {
		t.Errorf("caller's file changed to %q", data)
	}
}

func TestDiffRefusesBrokenSets(t *testing.T) {
	t.Run("pages file of the wrong size", func(t *testing.T) {
		dir := t.TempDir()
		baseSet(t, dir)
		must(t, os.Truncate(filepath.Join(dir, "pages-2.img"), PageSize))
		if _, _, err := Diff(nil, dir, 0, 1); !errors.Is(err, ErrMalformed) {
			t.Errorf("Diff = %v, want ErrMalformed", err)
		}
	})
	t.Run("two pagemaps share a pages file", func(t *testing.T) {
		dir := t.TempDir()
		writeSet(t, dir, map[string][]entry{
			"pagemap-1.img": {{vaddr: 0, n: 1, flags: present, fill: []byte{1}}},
			"pagemap-2.img": {{vaddr: 0, n: 1, flags: present, fill: []byte{1}}},
		}, map[string]uint32{"pagemap-1.img": 5, "pagemap-2.img": 5}, nil)
		if _, err := BuildIndex(dir); !errors.Is(err, ErrMalformed) {
			t.Errorf("BuildIndex = %v, want ErrMalformed", err)
		}
	})
	t.Run("missing dir", func(t *testing.T) {
		if _, err := BuildIndex(filepath.Join(t.TempDir(), "nope")); err == nil {
			t.Error("BuildIndex of a missing dir succeeded")
		}
	})
}

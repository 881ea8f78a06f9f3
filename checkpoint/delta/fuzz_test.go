package delta

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// fuzzRuns encodes runs for FuzzApply: per run a kind byte (even: pages travel, odd:
// copied from the base), a vaddr and a page count.
func fuzzRuns(pd PagemapDelta) []byte {
	var b []byte
	for _, r := range pd.Pages {
		b = append(b, 0)
		b = binary.LittleEndian.AppendUint64(b, r.Vaddr)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(r.Data)/PageSize))
	}
	for _, c := range pd.Copies {
		b = append(b, 1)
		b = binary.LittleEndian.AppendUint64(b, c.Vaddr)
		b = binary.LittleEndian.AppendUint32(b, c.NrPages)
	}
	return b
}

// FuzzApply feeds the receiver's rebuild path (Apply and WritePages, as a standby
// runs them on what a peer sent) a pagemap and runs of any shape against a real
// base set. Whatever the input, it must neither panic nor allocate by a declared
// count (a run of 2^32-1 pages, a pagemap of 2^40: the fuzzer's memory limit catches
// that), and must either rebuild a pages file of exactly the pagemap's size or fail
// with ErrMalformed or ErrBadBase.
func FuzzApply(f *testing.F) {
	base := f.TempDir()
	baseSet(f, base)
	next := f.TempDir()
	nextSet(f, next)
	idx, err := BuildIndex(base)
	must(f, err)
	d, _, err := Diff(idx, next, 4, 5)
	must(f, err)
	for _, pd := range d.Pagemaps {
		for _, file := range d.Files {
			if file.Name == pd.Pagemap {
				f.Add(file.Data, fuzzRuns(pd))
			}
		}
	}
	f.Add(encodePagemap(f, 3, []entry{{vaddr: 0x10000, n: 1 << 40, flags: present}}), []byte{1, 0, 0, 1, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})

	f.Fuzz(func(t *testing.T, pagemap, runs []byte) {
		pd := PagemapDelta{Pagemap: "pagemap-10.img"}
		shipped := 0
		for len(runs) >= 13 {
			kind, vaddr, n := runs[0], binary.LittleEndian.Uint64(runs[1:]), binary.LittleEndian.Uint32(runs[9:])
			runs = runs[13:]
			if kind%2 == 0 {
				// Page data is what a peer really sends, byte for byte: keep it small.
				n %= 8
				if shipped += int(n); shipped > 64 {
					continue
				}
				pd.Pages = append(pd.Pages, PageRun{Vaddr: vaddr, Data: make([]byte, int(n)*PageSize)})
				continue
			}
			pd.Copies = append(pd.Copies, CopyRun{Vaddr: vaddr, NrPages: n})
		}
		delta := &Delta{Base: 4, Epoch: 5, Files: []File{{Name: pd.Pagemap, Data: pagemap}}, Pagemaps: []PagemapDelta{pd}}
		for _, write := range []func(out string) error{
			func(out string) error { return Apply(base, delta, out) },
			func(out string) error { _, err := WritePages(base, delta, out); return err },
		} {
			out := t.TempDir()
			err := write(out)
			if err != nil {
				if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadBase) {
					t.Fatalf("error %v is neither ErrMalformed nor ErrBadBase", err)
				}
				continue
			}
			pm, err := decodePagemap(pagemap, 1<<20)
			if err != nil {
				t.Fatalf("rebuilt from a pagemap that does not decode: %v", err)
			}
			fi, err := os.Stat(filepath.Join(out, pm.pagesName()))
			if err != nil || fi.Size() != int64(len(pm.present))*PageSize {
				t.Fatalf("pages file %v, %v; pagemap lists %d pages", fi, err, len(pm.present))
			}
		}
	})
}

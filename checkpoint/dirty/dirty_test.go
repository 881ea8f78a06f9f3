package dirty

import (
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The probe's own cycle, on this kernel: the machine's kernel has the mechanism, so
// this must pass here (it is what `ftrun check` reports).
func TestProbe(t *testing.T) {
	res := Probe()
	if !res.OK {
		t.Fatalf("probe: %s", res.Detail)
	}
	t.Logf("%s; protect %s, scan %s", res.Detail, res.Protect, res.Scan)
}

// Random writes over a large region, round after round: every scan finds exactly the
// pages written since the previous one — none missed, none extra — and a file-backed
// private mapping is tracked as well as anonymous memory.
func TestWrittenFindsExactlyTheWrittenPages(t *testing.T) {
	uffd, err := NewUffd()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(uffd)
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	page := os.Getpagesize()
	const pages = 8192 // 32 MiB
	f, err := os.CreateTemp(t.TempDir(), "mapped")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(int64(pages * page)); err != nil {
		t.Fatal(err)
	}
	anon, err := unix.Mmap(-1, 0, pages*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(anon)
	file, err := unix.Mmap(int(f.Fd()), 0, pages*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(file)
	for name, mem := range map[string][]byte{"anonymous": anon, "file-backed private": file} {
		base := uint64(uintptr(unsafe.Pointer(&mem[0])))
		r := Range{base, base + uint64(len(mem))}
		if err := Register(uffd, r); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := Protect(uffd, r); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		for round := range 20 {
			written := map[int]bool{}
			for range rand.IntN(pages / 50) {
				i := rand.IntN(pages)
				mem[i*page+rand.IntN(page)]++
				written[i] = true
			}
			want := make([]int, 0, len(written))
			for i := range written {
				want = append(want, i)
			}
			slices.Sort(want)
			got, err := Written(pm, r)
			if err != nil {
				t.Fatalf("%s round %d: %v", name, round, err)
			}
			if g := pageIndexes(base, page, got); !slices.Equal(g, want) {
				t.Fatalf("%s round %d: scan found %d pages, %d were written (first found %v, first written %v)",
					name, round, len(g), len(want), g[:min(5, len(g))], want[:min(5, len(want))])
			}
		}
	}
}

// A range that was never registered is an error, never "nothing written".
func TestWrittenRefusesUntrackedMemory(t *testing.T) {
	pm, err := os.Open("/proc/self/pagemap")
	if err != nil {
		t.Fatal(err)
	}
	defer pm.Close()
	page := os.Getpagesize()
	mem, err := unix.Mmap(-1, 0, 4*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	mem[0] = 1
	base := uint64(uintptr(unsafe.Pointer(&mem[0])))
	if got, err := Written(pm, Range{base, base + uint64(4*page)}); err == nil {
		t.Fatalf("an untracked range scanned as %v, no error", got)
	}
}

func TestAppendRangeMerges(t *testing.T) {
	var rs []Range
	for _, r := range []Range{{0, 4096}, {4096, 8192}, {12288, 16384}} {
		rs = appendRange(rs, r)
	}
	if want := []Range{{0, 8192}, {12288, 16384}}; !slices.Equal(rs, want) {
		t.Fatalf("got %v, want %v", rs, want)
	}
}

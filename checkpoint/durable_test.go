package checkpoint

import (
	"errors"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Chunks marked known are not read; every other chunk, the size and the checksum
// count still are.
func TestVerifyDirKnown(t *testing.T) {
	big := make([]byte, 2*ChunkSize+1)
	for i := range big {
		big[i] = byte(i * 7)
	}
	s := openStore(t)
	set := commitSet(t, s, 1, map[string]string{"pages-1.img": string(big), "core-1.img": "core"})
	path := filepath.Join(set.Dir, "pages-1.img")
	flip := func(off int64) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 1)
		f.ReadAt(b, off)
		b[0] ^= 1
		if _, err := f.WriteAt(b, off); err != nil {
			t.Fatal(err)
		}
	}
	all := map[string][]bool{"pages-1.img": {true, true, true}, "core-1.img": {true}}
	if _, err := VerifyDirKnown(set.Dir, all); err != nil {
		t.Fatalf("all known: %v", err)
	}
	flip(ChunkSize + 5) // in the middle chunk
	if _, err := VerifyDirKnown(set.Dir, map[string][]bool{"pages-1.img": {true, false, true}}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("damage in a chunk not known: %v, want ErrCorrupt", err)
	}
	if _, err := VerifyDirKnown(set.Dir, map[string][]bool{"pages-1.img": {false, true}}); err != nil {
		t.Errorf("damage only in a known chunk was read: %v", err)
	}
	if _, err := VerifyDir(set.Dir); !errors.Is(err, ErrCorrupt) {
		t.Errorf("VerifyDir knows nothing: %v, want ErrCorrupt", err)
	}
	flip(ChunkSize + 5)
	if err := os.Truncate(path, 2*ChunkSize); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyDirKnown(set.Dir, all); !errors.Is(err, ErrCorrupt) {
		t.Errorf("wrong size with every chunk known: %v, want ErrCorrupt", err)
	}
	if err := os.Remove(filepath.Join(set.Dir, "core-1.img")); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyDirKnown(set.Dir, all); !errors.Is(err, ErrCorrupt) {
		t.Errorf("missing file with every chunk known: %v, want ErrCorrupt", err)
	}
}

// CommitDurable renames a verified set into place without checksumming it again,
// and refuses a manifest of another epoch, leaving nothing behind.
func TestCommitDurable(t *testing.T) {
	for _, nosync := range []bool{false, true} {
		s := openStore(t)
		s.NoSync = nosync
		base := commitSet(t, s, 1, sampleImages)
		p, err := s.Begin(2)
		if err != nil {
			t.Fatal(err)
		}
		var written []string
		for name := range sampleImages {
			if name == "core-1.img" {
				if err := os.Link(filepath.Join(base.Dir, name), filepath.Join(p.Dir, name)); err != nil {
					t.Fatal(err)
				}
				continue
			}
			writeFiles(t, p.Dir, map[string]string{name: sampleImages[name]})
			written = append(written, name)
		}
		m := manifestAs(t, base, p)
		set, err := p.CommitDurable(m, written)
		if err != nil {
			t.Fatalf("NoSync=%v: %v", nosync, err)
		}
		if _, err := VerifyDir(set.Dir); err != nil {
			t.Error(err)
		}
		if sets, _ := s.List(); !slices.Equal(epochs(sets), []uint64{2, 1}) {
			t.Errorf("sets %v", epochs(sets))
		}

		p, err = s.Begin(3)
		if err != nil {
			t.Fatal(err)
		}
		if err := writeManifest(p.Dir, m); err != nil {
			t.Fatal(err)
		}
		if _, err := p.CommitDurable(m, nil); !errors.Is(err, ErrCorrupt) {
			t.Errorf("manifest of epoch 2 committed as 3: %v", err)
		}
		if got := dirNames(t, s.Dir()); !slices.Equal(got, []string{epochName(1), epochName(2)}) {
			t.Errorf("store holds %v", got)
		}
	}
}

// CommitCached commits a set as complete and readable as CommitDurable's, and waits
// for no disk: it fsyncs nothing, where CommitDurable fsyncs what is new.
func TestCommitCachedSyncsNothing(t *testing.T) {
	var syncs int
	fsync = func(f *os.File) error { syncs++; return f.Sync() }
	t.Cleanup(func() { fsync = (*os.File).Sync })
	for _, cached := range []bool{false, true} {
		s := openStore(t)
		base := commitSet(t, s, 1, sampleImages)
		p, err := s.Begin(2)
		if err != nil {
			t.Fatal(err)
		}
		writeFiles(t, p.Dir, sampleImages)
		m := manifestAs(t, base, p)
		syncs = 0
		var set Set
		if cached {
			set, err = p.CommitCached(m)
		} else {
			set, err = p.CommitDurable(m, slices.Collect(maps.Keys(sampleImages)))
		}
		if err != nil {
			t.Fatalf("cached=%v: %v", cached, err)
		}
		if _, err := VerifyDir(set.Dir); err != nil {
			t.Errorf("cached=%v: %v", cached, err)
		}
		switch {
		case cached && syncs != 0:
			t.Errorf("CommitCached fsynced %d times", syncs)
		case !cached && syncs < len(sampleImages)+2:
			t.Errorf("CommitDurable fsynced %d times, want every new file, the manifest and two directories", syncs)
		}
	}
}

func TestCopyRange(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 3<<20+5)
	for i := range data {
		data[i] = byte(i * 13)
	}
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(filepath.Join(dir, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := CopyRange(out, in, 100, 7, int64(len(data)-7)); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(out.Name())
	if len(got) != 100+len(data)-7 || string(got[100:]) != string(data[7:]) {
		t.Errorf("copied %d bytes, not the source's", len(got))
	}
	if err := CopyRange(out, in, 0, int64(len(data))-3, 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("copy past the end: %v, want ErrUnexpectedEOF", err)
	}
	// The fallback gives the same.
	out2, err := os.Create(filepath.Join(dir, "dst2"))
	if err != nil {
		t.Fatal(err)
	}
	defer out2.Close()
	if err := copyRangeRW(out2, in, 100, 7, int64(len(data)-7)); err != nil {
		t.Fatal(err)
	}
	got2, _ := os.ReadFile(out2.Name())
	if string(got2) != string(got) {
		t.Error("read/write fallback differs from copy_file_range")
	}
	if err := copyRangeRW(out2, in, 0, int64(len(data))-3, 10); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("fallback past the end: %v, want ErrUnexpectedEOF", err)
	}
}

func TestRetire(t *testing.T) {
	s := openStore(t)
	one := commitSet(t, s, 1, sampleImages)
	commitSet(t, s, 2, sampleImages)
	dir, err := s.Retire(one, true)
	if err != nil {
		t.Fatal(err)
	}
	if sets, _ := s.List(); !slices.Equal(epochs(sets), []uint64{2}) {
		t.Errorf("sets after Retire: %v", epochs(sets))
	}
	if _, err := VerifyDir(dir); err != nil {
		t.Errorf("retired set changed: %v", err)
	}
	if _, err := s.Retire(Set{Epoch: 9, Dir: "/elsewhere/0000000000000009"}, true); err == nil {
		t.Error("retired a set outside the store")
	}
	// A crash before the caller removed it: the next OpenStore does.
	if _, err := OpenStore(s.Dir()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("retired set survived OpenStore: %v", err)
	}
}

// manifestAs writes base's manifest, as of p's epoch, into p (which holds the same
// files) and returns it verified against them.
func manifestAs(t *testing.T, base Set, p *Pending) *Manifest {
	t.Helper()
	m, err := ReadManifest(base.Dir)
	if err != nil {
		t.Fatal(err)
	}
	m.Epoch = p.Epoch
	if err := writeManifest(p.Dir, m); err != nil {
		t.Fatal(err)
	}
	if m, err = VerifyDir(p.Dir); err != nil {
		t.Fatal(err)
	}
	return m
}

package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/zeebo/xxh3"
)

// sampleImages is a small stand-in for what CRIU writes into an image directory.
var sampleImages = map[string]string{
	"inventory.img": "inventory",
	"core-1.img":    "core of task 1",
	"pages-1.img":   strings.Repeat("\x00\x01page", 1000),
	"empty.img":     "",
}

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(filepath.Join(t.TempDir(), "checkpoints"))
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	return s
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// commitSet writes files into a pending set for epoch and commits it.
func commitSet(t *testing.T, s *Store, epoch uint64, files map[string]string) Set {
	t.Helper()
	p, err := s.Begin(epoch)
	if err != nil {
		t.Fatalf("Begin(%d): %v", epoch, err)
	}
	writeFiles(t, p.Dir, files)
	set, err := p.Commit(&Manifest{Service: "svc", Command: []string{"prog", "arg"}})
	if err != nil {
		t.Fatalf("Commit(%d): %v", epoch, err)
	}
	return set
}

// wantSum is what the manifest must say of a file holding data, computed here
// independently: the XXH3-64 of every ChunkSize piece.
func wantSum(name string, data []byte) FileSum {
	var sums []uint64
	for off := 0; off < len(data); off += ChunkSize {
		sums = append(sums, xxh3.Hash(data[off:min(off+ChunkSize, len(data))]))
	}
	return FileSum{Name: name, Size: int64(len(data)), XXH3: sums}
}

func sameSum(a, b FileSum) bool {
	return a.Name == b.Name && a.Size == b.Size && slices.Equal(a.XXH3, b.XXH3)
}

func epochs(sets []Set) []uint64 {
	out := make([]uint64, len(sets))
	for i, s := range sets {
		out[i] = s.Epoch
	}
	return out
}

// dirNames lists the entries of dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestOpenStoreCreatesPrivateDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "b", "checkpoints")
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatalf("OpenStore: %v", err)
	}
	if s.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", s.Dir(), dir)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("store dir mode = %v, want a directory with 0700", fi.Mode())
	}
}

func TestOpenStoreRemovesUnfinishedSets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "checkpoints")
	s, err := OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	kept := commitSet(t, s, 3, sampleImages)
	// What a crash halfway through leaves behind: a pending dir with some images, and
	// a pending dir that never got any.
	p, err := s.Begin(4)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, p.Dir, map[string]string{"pages-1.img": "half"})
	if _, err := s.Begin(5); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, tmpPrefix+"stray-file"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, ".other-hidden"), 0o700); err != nil {
		t.Fatal(err)
	}

	if _, err := OpenStore(dir); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	got := dirNames(t, dir)
	want := []string{".other-hidden", epochName(3)}
	if !slices.Equal(got, want) {
		t.Errorf("after reopen the store holds %q, want %q", got, want)
	}
	if _, err := VerifyDir(kept.Dir); err != nil {
		t.Errorf("committed set damaged by reopen: %v", err)
	}
}

func TestCommitWritesManifest(t *testing.T) {
	s := openStore(t)
	p, err := s.Begin(7)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(filepath.Base(p.Dir), tmpPrefix) || filepath.Dir(p.Dir) != s.Dir() {
		t.Errorf("pending dir %q is not a %q dir inside the store", p.Dir, tmpPrefix)
	}
	if p.Epoch != 7 {
		t.Errorf("pending epoch = %d, want 7", p.Epoch)
	}
	writeFiles(t, p.Dir, sampleImages)
	if sets, err := s.List(); err != nil || len(sets) != 0 {
		t.Fatalf("pending set is visible before Commit: %v, %v", sets, err)
	}

	set, err := p.Commit(&Manifest{Service: "svc", Command: []string{"prog", "arg"}, Pid: 42})
	if err != nil {
		t.Fatalf("Commit: %v", err)
	}
	wantDir := filepath.Join(s.Dir(), "0000000000000007")
	if set.Epoch != 7 || set.Dir != wantDir {
		t.Errorf("Commit = %+v, want epoch 7 in %q", set, wantDir)
	}
	if _, err := os.Stat(p.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pending dir still exists after Commit: %v", err)
	}
	if sets, err := s.List(); err != nil || !slices.Equal(epochs(sets), []uint64{7}) {
		t.Errorf("List after Commit = %v, %v", sets, err)
	}

	m, err := ReadManifest(set.Dir)
	if err != nil {
		t.Fatalf("ReadManifest: %v", err)
	}
	if m.Version != manifestVersion || m.Epoch != 7 || m.Service != "svc" || m.Pid != 42 ||
		!slices.Equal(m.Command, []string{"prog", "arg"}) {
		t.Errorf("manifest header = %+v", m)
	}
	var names []string
	for name := range sampleImages {
		names = append(names, name)
	}
	slices.Sort(names)
	if len(m.Files) != len(names) {
		t.Fatalf("manifest lists %d files, want %d: %+v", len(m.Files), len(names), m.Files)
	}
	var total int64
	for i, f := range m.Files {
		want := wantSum(names[i], []byte(sampleImages[names[i]]))
		if !sameSum(f, want) {
			t.Errorf("manifest file %d = %+v, want %+v", i, f, want)
		}
		total += want.Size
	}
	if m.Bytes() != total {
		t.Errorf("Bytes() = %d, want %d", m.Bytes(), total)
	}
	if _, err := VerifyDir(set.Dir); err != nil {
		t.Errorf("VerifyDir on a fresh set: %v", err)
	}
}

func TestCommitMultiChunkFile(t *testing.T) {
	// One byte over two chunks: three checksums, the last of a single byte.
	big := make([]byte, 2*ChunkSize+1)
	for i := range big {
		big[i] = byte(i * 7)
	}
	s := openStore(t)
	set := commitSet(t, s, 1, map[string]string{"pages-1.img": string(big)})
	m, err := VerifyDir(set.Dir)
	if err != nil {
		t.Fatalf("VerifyDir: %v", err)
	}
	want := wantSum("pages-1.img", big)
	if len(want.XXH3) != 3 || len(m.Files) != 1 || !sameSum(m.Files[0], want) {
		t.Fatalf("manifest = %+v, want %+v", m.Files, want)
	}
	// Damage in any chunk, the first byte of the last one included, is caught.
	for _, off := range []int{0, ChunkSize - 1, ChunkSize, 2 * ChunkSize} {
		f, err := os.OpenFile(filepath.Join(set.Dir, "pages-1.img"), os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt([]byte{big[off] ^ 1}, int64(off)); err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyDir(set.Dir); !errors.Is(err, ErrCorrupt) {
			t.Errorf("flipped byte at %d: VerifyDir = %v, want ErrCorrupt", off, err)
		}
		if _, err := f.WriteAt(big[off:off+1], int64(off)); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if _, err := VerifyDir(set.Dir); err != nil {
			t.Fatalf("restored byte at %d: %v", off, err)
		}
	}
}

func TestSync(t *testing.T) {
	for _, nosync := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoSync=%v", nosync), func(t *testing.T) {
			s := openStore(t)
			s.NoSync = nosync
			set := commitSet(t, s, 3, sampleImages)
			if err := s.Sync(set); err != nil {
				t.Fatalf("Sync: %v", err)
			}
			if _, err := VerifyDir(set.Dir); err != nil {
				t.Errorf("VerifyDir after Sync: %v", err)
			}
			if nosync {
				return
			}
			if err := s.Sync(Set{Epoch: 4, Dir: filepath.Join(s.Dir(), epochName(4))}); err == nil {
				t.Error("Sync of a set that does not exist succeeded")
			}
		})
	}
}

func TestCommitEmptySet(t *testing.T) {
	s := openStore(t)
	set := commitSet(t, s, 1, nil)
	m, err := VerifyDir(set.Dir)
	if err != nil {
		t.Fatalf("VerifyDir: %v", err)
	}
	if len(m.Files) != 0 || m.Bytes() != 0 {
		t.Errorf("empty set's manifest lists %+v", m.Files)
	}
}

func TestListAndLatest(t *testing.T) {
	s := openStore(t)
	if got, err := s.Latest(); err != nil || got != 0 {
		t.Errorf("Latest on an empty store = %d, %v; want 0, nil", got, err)
	}
	for _, e := range []uint64{2, 10, 1, 9} {
		commitSet(t, s, e, sampleImages)
	}
	// Things that are not committed sets.
	for _, d := range []string{"notanumber", ".hidden", ".5", "-3", "12abc", tmpPrefix + "0000000000000011-x"} {
		if err := os.Mkdir(filepath.Join(s.Dir(), d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(s.Dir(), "0000000000000099"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	sets, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := epochs(sets), []uint64{10, 9, 2, 1}; !slices.Equal(got, want) {
		t.Errorf("List epochs = %v, want %v", got, want)
	}
	for _, set := range sets {
		if set.Dir != filepath.Join(s.Dir(), epochName(set.Epoch)) {
			t.Errorf("set %d has dir %q", set.Epoch, set.Dir)
		}
	}
	if got, err := s.Latest(); err != nil || got != 10 {
		t.Errorf("Latest = %d, %v; want 10, nil", got, err)
	}
}

func TestListMissingDir(t *testing.T) {
	s := openStore(t)
	if err := os.RemoveAll(s.Dir()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.List(); err == nil {
		t.Error("List of a removed store dir succeeded")
	}
	if _, err := s.Latest(); err == nil {
		t.Error("Latest of a removed store dir succeeded")
	}
}

func TestBeginExistingEpoch(t *testing.T) {
	s := openStore(t)
	commitSet(t, s, 5, sampleImages)
	if p, err := s.Begin(5); err == nil {
		t.Errorf("Begin for committed epoch 5 succeeded: %q", p.Dir)
	}
	if _, err := s.Begin(6); err != nil {
		t.Errorf("Begin for a new epoch: %v", err)
	}
}

func TestAbortLeavesEarlierSets(t *testing.T) {
	s := openStore(t)
	early := commitSet(t, s, 1, sampleImages)
	p, err := s.Begin(2)
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, p.Dir, sampleImages)
	if err := p.Abort(); err != nil {
		t.Fatalf("Abort: %v", err)
	}
	if got, want := dirNames(t, s.Dir()), []string{epochName(1)}; !slices.Equal(got, want) {
		t.Errorf("after Abort the store holds %q, want %q", got, want)
	}
	if _, err := VerifyDir(early.Dir); err != nil {
		t.Errorf("earlier set damaged by Abort: %v", err)
	}
}

func TestFailedCommitLeavesNoHalfSet(t *testing.T) {
	cases := []struct {
		name  string
		epoch uint64
		// spoil makes the Commit of p fail.
		spoil func(t *testing.T, s *Store, p *Pending)
	}{
		{"pending dir gone", 3, func(t *testing.T, s *Store, p *Pending) {
			if err := os.RemoveAll(p.Dir); err != nil {
				t.Fatal(err)
			}
		}},
		{"same epoch committed meanwhile", 3, func(t *testing.T, s *Store, p *Pending) {
			// A second writer of the same epoch got there first: the rename must not
			// replace or merge into its set.
			other, err := s.Begin(3)
			if err != nil {
				t.Fatal(err)
			}
			writeFiles(t, other.Dir, map[string]string{"other.img": "the winner"})
			if _, err := other.Commit(&Manifest{}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t)
			early := []Set{commitSet(t, s, 1, sampleImages), commitSet(t, s, 2, sampleImages)}
			before, _ := s.List()
			p, err := s.Begin(tc.epoch)
			if err != nil {
				t.Fatal(err)
			}
			writeFiles(t, p.Dir, sampleImages)
			tc.spoil(t, s, p)
			var winner []string
			if sets, _ := s.List(); len(sets) > len(before) {
				winner = dirNames(t, sets[0].Dir)
			}

			if set, err := p.Commit(&Manifest{}); err == nil {
				t.Fatalf("Commit succeeded: %+v", set)
			}
			for _, name := range dirNames(t, s.Dir()) {
				if strings.HasPrefix(name, tmpPrefix) {
					t.Errorf("failed Commit left %q behind", name)
				}
			}
			for _, set := range early {
				if _, err := VerifyDir(set.Dir); err != nil {
					t.Errorf("earlier set %d damaged: %v", set.Epoch, err)
				}
			}
			after, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			if winner == nil {
				if !slices.Equal(epochs(after), epochs(before)) {
					t.Errorf("sets after a failed Commit = %v, want %v", epochs(after), epochs(before))
				}
				return
			}
			if got := dirNames(t, after[0].Dir); !slices.Equal(got, winner) {
				t.Errorf("the other writer's set now holds %q, want %q", got, winner)
			}
			if _, err := VerifyDir(after[0].Dir); err != nil {
				t.Errorf("the other writer's set damaged: %v", err)
			}
		})
	}
}

func TestPrune(t *testing.T) {
	cases := []struct {
		keep        int
		durable     uint64
		wantKept    []uint64
		wantDropped []uint64
	}{
		{keep: 3, wantKept: []uint64{5, 4, 3}, wantDropped: []uint64{2, 1}},
		{keep: 1, wantKept: []uint64{5}, wantDropped: []uint64{4, 3, 2, 1}},
		{keep: 0, wantKept: []uint64{5}, wantDropped: []uint64{4, 3, 2, 1}},
		{keep: -2, wantKept: []uint64{5}, wantDropped: []uint64{4, 3, 2, 1}},
		{keep: 5, wantKept: []uint64{5, 4, 3, 2, 1}},
		{keep: 10, wantKept: []uint64{5, 4, 3, 2, 1}},
		{keep: 2, durable: 2, wantKept: []uint64{5, 4, 2}, wantDropped: []uint64{3, 1}},
		{keep: 1, durable: 5, wantKept: []uint64{5}, wantDropped: []uint64{4, 3, 2, 1}},
		{keep: 0, durable: 1, wantKept: []uint64{5, 1}, wantDropped: []uint64{4, 3, 2}},
		{keep: 2, durable: 99, wantKept: []uint64{5, 4}, wantDropped: []uint64{3, 2, 1}},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("keep=%d,durable=%d", tc.keep, tc.durable), func(t *testing.T) {
			s := openStore(t)
			for e := uint64(1); e <= 5; e++ {
				commitSet(t, s, e, sampleImages)
			}
			dropped, err := s.Prune(tc.keep, tc.durable)
			if err != nil {
				t.Fatalf("Prune: %v", err)
			}
			if got := epochs(dropped); !slices.Equal(got, tc.wantDropped) && !(len(got) == 0 && len(tc.wantDropped) == 0) {
				t.Errorf("dropped %v, want %v", got, tc.wantDropped)
			}
			sets, err := s.List()
			if err != nil {
				t.Fatal(err)
			}
			if got := epochs(sets); !slices.Equal(got, tc.wantKept) {
				t.Errorf("kept %v, want %v", got, tc.wantKept)
			}
			for _, set := range sets {
				if _, err := VerifyDir(set.Dir); err != nil {
					t.Errorf("kept set %d: %v", set.Epoch, err)
				}
			}
		})
	}
}

func TestRemoveRefusesOutsideStore(t *testing.T) {
	s := openStore(t)
	outside := t.TempDir()
	for _, dir := range []string{outside, filepath.Join(s.Dir(), "0000000000000001", "nested")} {
		if err := s.Remove(Set{Epoch: 1, Dir: dir}); err == nil {
			t.Errorf("Remove(%q) succeeded", dir)
		}
	}
	if _, err := os.Stat(outside); err != nil {
		t.Errorf("Remove touched a dir outside the store: %v", err)
	}
}

func TestRetain(t *testing.T) {
	sets := func(es ...uint64) []Set {
		out := make([]Set, len(es))
		for i, e := range es {
			out[i] = Set{Epoch: e, Dir: epochName(e)}
		}
		return out
	}
	cases := []struct {
		name    string
		in      []Set
		keep    int
		durable uint64
		want    []uint64
		pinned  []uint64
	}{
		{"none", nil, 3, 0, nil, nil},
		{"fewer than keep", sets(3, 2), 3, 0, nil, nil},
		{"exactly keep", sets(3, 2, 1), 3, 0, nil, nil},
		{"more than keep", sets(9, 7, 5, 3), 2, 0, []uint64{5, 3}, nil},
		{"keep 1", sets(9, 7, 5), 1, 0, []uint64{7, 5}, nil},
		{"keep 0 is 1", sets(9, 7, 5), 0, 0, []uint64{7, 5}, nil},
		{"negative keep is 1", sets(9, 7, 5), -4, 0, []uint64{7, 5}, nil},
		{"keep 0 with one set drops nothing", sets(9), 0, 0, nil, nil},
		{"durable among the kept", sets(9, 7, 5, 3), 2, 7, []uint64{5, 3}, nil},
		{"durable beyond keep is kept", sets(9, 7, 5, 3), 1, 5, []uint64{7, 3}, nil},
		{"durable is the oldest", sets(9, 7, 5, 3), 1, 3, []uint64{7, 5}, nil},
		{"durable unknown epoch", sets(9, 7, 5), 1, 8, []uint64{7, 5}, nil},
		{"keep 0 with durable newest", sets(9, 7), 0, 9, []uint64{7}, nil},
		{"the standby's base is kept", sets(9, 7, 5, 3), 1, 9, []uint64{7, 5}, []uint64{3}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			got := Retain(in, tc.keep, tc.durable, tc.pinned...)
			if e := epochs(got); !slices.Equal(e, tc.want) && !(len(e) == 0 && len(tc.want) == 0) {
				t.Errorf("Retain(%v, %d, %d) = %v, want %v", epochs(tc.in), tc.keep, tc.durable, e, tc.want)
			}
			for _, d := range got {
				if len(in) > 0 && d.Epoch == in[0].Epoch {
					t.Errorf("Retain dropped the newest set %d", d.Epoch)
				}
				if tc.durable != 0 && d.Epoch == tc.durable {
					t.Errorf("Retain dropped the durable set %d", d.Epoch)
				}
			}
			// The result must not share the caller's backing array.
			if len(got) > 0 {
				got[0].Epoch = 12345
				if slices.ContainsFunc(in, func(s Set) bool { return s.Epoch == 12345 }) {
					t.Error("Retain's result aliases its input")
				}
			}
		})
	}
}

func TestWrapNoSpace(t *testing.T) {
	enospc := &os.PathError{Op: "write", Path: "pages-1.img", Err: syscall.ENOSPC}
	other := errors.New("something else")
	cases := []struct {
		name        string
		in          error
		wantNil     bool
		wantNoSpace bool
	}{
		{"nil", nil, true, false},
		{"ENOSPC", fmt.Errorf("write image: %w", enospc), false, true},
		{"other error", other, false, false},
		{"already wrapped", fmt.Errorf("%w: %w", ErrNoSpace, enospc), false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := MarkNoSpace(tc.in)
			if (got == nil) != tc.wantNil {
				t.Fatalf("MarkNoSpace(%v) = %v", tc.in, got)
			}
			if got == nil {
				return
			}
			if errors.Is(got, ErrNoSpace) != tc.wantNoSpace {
				t.Errorf("errors.Is(%v, ErrNoSpace) = %v, want %v", got, !tc.wantNoSpace, tc.wantNoSpace)
			}
			if !errors.Is(got, tc.in) {
				t.Errorf("wrapNoSpace lost the original error: %v", got)
			}
			if n := strings.Count(got.Error(), ErrNoSpace.Error()); n > 1 {
				t.Errorf("ErrNoSpace appears %d times in %q", n, got)
			}
		})
	}
}

// CRIU writes images 0644; a committed set holds the program's memory, owner-only.
func TestCommitMakesImagesPrivate(t *testing.T) {
	s := openStore(t)
	p, err := s.Begin(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"pages-1.img", "core-1.img"} {
		if err := os.WriteFile(filepath.Join(p.Dir, name), []byte("secret"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(p.Dir, name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	set, err := p.Commit(&Manifest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(set.Dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s is %o, want 600", e.Name(), fi.Mode().Perm())
		}
	}
}

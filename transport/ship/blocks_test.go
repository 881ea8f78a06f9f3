package ship

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/internal/syncbuf"
	"github.com/ftrun/ftrun/transport/frame"
)

func TestChangedBlocks(t *testing.T) {
	const B = FileBlockSize
	base := make([]byte, 10*B+100)
	rand.Read(base)
	edit := func(f func(b []byte) []byte) []byte { return f(slices.Clone(base)) }
	cases := []struct {
		name string
		cur  []byte
		want []Range
	}{
		{"same", slices.Clone(base), nil},
		{"one byte", edit(func(b []byte) []byte { b[3*B+7] ^= 1; return b }), []Range{{3 * B, B}}},
		{"two adjacent blocks join", edit(func(b []byte) []byte { b[3*B+7] ^= 1; b[4*B] ^= 1; return b }), []Range{{3 * B, 2 * B}}},
		{"a gap splits", edit(func(b []byte) []byte { b[1] ^= 1; b[5*B] ^= 1; return b }), []Range{{0, B}, {5 * B, B}}},
		{"the short last block", edit(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), []Range{{10 * B, 100}}},
		{"grown: the tail", append(slices.Clone(base), make([]byte, 2*B)...), []Range{{10 * B, 2*B + 100}}},
		{"cut short: nothing", slices.Clone(base[:7*B+5]), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			prev := base[:min(len(base), len(tc.cur))]
			if got := changedBlocks(nil, tc.cur, prev, 0); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("changedBlocks = %v, want %v", got, tc.want)
			}
		})
	}
	// Pieces compared one after another join across the boundary.
	cur := edit(func(b []byte) []byte { b[2*B-1] ^= 1; b[2*B] ^= 1; return b })
	got := changedBlocks(nil, cur[:2*B], base[:2*B], 0)
	got = changedBlocks(got, cur[2*B:], base[2*B:], 2*B)
	if want := []Range{{B, 2 * B}}; !reflect.DeepEqual(got, want) {
		t.Errorf("across pieces: %v, want %v", got, want)
	}
}

func sumOf(name string, data []byte) checkpoint.FileSum {
	dir, _ := os.MkdirTemp("", "sum-")
	defer os.RemoveAll(dir)
	p := filepath.Join(dir, name)
	os.WriteFile(p, data, 0o600)
	st, _ := checkpoint.OpenStore(filepath.Join(dir, "s"))
	pd, _ := st.Begin(1)
	os.Rename(p, filepath.Join(pd.Dir, name))
	set, _ := pd.Commit(&checkpoint.Manifest{})
	m, _ := checkpoint.ReadManifest(set.Dir)
	return m.Files[0]
}

// diffBlocks reads only the chunks whose checksums moved: a chunk the manifests agree
// on is the base's, whatever the file says.
func TestDiffBlocksReadsOnlyMovedChunks(t *testing.T) {
	dir := t.TempDir()
	base := make([]byte, checkpoint.ChunkSize+3*FileBlockSize)
	rand.Read(base)
	cur := slices.Clone(base)
	cur[checkpoint.ChunkSize+FileBlockSize] ^= 1 // second chunk
	prev, next := sumOf("f", base), sumOf("f", cur)
	cur[10] ^= 1 // first chunk, behind the manifest's back
	bp, np := filepath.Join(dir, "base"), filepath.Join(dir, "new")
	os.WriteFile(bp, base, 0o600)
	os.WriteFile(np, cur, 0o600)
	got, err := diffBlocks(bp, np, prev, next)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Range{{checkpoint.ChunkSize + FileBlockSize, FileBlockSize}}; !reflect.DeepEqual(got, want) {
		t.Errorf("diffBlocks = %v, want %v", got, want)
	}
	if got, err := diffBlocks(bp, np, prev, prev); err != nil || got != nil {
		t.Errorf("same checksums: %v, %v; want nothing read", got, err)
	}
}

// sendBlocks splits a file's blocks into frames of the given data size, in order,
// and sends a file with no changed block as one FileDelta without blocks.
func TestSendBlocks(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 64*FileBlockSize)
	rand.Read(data)
	os.WriteFile(filepath.Join(dir, "sync-x.data"), data, 0o600)
	fb := FileBlocks{Name: "sync-x.data", Size: int64(len(data)), Mode: 0o644,
		Ranges: []Range{{0, FileBlockSize}, {5 * FileBlockSize, 20 * FileBlockSize}, {63 * FileBlockSize, FileBlockSize}}}
	var frames []frame.FileDelta
	put := func(p frame.Payload) error {
		b, err := p.MarshalBinary()
		if err != nil {
			return err
		}
		var fd frame.FileDelta
		if err := fd.UnmarshalBinary(b); err != nil {
			return err
		}
		frames = append(frames, fd)
		return nil
	}
	n, err := sendBlocks(dir, fb, 8*FileBlockSize, put)
	if err != nil {
		t.Fatal(err)
	}
	if n != 22*FileBlockSize || len(frames) != 3 {
		t.Fatalf("sent %d bytes in %d frames, want %d in 3", n, len(frames), 22*FileBlockSize)
	}
	rebuilt := make([]byte, len(data))
	for _, f := range frames {
		if f.Path != fb.Name || f.Size != uint64(fb.Size) || f.Mode != 0o644 {
			t.Errorf("frame %+v", f)
		}
		for _, b := range f.Blocks {
			copy(rebuilt[b.Offset:], b.Data)
		}
	}
	for _, r := range fb.Ranges {
		if !bytes.Equal(rebuilt[r.Off:r.Off+r.Len], data[r.Off:r.Off+r.Len]) {
			t.Errorf("range %v differs", r)
		}
	}
	frames = nil
	if n, err := sendBlocks(dir, FileBlocks{Name: "sync-x.data", Size: 10}, 1<<20, put); err != nil || n != 0 || len(frames) != 1 || len(frames[0].Blocks) != 0 {
		t.Errorf("no blocks: %d bytes, %d frames, %v", n, len(frames), err)
	}
}

// A standby whose Hello does not offer FileDelta gets changed synced files whole.
func TestNoFileDeltaForOldStandby(t *testing.T) {
	dir := t.TempDir()
	st, err := checkpoint.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	st.NoSync = true
	commit := func(epoch uint64, data []byte) string {
		pd, err := st.Begin(epoch)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(pd.Dir, "sync-a.data"), data, 0o600)
		set, err := pd.Commit(&checkpoint.Manifest{Synced: []checkpoint.SyncedFile{{Name: "sync-a.data", Path: "/state/a"}}})
		if err != nil {
			t.Fatal(err)
		}
		return set.Dir
	}
	data := make([]byte, 1<<20)
	rand.Read(data)
	dir1 := commit(1, data)
	data[100] ^= 1
	dir2 := commit(2, data)

	for _, features := range [][]string{nil, {frame.FeatureFileDelta}} {
		s := New(Config{Service: "svc", Differ: NewPageDiffer()})
		a, b := net.Pipe()
		types := make(chan []frame.Type, 2)
		go fakeStandby(b, features, types)
		if err := s.hello(context.Background(), a); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := s.Ship(ctx, 1, dir1); err != nil {
			t.Fatal(err)
		}
		<-types
		if err := s.Ship(ctx, 2, dir2); err != nil {
			t.Fatal(err)
		}
		cancel()
		got := <-types
		wantType := frame.TypeImageData
		if features != nil {
			wantType = frame.TypeFileDelta
		}
		if !slices.Contains(got, wantType) || s.LastStats().Full {
			t.Errorf("features %v: epoch 2 sent %v, want a %s", features, got, wantType)
		}
		s.Close()
	}
}

// fakeStandby answers a Hello with features, then acks every epoch and reports the
// frame types it carried.
func fakeStandby(c net.Conn, features []string, types chan<- []frame.Type) {
	defer c.Close()
	r, w := frame.NewReader(c, frame.Limits{}), frame.NewWriter(c)
	if _, err := r.Next(); err != nil {
		return
	}
	if w.WritePayload(0, &frame.Hello{Version: frame.Version, Service: "svc", Role: "standby", Features: features}) != nil {
		return
	}
	var got []frame.Type
	for {
		f, err := r.Next()
		if err != nil {
			return
		}
		got = append(got, f.Type)
		if f.Type == frame.TypeEpochCommit {
			types <- got
			got = nil
			if w.WritePayload(f.Epoch, &frame.Ack{Epoch: f.Epoch}) != nil {
				return
			}
		}
	}
}

// A long epoch reports bytes done, of how many, and the rate while it is sent, and
// once more when it is out; Progress shows it meanwhile and nothing afterwards.
func TestShipReportsProgress(t *testing.T) {
	st, err := checkpoint.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st.NoSync = true
	pd, err := st.Begin(1)
	if err != nil {
		t.Fatal(err)
	}
	data := make([]byte, 4<<20)
	rand.Read(data)
	os.WriteFile(filepath.Join(pd.Dir, "pages-1.img"), data, 0o600)
	set, err := pd.Commit(&checkpoint.Manifest{})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncbuf.Buffer
	s := New(Config{Service: "svc", ChunkSize: 256 << 10, ProgressEvery: time.Nanosecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	defer s.Close()
	a, b := net.Pipe()
	types := make(chan []frame.Type, 1)
	go fakeStandby(b, nil, types)
	if err := s.hello(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Progress(); ok {
		t.Error("progress before any epoch")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Ship(ctx, 1, set.Dir); err != nil {
		t.Fatal(err)
	}
	<-types
	if _, ok := s.Progress(); ok {
		t.Error("progress after the epoch was acked")
	}
	out := logs.String()
	if n := strings.Count(out, `msg="ship: sending"`); n < 2 || !strings.Contains(out, "of 4.0 MiB") || !strings.Contains(out, "MiB/s") {
		t.Errorf("%d progress lines, want several with bytes of the total and a rate:\n%s", n, out)
	}
	if !strings.Contains(out, `msg="ship: epoch sent"`) || !strings.Contains(out, "(full)") {
		t.Errorf("no closing line for the long epoch:\n%s", out)
	}
}

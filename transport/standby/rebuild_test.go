package standby

import (
	"reflect"
	"slices"
	"testing"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
)

func sp(off, n int64) delta.Span { return delta.Span{Off: off, Len: n} }

func TestCoveredAndSubtract(t *testing.T) {
	spans := []delta.Span{sp(0, 10), sp(10, 5), sp(20, 10)}
	for _, tc := range []struct {
		off, end int64
		want     bool
	}{{0, 15, true}, {2, 12, true}, {0, 16, false}, {14, 21, false}, {20, 30, true}, {25, 31, false}, {40, 41, false}} {
		if got := covered(spans, tc.off, tc.end); got != tc.want {
			t.Errorf("covered [%d,%d) = %v", tc.off, tc.end, got)
		}
	}
	got := subtract(delta.Span{Off: 0, Len: 100}, []delta.Span{sp(50, 10), sp(0, 5), sp(55, 10), sp(90, 20)})
	if want := []delta.Span{sp(5, 45), sp(65, 25)}; !reflect.DeepEqual(got, want) {
		t.Errorf("subtract = %v, want %v", got, want)
	}
	if got := subtract(delta.Span{Off: 0, Len: 8}, nil); !reflect.DeepEqual(got, []delta.Span{sp(0, 8)}) {
		t.Errorf("subtract nothing = %v", got)
	}
	if got := subtract(delta.Span{Off: 0, Len: 0}, nil); got != nil {
		t.Errorf("subtract from nothing = %v", got)
	}
}

// A chunk is known only when it lies wholly in same-offset copies of a verified file
// whose chunk has the same extent and checksum; a link only when its entry matches.
func TestKnownChunks(t *testing.T) {
	const C = checkpoint.ChunkSize
	from := checkpoint.FileSum{Name: "pages-1.img", Size: 3 * C, XXH3: []uint64{1, 2, 3}}
	m := &checkpoint.Manifest{Files: []checkpoint.FileSum{
		{Name: "pages-1.img", Size: 3*C + 5, XXH3: []uint64{1, 9, 3, 4}},
		{Name: "core.img", Size: 7, XXH3: []uint64{7}},
		{Name: "moved.img", Size: 7, XXH3: []uint64{8}},
		{Name: "wire.img", Size: 7, XXH3: []uint64{5}},
	}}
	origins := map[string]origin{
		// chunk 0 copied whole; chunk 1 copied but the primary says it changed; chunk
		// 2 copied but one page written; chunk 3 beyond the old end.
		"pages-1.img": {from: from, same: []delta.Span{sp(0, 2*C), sp(2*C, 100), sp(2*C+4096, C-4096)}},
		"core.img":    {linked: true, from: checkpoint.FileSum{Name: "core.img", Size: 7, XXH3: []uint64{7}}},
		"moved.img":   {linked: true, from: checkpoint.FileSum{Name: "moved.img", Size: 7, XXH3: []uint64{6}}},
	}
	got := knownChunks(m, origins)
	want := map[string][]bool{
		"pages-1.img": {true, false, false, false},
		"core.img":    {true},
		"moved.img":   {false},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("knownChunks = %v, want %v", got, want)
	}
	// A file cut short within its last chunk: that chunk's extent moved.
	cut := &checkpoint.Manifest{Files: []checkpoint.FileSum{{Name: "pages-1.img", Size: 3*C - 1, XXH3: []uint64{1, 2, 3}}}}
	if got := knownChunks(cut, map[string]origin{"pages-1.img": {from: from, same: []delta.Span{sp(0, 3*C)}}}); !slices.Equal(got["pages-1.img"], []bool{true, true, false}) {
		t.Errorf("cut file: %v", got)
	}
	if w := written(m, origins); !slices.Equal(w, []string{"pages-1.img", "wire.img"}) {
		t.Errorf("written = %v", w)
	}
}

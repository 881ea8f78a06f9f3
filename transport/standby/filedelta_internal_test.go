package standby

import (
	"slices"
	"testing"

	"github.com/ftrun/ftrun/transport/frame"
)

// FileDeltas the standby cannot apply are refused with the code that makes the
// primary do the right thing, and the committed epoch stays as it was.
func TestFileDeltaRefused(t *testing.T) {
	fx1 := makeFixture(t, 1, map[string][]byte{"a.img": []byte("one"), "sync-a.data": []byte("state v1")})
	fx2 := makeFixture(t, 2, map[string][]byte{"a.img": []byte("one"), "sync-a.data": []byte("state v2")})
	cases := []struct {
		name string
		full bool
		send []frame.Payload
		want frame.NackCode
	}{
		{"in a full epoch", true, []frame.Payload{
			&frame.ImageData{Name: "a.img", Data: []byte("one"), Last: true},
			&frame.FileDelta{Path: "sync-a.data", Size: 8, Blocks: []frame.Block{{Offset: 7, Data: []byte("2")}}},
		}, frame.NackCorrupt},
		{"a path for a name", false, []frame.Payload{&frame.FileDelta{Path: "../sync-a.data", Size: 8}}, frame.NackCorrupt},
		{"the manifest's name", false, []frame.Payload{&frame.FileDelta{Path: "MANIFEST.json", Size: 8}}, frame.NackCorrupt},
		{"a deletion", false, []frame.Payload{&frame.FileDelta{Path: "sync-a.data", Deleted: true}}, frame.NackCorrupt},
		{"a file the base lacks", false, []frame.Payload{&frame.FileDelta{Path: "sync-b.data", Size: 8}}, frame.NackBadBase},
		{"two sizes", false, []frame.Payload{
			&frame.FileDelta{Path: "sync-a.data", Size: 8},
			&frame.FileDelta{Path: "sync-a.data", Size: 9},
		}, frame.NackCorrupt},
		{"whole after blocks", false, []frame.Payload{
			&frame.FileDelta{Path: "sync-a.data", Size: 8},
			&frame.ImageData{Name: "sync-a.data", Data: []byte("state v2"), Last: true},
		}, frame.NackCorrupt},
		{"blocks that do not add up to the manifest's file", false, []frame.Payload{
			&frame.FileDelta{Path: "sync-a.data", Size: 8, Blocks: []frame.Block{{Offset: 7, Data: []byte("3")}}},
		}, frame.NackCorrupt},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store := openStore(t)
			p := newRaw(t, store, frame.Limits{})
			p.hello("svc")
			p.sendEpoch(1, 0, fx1)
			p.expect(frame.TypeAck)
			begin := &frame.EpochBegin{Full: tc.full, BaseEpoch: 1, Files: uint32(len(tc.send))}
			if tc.full {
				begin.BaseEpoch = 0
			}
			p.send(2, begin)
			for _, pl := range tc.send {
				p.send(2, pl)
			}
			p.send(2, &frame.EpochCommit{Manifest: fx2.manifest})
			p.expect(frame.TypeResyncRequest)
			f := p.expect(frame.TypeNack)
			var n frame.Nack
			if err := n.UnmarshalBinary(f.Payload); err != nil || n.Code != tc.want {
				t.Errorf("nack %+v, %v; want %s", n, err, tc.want)
			}
			if got := storeEpochs(t, store, "svc"); !slices.Equal(got, []uint64{1}) {
				t.Errorf("epochs %v, want [1]", got)
			}
		})
	}

	// The same epoch with the right block is committed.
	store := openStore(t)
	p := newRaw(t, store, frame.Limits{})
	p.hello("svc")
	p.sendEpoch(1, 0, fx1)
	p.expect(frame.TypeAck)
	p.send(2, &frame.EpochBegin{BaseEpoch: 1, Files: 1})
	p.send(2, &frame.FileDelta{Path: "sync-a.data", Size: 8, Blocks: []frame.Block{{Offset: 7, Data: []byte("2")}}})
	p.send(2, &frame.EpochCommit{Manifest: fx2.manifest})
	p.expect(frame.TypeAck)
}

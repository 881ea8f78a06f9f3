package frame

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// samplePayloads is one representative value per type, with every field set so a
// field dropped by an encoder shows up in the round trip.
func samplePayloads() []Payload {
	page := bytes.Repeat([]byte{0xab}, PageSize)
	return []Payload{
		&Hello{Version: Version, Service: "redis", Host: "node-a", Role: "primary", LastCommitted: 41, Features: []string{"page-delta", "file-delta"}},
		&EpochBegin{Full: true, Files: 12},
		&EpochBegin{BaseEpoch: 41, Files: 3},
		&ImageData{Name: "core-1.img", Offset: 8192, Data: []byte("image bytes"), Last: true},
		&PageDelta{
			Pagemap:  "pagemap-1.img",
			Pages:    []PageRun{{Vaddr: 0x7f0000000000, Data: page}, {Vaddr: 0x400000, Data: append(page[:PageSize:PageSize], page...)}},
			CopyRuns: []CopyRun{{Vaddr: 0x600000, NrPages: 7}},
		},
		&FileDelta{Path: "/var/lib/redis/dump.rdb", Size: 100, Mode: 0o644, Blocks: []Block{{Offset: 0, Data: []byte("REDIS")}, {Offset: 90, Data: bytes.Repeat([]byte{1}, 10)}}},
		&FileDelta{Path: "/tmp/gone", Deleted: true},
		&EpochCommit{Manifest: []byte(`{"version":1,"epoch":42}`)},
		&Ack{Epoch: 42},
		&Ack{Epoch: 42, Phases: &AckPhases{ApplyNs: 1, VerifyNs: 2e6, DurableNs: 3e9}},
		&Nack{Epoch: 43, Code: NackDiskFull, Reason: "no space left on device"},
		&Heartbeat{SentUnixNano: -5, Committed: 42},
		&ResyncRequest{Reason: "base epoch 40 lost", HaveEpoch: 39},
	}
}

func TestPayloadRoundTrip(t *testing.T) {
	empty := []Payload{
		&Hello{}, &EpochBegin{Full: true}, &ImageData{Name: "x"}, &PageDelta{Pagemap: "p"},
		&FileDelta{Path: "/f"}, &EpochCommit{}, &Ack{}, &Nack{Code: NackInternal}, &Heartbeat{}, &ResyncRequest{},
	}
	for _, p := range append(samplePayloads(), empty...) {
		t.Run(p.Type().String(), func(t *testing.T) {
			b, err := p.MarshalBinary()
			if err != nil {
				t.Fatalf("MarshalBinary(%+v): %v", p, err)
			}
			got, err := DecodePayload(p.Type(), b)
			if err != nil {
				t.Fatalf("DecodePayload: %v", err)
			}
			if !reflect.DeepEqual(got, p) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, p)
			}
			// AppendBinary must append, not overwrite.
			prefixed, err := p.AppendBinary([]byte("pre"))
			if err != nil || !bytes.Equal(prefixed, append([]byte("pre"), b...)) {
				t.Fatalf("AppendBinary = %q, %v", prefixed, err)
			}
			// Strictness: every shorter prefix and any trailing byte is refused.
			for i := range len(b) {
				if a, ok := p.(*Ack); ok && a.Phases != nil && i == 8 {
					// The Ack's phases are optional: its first 8 bytes are a plain Ack.
					continue
				}
				if _, err := DecodePayload(p.Type(), b[:i]); !errors.Is(err, ErrMalformed) {
					t.Fatalf("decode of %d/%d bytes: err = %v, want ErrMalformed", i, len(b), err)
				}
			}
			if _, err := DecodePayload(p.Type(), append(b, 0)); !errors.Is(err, ErrMalformed) {
				t.Fatalf("decode with a trailing byte: err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestPayloadInvalid(t *testing.T) {
	page := make([]byte, PageSize)
	tests := []struct {
		name string
		p    Payload
		want string // a fragment of the error
	}{
		{"hello empty feature", &Hello{Features: []string{"a", ""}}, "Features[1]"},
		{"full with base", &EpochBegin{Full: true, BaseEpoch: 3}, "names base"},
		{"delta without base", &EpochBegin{}, "no base"},
		{"image no name", &ImageData{}, "not a file name"},
		{"image dotdot", &ImageData{Name: ".."}, "not a file name"},
		{"image path", &ImageData{Name: "../etc/passwd"}, "contains '/'"},
		{"image offset overflow", &ImageData{Name: "a", Offset: ^uint64(0), Data: []byte{1}}, "overflows"},
		{"pages empty run", &PageDelta{Pagemap: "p", Pages: []PageRun{{Vaddr: 0}}}, "whole, non-zero"},
		{"pages partial page", &PageDelta{Pagemap: "p", Pages: []PageRun{{Data: page[:100]}}}, "whole, non-zero"},
		{"pages one byte over", &PageDelta{Pagemap: "p", Pages: []PageRun{{Data: append(page, 0)}}}, "whole, non-zero"},
		{"pages unaligned", &PageDelta{Pagemap: "p", Pages: []PageRun{{Vaddr: 1, Data: page}}}, "page aligned"},
		{"pages wrap", &PageDelta{Pagemap: "p", Pages: []PageRun{{Vaddr: ^uint64(0) &^ (PageSize - 1), Data: append(page, page...)}}}, "overflow"},
		{"pages bad pagemap", &PageDelta{Pagemap: "a/b", Pages: []PageRun{{Data: page}}}, "Pagemap"},
		{"copy empty", &PageDelta{Pagemap: "p", CopyRuns: []CopyRun{{Vaddr: 0}}}, "empty run"},
		{"copy unaligned", &PageDelta{Pagemap: "p", CopyRuns: []CopyRun{{Vaddr: 12, NrPages: 1}}}, "page aligned"},
		{"file no path", &FileDelta{}, "empty Path"},
		{"file NUL", &FileDelta{Path: "/a\x00b"}, "NUL"},
		{"file deleted with blocks", &FileDelta{Path: "/a", Size: 1, Deleted: true, Blocks: []Block{{Data: []byte{1}}}}, "deleted"},
		{"file empty block", &FileDelta{Path: "/a", Size: 1, Blocks: []Block{{}}}, "empty"},
		{"file block past size", &FileDelta{Path: "/a", Size: 4, Blocks: []Block{{Offset: 2, Data: []byte{1, 2, 3}}}}, "beyond its size"},
		{"file block offset past size", &FileDelta{Path: "/a", Size: 4, Blocks: []Block{{Offset: ^uint64(0), Data: []byte{1}}}}, "beyond its size"},
		{"nack zero code", &Nack{Epoch: 1}, "unknown code"},
		{"nack unknown code", &Nack{Epoch: 1, Code: 99}, "unknown code"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := tt.p.MarshalBinary()
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("MarshalBinary = %v, want ErrMalformed mentioning %q", err, tt.want)
			}
			if b != nil {
				t.Fatalf("MarshalBinary returned %d bytes with its error", len(b))
			}
			// The decoder applies the same rules to bytes that skip the encoder.
			raw := newEnc(nil)
			rawEncode(&raw, tt.p)
			if err := tt.p.UnmarshalBinary(raw.b); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("UnmarshalBinary = %v, want ErrMalformed mentioning %q", err, tt.want)
			}
		})
	}
}

// rawEncode writes p's fields with no validation, to build payloads a correct peer
// would never send.
func rawEncode(e *enc, p Payload) {
	switch p := p.(type) {
	case *Hello:
		e.u8(p.Version)
		e.str("", p.Service)
		e.str("", p.Host)
		e.str("", p.Role)
		e.u64(p.LastCommitted)
		e.count("", len(p.Features))
		for _, f := range p.Features {
			e.str("", f)
		}
	case *EpochBegin:
		e.bool(p.Full)
		e.u64(p.BaseEpoch)
		e.u32(p.Files)
	case *ImageData:
		e.str("", p.Name)
		e.u64(p.Offset)
		e.bytes("", p.Data)
		e.bool(p.Last)
	case *PageDelta:
		e.str("", p.Pagemap)
		e.count("", len(p.Pages))
		for _, r := range p.Pages {
			e.u64(r.Vaddr)
			e.bytes("", r.Data)
		}
		e.count("", len(p.CopyRuns))
		for _, r := range p.CopyRuns {
			e.u64(r.Vaddr)
			e.u32(r.NrPages)
		}
	case *FileDelta:
		e.str("", p.Path)
		e.u64(p.Size)
		e.u32(p.Mode)
		e.count("", len(p.Blocks))
		for _, b := range p.Blocks {
			e.u64(b.Offset)
			e.bytes("", b.Data)
		}
		e.bool(p.Deleted)
	case *Nack:
		e.u64(p.Epoch)
		e.u16(uint16(p.Code))
		e.str("", p.Reason)
	default:
		panic("rawEncode: add " + p.Type().String())
	}
}

func TestPayloadDecodeBounds(t *testing.T) {
	tests := []struct {
		name string
		t    Type
		b    []byte
	}{
		// A length field larger than what is left must be refused, not allocated.
		{"string longer than payload", TypeResyncRequest, []byte{0xff, 0xff, 0xff, 0xff, 'x'}},
		{"bytes longer than payload", TypeEpochCommit, []byte{0, 0, 0, 5, 1, 2, 3}},
		{"huge feature count", TypeHello, append([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, 0xff, 0xff, 0xff, 0xff)},
		{"bool not 0 or 1", TypeEpochBegin, []byte{2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
		{"empty ack", TypeAck, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := DecodePayload(tt.t, tt.b); !errors.Is(err, ErrMalformed) {
				t.Fatalf("DecodePayload = %v, want ErrMalformed", err)
			}
		})
	}
	if _, err := DecodePayload(0, nil); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("DecodePayload(type 0) = %v, want ErrUnknownType", err)
	}
}

func TestAckPhasesOptional(t *testing.T) {
	// What an older standby sends, and what an older primary accepts: the epoch alone.
	plain, err := (&Ack{Epoch: 9}).MarshalBinary()
	if err != nil || len(plain) != 8 {
		t.Fatalf("plain Ack = %d bytes, %v; want the 8 bytes older peers speak", len(plain), err)
	}
	var a Ack
	if err := a.UnmarshalBinary(plain); err != nil || a.Phases != nil || a.Epoch != 9 {
		t.Fatalf("plain Ack decoded as %+v, %v", a, err)
	}
	long, err := (&Ack{Epoch: 9, Phases: &AckPhases{ApplyNs: 5}}).MarshalBinary()
	if err != nil || len(long) != 32 {
		t.Fatalf("Ack with phases = %d bytes, %v", len(long), err)
	}
	for _, n := range []int{9, 16, 31, 33} {
		b := append(append([]byte{}, long...), 0)[:n]
		if err := a.UnmarshalBinary(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("Ack of %d bytes: err = %v, want ErrMalformed", n, err)
		}
	}
}

func TestUnmarshalFailureLeavesValue(t *testing.T) {
	a := Ack{Epoch: 7}
	if err := a.UnmarshalBinary([]byte{1, 2}); err == nil {
		t.Fatal("short Ack decoded")
	}
	if a.Epoch != 7 {
		t.Fatalf("failed decode changed the value to %+v", a)
	}
}

func TestStrings(t *testing.T) {
	tests := []struct{ got, want string }{
		{TypeHello.String(), "Hello"},
		{TypeResyncRequest.String(), "ResyncRequest"},
		{Type(0).String(), "Type(0)"},
		{Type(200).String(), "Type(200)"},
		{NackDiskFull.String(), "DiskFull"},
		{NackBadBase.String(), "BadBase"},
		{NackCorrupt.String(), "Corrupt"},
		{NackInternal.String(), "Internal"},
		{NackCode(0).String(), "NackCode(0)"},
		{RolePrimary.String(), "primary"},
		{RoleStandby.String(), "standby"},
		{Role(9).String(), "Role(9)"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("String() = %q, want %q", tt.got, tt.want)
		}
	}
	for typ := TypeHello; typ <= TypeResyncRequest; typ++ {
		p, err := NewPayload(typ)
		if err != nil || p.Type() != typ {
			t.Errorf("NewPayload(%s) = %v, %v", typ, p, err)
		}
	}
}

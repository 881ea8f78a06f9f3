package frame

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// fuzzLimit is small so the fuzzer reaches the length checks with short inputs.
const fuzzLimit = 1 << 12

// validStream is a conversation a standby could really receive, for seeding.
func validStream() []byte {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	steps := []struct {
		epoch uint64
		p     Payload
	}{
		{0, &Hello{Version: Version, Service: "redis", Host: "a", Role: "primary", Features: []string{"delta"}}},
		{1, &EpochBegin{Full: true, Files: 2}},
		{1, &ImageData{Name: "core-1.img", Data: []byte("core"), Last: true}},
		{1, &PageDelta{Pagemap: "pagemap-1.img", Pages: []PageRun{{Vaddr: 0x1000, Data: make([]byte, PageSize)}}}},
		{1, &FileDelta{Path: "/data", Size: 3, Blocks: []Block{{Data: []byte("abc")}}}},
		{1, &EpochCommit{Manifest: []byte("{}")}},
		{0, &Heartbeat{SentUnixNano: 1, Committed: 1}},
	}
	for _, s := range steps {
		if err := w.WritePayload(s.epoch, s.p); err != nil {
			panic(err)
		}
	}
	return buf.Bytes()
}

func FuzzReader(f *testing.F) {
	f.Add(validStream())
	for i, p := range samplePayloads() {
		b, err := p.MarshalBinary()
		if err != nil || len(b) > fuzzLimit {
			continue
		}
		f.Add(rawFrame(p.Type(), 1, uint64(i), b))
	}
	f.Add(rawFrame(TypeAck, 2, 1, nil))
	f.Add([]byte(Magic))
	f.Add([]byte{})

	sentinels := []error{io.EOF, ErrBadMagic, ErrVersion, ErrUnknownType, ErrTooLarge, ErrChecksum,
		ErrOutOfOrder, ErrReplay, ErrTruncated, ErrMalformed}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := bytes.NewReader(data)
		r := NewReader(br, Limits{MaxPayload: fuzzLimit})
		seq := NewSequencer(RoleStandby, 0)
		var last uint64
		for {
			start := len(data) - br.Len()
			fr, err := r.Next()
			if err != nil {
				if !isAny(err, sentinels) {
					t.Fatalf("error wraps no sentinel: %v", err)
				}
				return
			}
			if len(fr.Payload) > fuzzLimit || cap(fr.Payload) > fuzzLimit {
				t.Fatalf("payload len %d cap %d beyond limit %d", len(fr.Payload), cap(fr.Payload), fuzzLimit)
			}
			if fr.Seq != last+1 {
				t.Fatalf("accepted seq %d after %d", fr.Seq, last)
			}
			last = fr.Seq
			// Writing the accepted frame again must give the same bytes: a frame has
			// one encoding, or the checksum would not be meaningful.
			var again bytes.Buffer
			w := NewWriterLimits(&again, Limits{MaxPayload: fuzzLimit})
			w.seq = fr.Seq - 1
			if err := w.Write(fr.Type, fr.Epoch, fr.Payload); err != nil {
				t.Fatalf("rewrite accepted frame: %v", err)
			}
			if !bytes.Equal(data[start:len(data)-br.Len()], again.Bytes()) {
				t.Fatalf("accepted %s frame does not re-encode to its input", fr.Type)
			}
			p, err := DecodePayload(fr.Type, fr.Payload)
			if err == nil {
				b, err := p.MarshalBinary()
				if err != nil || !bytes.Equal(b, fr.Payload) {
					t.Fatalf("decoded %s re-encodes to %x, %v; was %x", fr.Type, b, err, fr.Payload)
				}
			} else if !errors.Is(err, ErrMalformed) {
				t.Fatalf("payload error is not ErrMalformed: %v", err)
			}
			_ = seq.Step(fr) // must not panic, whatever the order
		}
	})
}

func FuzzPayloads(f *testing.F) {
	for _, p := range samplePayloads() {
		b, err := p.MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(p.Type()), b)
	}
	f.Add(uint8(TypeHello), []byte{1, 0xff, 0xff, 0xff, 0xff})
	f.Add(uint8(0), []byte{})

	f.Fuzz(func(t *testing.T, typ uint8, data []byte) {
		p, err := DecodePayload(Type(typ), data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnknownType) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		b, err := p.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded %s does not re-encode: %v", p.Type(), err)
		}
		if !bytes.Equal(b, data) {
			t.Fatalf("%s: encoding is not canonical: %x decoded and re-encoded as %x", p.Type(), data, b)
		}
		q, err := DecodePayload(Type(typ), b)
		if err != nil {
			t.Fatalf("re-encoded %s does not decode: %v", p.Type(), err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("%s round trip: %+v != %+v", p.Type(), p, q)
		}
	})
}

func isAny(err error, targets []error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}

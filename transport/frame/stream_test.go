package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
)

// rawFrame builds a frame's wire bytes directly, to write what a Writer never would.
func rawFrame(t Type, seq, epoch uint64, payload []byte) []byte {
	return appendFrame(nil, t, seq, epoch, payload)
}

// countingWriter records each Write call separately.
type countingWriter struct{ writes [][]byte }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, bytes.Clone(p))
	return len(p), nil
}

func TestWriterReaderRoundTrip(t *testing.T) {
	var cw countingWriter
	w := NewWriter(&cw)
	for i, p := range samplePayloads() {
		if err := w.WritePayload(uint64(100+i), p); err != nil {
			t.Fatalf("WritePayload(%s): %v", p.Type(), err)
		}
	}
	if len(cw.writes) != len(samplePayloads()) {
		t.Fatalf("%d Write calls for %d frames", len(cw.writes), len(samplePayloads()))
	}
	if w.Seq() != uint64(len(samplePayloads())) {
		t.Fatalf("Writer.Seq() = %d", w.Seq())
	}

	r := NewReader(bytes.NewReader(bytes.Join(cw.writes, nil)), Limits{})
	for i, want := range samplePayloads() {
		f, err := r.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if f.Type != want.Type() || f.Seq != uint64(i+1) || f.Epoch != uint64(100+i) {
			t.Fatalf("frame %d: got %s seq %d epoch %d", i, f.Type, f.Seq, f.Epoch)
		}
		got, err := DecodePayload(f.Type, f.Payload)
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		wb, _ := want.MarshalBinary()
		gb, _ := got.MarshalBinary()
		if !bytes.Equal(wb, gb) {
			t.Fatalf("frame %d: payload changed in transit", i)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last frame: err = %v, want io.EOF", err)
	}
	if r.Seq() != uint64(len(samplePayloads())) {
		t.Fatalf("Reader.Seq() = %d", r.Seq())
	}
}

func TestWriterRefuses(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriterLimits(&buf, Limits{MaxPayload: 8})
	if err := w.Write(Type(0), 1, nil); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("unknown type: %v", err)
	}
	if err := w.Write(TypeAck, 1, make([]byte, 9)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized payload: %v", err)
	}
	if err := w.WritePayload(1, &Nack{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("invalid payload: %v", err)
	}
	if buf.Len() != 0 || w.Seq() != 0 {
		t.Fatalf("refused frames wrote %d bytes, seq %d", buf.Len(), w.Seq())
	}
	// Refusals before writing leave the Writer usable and the numbering unbroken.
	if err := w.WritePayload(1, &Ack{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	if f, err := NewReader(&buf, Limits{}).Next(); err != nil || f.Seq != 1 {
		t.Fatalf("Next = %+v, %v", f, err)
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	w.n++
	return len(p) / 2, errors.New("connection reset")
}

func TestWriterStickyError(t *testing.T) {
	fw := &failWriter{}
	w := NewWriter(fw)
	err1 := w.Write(TypeHeartbeat, 0, make([]byte, 16))
	err2 := w.Write(TypeHeartbeat, 0, make([]byte, 16))
	if err1 == nil || err2 != err1 || fw.n != 1 {
		t.Fatalf("errors %v, %v after %d writes; want the first error again and no second write", err1, err2, fw.n)
	}
	if w.Seq() != 0 {
		t.Fatalf("failed write advanced seq to %d", w.Seq())
	}
}

// TestReaderErrors corrupts a valid two-frame stream in every header field and
// checks that each corruption is reported as its own error.
func TestReaderErrors(t *testing.T) {
	ack := func(e uint64) []byte { b, _ := (&Ack{Epoch: e}).MarshalBinary(); return b }
	first := rawFrame(TypeAck, 1, 7, ack(7))
	second := rawFrame(TypeAck, 2, 8, ack(8))
	mut := func(f func(b []byte)) []byte {
		b := bytes.Clone(first)
		f(b)
		return b
	}
	setLen := func(n uint32) func(b []byte) {
		return func(b []byte) { binary.BigEndian.PutUint32(b[offLength:], n) }
	}
	tests := []struct {
		name   string
		stream []byte
		lim    Limits
		frames int // frames that must be read before the error
		want   error
	}{
		{"magic", mut(func(b []byte) { b[offMagic] ^= 0x20 }), Limits{}, 0, ErrBadMagic},
		{"magic last byte", mut(func(b []byte) { b[offMagic+3] = 'X' }), Limits{}, 0, ErrBadMagic},
		{"version", mut(func(b []byte) { b[offVersion] = 2 }), Limits{}, 0, ErrVersion},
		{"version zero", mut(func(b []byte) { b[offVersion] = 0 }), Limits{}, 0, ErrVersion},
		{"type zero", mut(func(b []byte) { b[offType] = 0 }), Limits{}, 0, ErrUnknownType},
		{"type unknown", mut(func(b []byte) { b[offType] = byte(TypeResyncRequest) + 1 }), Limits{}, 0, ErrUnknownType},
		{"type swapped to another valid type", mut(func(b []byte) { b[offType] = byte(TypeNack) }), Limits{}, 0, ErrChecksum},
		{"flags high byte", mut(func(b []byte) { b[offFlags] = 0x80 }), Limits{}, 0, ErrMalformed},
		{"flags low byte", mut(func(b []byte) { b[offFlags+1] = 1 }), Limits{}, 0, ErrMalformed},
		{"seq", mut(func(b []byte) { b[offSeq+7] ^= 1 }), Limits{}, 0, ErrChecksum},
		{"seq high byte", mut(func(b []byte) { b[offSeq] ^= 0x80 }), Limits{}, 0, ErrChecksum},
		{"epoch", mut(func(b []byte) { b[offEpoch+7] ^= 1 }), Limits{}, 0, ErrChecksum},
		{"length beyond default limit", mut(setLen(DefaultMaxPayload + 1)), Limits{}, 0, ErrTooLarge},
		{"length max uint32", mut(setLen(^uint32(0))), Limits{}, 0, ErrTooLarge},
		{"length beyond configured limit", first, Limits{MaxPayload: 7}, 0, ErrTooLarge},
		{"length exactly the limit", first, Limits{MaxPayload: 8}, 1, io.EOF},
		{"length one more", mut(setLen(9)), Limits{}, 0, ErrTruncated},
		{"length one less", mut(setLen(7)), Limits{}, 0, ErrChecksum},
		{"payload", mut(func(b []byte) { b[HeaderSize] ^= 0xff }), Limits{}, 0, ErrChecksum},
		{"crc", mut(func(b []byte) { b[len(b)-1] ^= 1 }), Limits{}, 0, ErrChecksum},
		{"crc zeroed", mut(func(b []byte) { copy(b[len(b)-4:], []byte{0, 0, 0, 0}) }), Limits{}, 0, ErrChecksum},
		{"replayed seq", append(bytes.Clone(first), first...), Limits{}, 1, ErrReplay},
		{"older seq", concat(rawFrame(TypeAck, 1, 1, ack(1)), rawFrame(TypeAck, 2, 2, ack(2)), rawFrame(TypeAck, 1, 3, ack(3))), Limits{}, 2, ErrReplay},
		{"first seq zero", rawFrame(TypeAck, 0, 7, ack(7)), Limits{}, 0, ErrReplay},
		{"gap", concat(first, rawFrame(TypeAck, 3, 8, ack(8))), Limits{}, 1, ErrOutOfOrder},
		{"first seq two", second, Limits{}, 0, ErrOutOfOrder},
		{"in order", concat(first, second), Limits{}, 2, io.EOF},
		{"garbage after frame", concat(first, []byte("GET / HTTP/1.1\r\n\r\n")), Limits{}, 1, ErrBadMagic},
		{"not ftrun, short", []byte("SSH-"), Limits{}, 0, ErrBadMagic},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tt.stream), tt.lim)
			for i := range tt.frames {
				if _, err := r.Next(); err != nil {
					t.Fatalf("frame %d: %v", i, err)
				}
			}
			_, err := r.Next()
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.want == io.EOF && err != io.EOF {
				t.Fatalf("clean end wrapped: %v", err)
			}
			// A broken stream stays broken.
			if _, again := r.Next(); again != err {
				t.Fatalf("second Next = %v, want the same error %v", again, err)
			}
		})
	}
}

func concat(bs ...[]byte) []byte { return bytes.Join(bs, nil) }

func TestReaderTruncatedEverywhere(t *testing.T) {
	payload, _ := (&ImageData{Name: "pages-1.img", Data: bytes.Repeat([]byte{7}, 3*readChunk+5)}).MarshalBinary()
	for _, frame := range [][]byte{rawFrame(TypeHeartbeat, 1, 0, make([]byte, 16)), rawFrame(TypeImageData, 1, 3, payload)} {
		step := 1
		if len(frame) > 1000 {
			step = 997 // every header and trailer offset, and a spread through the payload
		}
		for cut := 0; cut < len(frame); cut++ {
			if cut > HeaderSize && cut < len(frame)-TrailerSize && cut%step != 0 {
				continue
			}
			_, err := NewReader(bytes.NewReader(frame[:cut]), Limits{}).Next()
			switch {
			case cut == 0 && err != io.EOF:
				t.Fatalf("empty stream: err = %v, want io.EOF", err)
			case cut > 0 && !errors.Is(err, ErrTruncated):
				t.Fatalf("cut at %d of %d: err = %v, want ErrTruncated", cut, len(frame), err)
			}
		}
		if _, err := NewReader(bytes.NewReader(frame), Limits{}).Next(); err != nil {
			t.Fatalf("whole frame: %v", err)
		}
	}
}

// errReader fails with a non-EOF error after its data.
type errReader struct {
	data []byte
	err  error
}

func (r *errReader) Read(p []byte) (int, error) {
	if len(r.data) == 0 {
		return 0, r.err
	}
	n := copy(p, r.data)
	r.data = r.data[n:]
	return n, nil
}

func TestReaderKeepsIOErrors(t *testing.T) {
	reset := errors.New("connection reset by peer")
	frame := rawFrame(TypeHeartbeat, 1, 0, make([]byte, 16))
	_, err := NewReader(&errReader{data: frame[:10], err: reset}, Limits{}).Next()
	if !errors.Is(err, reset) || errors.Is(err, ErrTruncated) {
		t.Fatalf("err = %v, want the reset, not ErrTruncated", err)
	}
	if !strings.Contains(err.Error(), "header") {
		t.Fatalf("err %q does not say where", err)
	}
}

// TestReaderAllocatesWhatArrives declares the largest allowed payload and sends a
// few bytes of it: the Reader must not have reserved the declared size.
func TestReaderAllocatesWhatArrives(t *testing.T) {
	hdr := rawFrame(TypeImageData, 1, 1, nil)[:HeaderSize]
	binary.BigEndian.PutUint32(hdr[offLength:], DefaultMaxPayload)
	stream := append(hdr, make([]byte, 100)...)

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const rounds = 10
	for range rounds {
		if _, err := NewReader(bytes.NewReader(stream), Limits{}).Next(); !errors.Is(err, ErrTruncated) {
			t.Fatalf("err = %v, want ErrTruncated", err)
		}
	}
	runtime.ReadMemStats(&after)
	perRound := (after.TotalAlloc - before.TotalAlloc) / rounds
	if perRound > 2*readChunk {
		t.Fatalf("a truncated frame declaring %d bytes allocated %d bytes", DefaultMaxPayload, perRound)
	}
}

func TestReaderPayloadCapacityBounded(t *testing.T) {
	for _, n := range []int{1, readChunk - 1, readChunk, readChunk + 1, 3*readChunk + 17} {
		f, err := NewReader(bytes.NewReader(rawFrame(TypeEpochCommit, 1, 1, make([]byte, n))), Limits{}).Next()
		if err != nil {
			t.Fatal(err)
		}
		if len(f.Payload) != n || cap(f.Payload) != n {
			t.Fatalf("payload of %d bytes: len %d cap %d", n, len(f.Payload), cap(f.Payload))
		}
	}
}

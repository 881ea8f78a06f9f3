package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
)

// readChunk is how much payload memory a Reader commits to before the bytes to fill
// it have arrived. A peer that declares a large length and then stalls or hangs up
// costs at most this much (or what it really sent), not the declared length.
const readChunk = 64 << 10

// Reader decodes and checks frames from a stream.
//
// Everything the header says is checked before it is acted on: magic, version,
// type, reserved flags and length as soon as the header is in (so a garbage length
// is refused before any allocation), then the checksum over header and payload, and
// only then the sequence number, since a seq field is only meaningful once the
// checksum vouches for it.
type Reader struct {
	r    io.Reader
	lim  Limits
	last uint64
	hdr  [HeaderSize]byte
	// err is sticky: after any failure the stream position or the peer's honesty is
	// in doubt, and a later "valid" frame must not be believed.
	err error
}

// NewReader returns a Reader enforcing lim (zero fields take their defaults).
func NewReader(r io.Reader, lim Limits) *Reader { return &Reader{r: r, lim: lim} }

// Seq is the sequence number of the last frame accepted (0 before the first).
func (r *Reader) Seq() uint64 { return r.last }

// Next reads the next frame. It returns io.EOF, unwrapped, when the stream ends
// cleanly between frames; an end anywhere inside a frame is ErrTruncated. All other
// failures wrap one of the package's sentinel errors or the underlying read error.
// The returned payload is freshly allocated and owned by the caller.
func (r *Reader) Next() (Frame, error) {
	if r.err != nil {
		return Frame{}, r.err
	}
	f, err := r.next()
	if err != nil {
		r.err = err
		return Frame{}, err
	}
	r.last = f.Seq
	return f, nil
}

func (r *Reader) next() (Frame, error) {
	h := r.hdr[:]
	// The magic is checked before the rest of the header is waited for, so a peer
	// that is not ftrun at all (a port scanner, an HTTP client) is told apart at once
	// instead of after 28 bytes that may never come.
	if n, err := io.ReadFull(r.r, h[:len(Magic)]); err != nil {
		if err == io.EOF {
			return Frame{}, io.EOF
		}
		return Frame{}, readErr("header", n, HeaderSize, err)
	}
	if string(h[offMagic:offMagic+len(Magic)]) != Magic {
		return Frame{}, fmt.Errorf("frame: %w: %q", ErrBadMagic, h[offMagic:offMagic+len(Magic)])
	}
	if n, err := io.ReadFull(r.r, h[len(Magic):]); err != nil {
		return Frame{}, readErr("header", len(Magic)+n, HeaderSize, err)
	}
	if v := h[offVersion]; v != Version {
		return Frame{}, fmt.Errorf("frame: %w: peer speaks %d, this end %d", ErrVersion, v, Version)
	}
	t := Type(h[offType])
	if !t.Valid() {
		return Frame{}, fmt.Errorf("frame: %w: %d", ErrUnknownType, uint8(t))
	}
	if fl := binary.BigEndian.Uint16(h[offFlags:]); fl != 0 {
		return Frame{}, fmt.Errorf("frame: %w: %s has reserved flags %#04x set", ErrMalformed, t, fl)
	}
	n := binary.BigEndian.Uint32(h[offLength:])
	if max := r.lim.maxPayload(); n > max {
		return Frame{}, fmt.Errorf("frame: %w: %s declares %d bytes, limit %d", ErrTooLarge, t, n, max)
	}
	payload, err := r.readPayload(t.String()+" payload", int(n))
	if err != nil {
		return Frame{}, err
	}
	var trailer [TrailerSize]byte
	if k, err := io.ReadFull(r.r, trailer[:]); err != nil {
		return Frame{}, readErr(t.String()+" checksum", k, TrailerSize, err)
	}
	sum := crc32.Update(crc32.Checksum(h, castagnoli), castagnoli, payload)
	if want := binary.BigEndian.Uint32(trailer[:]); sum != want {
		return Frame{}, fmt.Errorf("frame: %w: %s computed %#08x, frame says %#08x", ErrChecksum, t, sum, want)
	}
	seq := binary.BigEndian.Uint64(h[offSeq:])
	switch {
	case seq <= r.last:
		return Frame{}, fmt.Errorf("frame: %w: %s seq %d after %d", ErrReplay, t, seq, r.last)
	case seq != r.last+1:
		return Frame{}, fmt.Errorf("frame: %w: %s seq %d after %d", ErrOutOfOrder, t, seq, r.last)
	}
	return Frame{Type: t, Seq: seq, Epoch: binary.BigEndian.Uint64(h[offEpoch:]), Payload: payload}, nil
}

// readPayload reads exactly n bytes, growing the buffer only as data arrives and
// never beyond n.
func (r *Reader) readPayload(what string, n int) ([]byte, error) {
	if n == 0 {
		return nil, nil
	}
	buf := make([]byte, min(n, readChunk))
	got := 0
	for {
		k, err := io.ReadFull(r.r, buf[got:])
		got += k
		if err != nil {
			return nil, readErr(what, got, n, err)
		}
		if got == n {
			return buf, nil
		}
		grown := make([]byte, min(n, 2*len(buf)))
		copy(grown, buf)
		buf = grown
	}
}

// readErr turns an end of stream inside a frame into ErrTruncated and keeps other
// I/O errors (a reset connection, a deadline) recognisable as what they are.
func readErr(what string, got, want int, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("frame: %w: %s: got %d of %d bytes", ErrTruncated, what, got, want)
	}
	return fmt.Errorf("frame: read %s: %w", what, err)
}

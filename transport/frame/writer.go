package frame

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
)

// Writer encodes frames onto a stream, numbering them.
//
// Each frame goes to the underlying writer in a single Write call so that a frame is
// never interleaved with anything else written to the same connection and a
// TLS connection sends it in as few records as its size allows.
type Writer struct {
	w   io.Writer
	lim Limits
	seq uint64
	buf []byte
	// err is sticky: after a failed Write the peer may hold part of a frame, so any
	// further frame would be misparsed. The connection has to be replaced.
	err error
}

// NewWriter returns a Writer that refuses payloads larger than DefaultLimits allow,
// since a peer with default limits would refuse them anyway.
func NewWriter(w io.Writer) *Writer { return NewWriterLimits(w, DefaultLimits()) }

// NewWriterLimits is NewWriter for a peer configured with other limits.
func NewWriterLimits(w io.Writer, lim Limits) *Writer { return &Writer{w: w, lim: lim} }

// Seq is the sequence number of the last frame written (0 before the first).
func (w *Writer) Seq() uint64 { return w.seq }

// Write sends one frame of type t for epoch with the given encoded payload.
// Sequence numbers start at 1 and increase by one per frame. A frame refused before
// anything is written (unknown type, oversized payload) does not consume a number
// and leaves the Writer usable; a failed write to the stream does not.
func (w *Writer) Write(t Type, epoch uint64, payload []byte) error {
	if w.err != nil {
		return w.err
	}
	if !t.Valid() {
		return fmt.Errorf("frame: write: %w: %d", ErrUnknownType, uint8(t))
	}
	if max := w.lim.maxPayload(); uint64(len(payload)) > uint64(max) {
		return fmt.Errorf("frame: write %s: %w: %d bytes, limit %d", t, ErrTooLarge, len(payload), max)
	}
	seq := w.seq + 1
	w.buf = appendFrame(w.buf[:0], t, seq, epoch, payload)
	n, err := w.w.Write(w.buf)
	if err == nil && n != len(w.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = fmt.Errorf("frame: write %s seq %d: %w", t, seq, err)
		return w.err
	}
	w.seq = seq
	return nil
}

// WritePayload encodes p and sends it as a frame of p's type.
func (w *Writer) WritePayload(epoch uint64, p Payload) error {
	b, err := p.MarshalBinary()
	if err != nil {
		return fmt.Errorf("frame: write %s: %w", p.Type(), err)
	}
	return w.Write(p.Type(), epoch, b)
}

// appendFrame appends the wire form of one frame to b. The caller has checked the
// type and that the payload fits the 32-bit length field.
func appendFrame(b []byte, t Type, seq, epoch uint64, payload []byte) []byte {
	start := len(b)
	b = append(b, Magic...)
	b = append(b, Version, byte(t))
	b = binary.BigEndian.AppendUint16(b, 0)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = append(b, payload...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b[start:], castagnoli))
}

package frame

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Payload field encoding: fixed-width integers big endian; bool as one byte 0 or 1;
// string and []byte as a u32 length then the bytes; lists as a u32 count then the
// elements. Nothing is optional and nothing may follow the last field, so a payload
// has exactly one valid encoding per value.

// enc appends fields; the first failure sticks so encoders read straight through.
type enc struct {
	b     []byte
	start int
	err   error
}

func newEnc(b []byte) enc { return enc{b: b, start: len(b)} }

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

func (e *enc) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

func (e *enc) count(field string, n int) {
	if uint64(n) > math.MaxUint32 {
		e.fail(fmt.Errorf("%s: %d entries do not fit a 32-bit count", field, n))
		return
	}
	e.u32(uint32(n))
}

func (e *enc) str(field, s string) {
	e.count(field, len(s))
	e.b = append(e.b, s...)
}

func (e *enc) bytes(field string, p []byte) {
	e.count(field, len(p))
	e.b = append(e.b, p...)
}

func (e *enc) fail(err error) {
	if e.err == nil {
		e.err = err
	}
}

func (e *enc) result(t Type) ([]byte, error) {
	if e.err != nil {
		// Hand back the caller's buffer as it was, as an appender should.
		return e.b[:e.start], encodeErr(t, e.err)
	}
	return e.b, nil
}

func encodeErr(t Type, err error) error {
	return fmt.Errorf("frame: encode %s: %w: %w", t, ErrMalformed, err)
}

// dec consumes fields from a payload. The first failure sticks and later reads
// return zero values, so decoders read straight through and check once at the end.
// Every length and count is checked against the bytes that remain before anything
// is allocated for it, which bounds a decode's memory by the payload's size.
type dec struct {
	b   []byte
	err error
}

func (d *dec) take(field string, n int) []byte {
	if d.err != nil {
		return nil
	}
	if n > len(d.b) {
		d.err = fmt.Errorf("%s: need %d bytes, %d left", field, n, len(d.b))
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *dec) u8(field string) uint8 {
	if p := d.take(field, 1); p != nil {
		return p[0]
	}
	return 0
}

func (d *dec) u16(field string) uint16 {
	if p := d.take(field, 2); p != nil {
		return binary.BigEndian.Uint16(p)
	}
	return 0
}

func (d *dec) u32(field string) uint32 {
	if p := d.take(field, 4); p != nil {
		return binary.BigEndian.Uint32(p)
	}
	return 0
}

func (d *dec) u64(field string) uint64 {
	if p := d.take(field, 8); p != nil {
		return binary.BigEndian.Uint64(p)
	}
	return 0
}

func (d *dec) bool(field string) bool {
	switch v := d.u8(field); v {
	case 0:
		return false
	case 1:
		return true
	default:
		d.failf("%s: boolean byte %d", field, v)
		return false
	}
}

// count reads a list length and checks that the remaining bytes could hold that many
// elements of at least minSize bytes each, so a forged count cannot make the caller
// allocate a huge slice.
func (d *dec) count(field string, minSize int) int {
	n := d.u32(field + " count")
	if d.err != nil {
		return 0
	}
	if uint64(n)*uint64(minSize) > uint64(len(d.b)) {
		d.failf("%s: %d entries cannot fit in %d bytes", field, n, len(d.b))
		return 0
	}
	return int(n)
}

// bytes returns a slice of the payload itself, not a copy: payloads are large (pages of
// memory) and a Reader hands each frame's payload to its caller to own. Empty is nil.
func (d *dec) bytes(field string) []byte {
	n := d.u32(field + " length")
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(d.b)) {
		d.failf("%s: length %d, %d bytes left", field, n, len(d.b))
		return nil
	}
	if n == 0 {
		return nil
	}
	return d.take(field, int(n))
}

func (d *dec) str(field string) string { return string(d.bytes(field)) }

func (d *dec) failf(format string, args ...any) {
	if d.err == nil {
		d.err = fmt.Errorf(format, args...)
	}
}

// done reports the first failure, or trailing bytes if every field read cleanly.
func (d *dec) done(t Type) error {
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.b))
	}
	if d.err != nil {
		return fmt.Errorf("frame: decode %s: %w: %w", t, ErrMalformed, d.err)
	}
	return nil
}

package frame

import (
	"errors"
	"fmt"
	"hash/crc32"
)

// Frame layout, big endian. The header is fixed-size so a reader knows how much to
// read before it knows anything else, and the length comes last in it so that
// everything deciding whether to read the payload at all is already checked.
//
//	offset  size  field
//	     0     4  magic "FTRN"
//	     4     1  version (Version)
//	     5     1  type (Type)
//	     6     2  flags, reserved, must be 0
//	     8     8  seq: 1 for the first frame of a connection, then +1
//	    16     8  epoch the frame belongs to (0: none)
//	    24     4  payload length n
//	    28     n  payload (encoding depends on type)
//	  28+n     4  CRC32C (Castagnoli) of bytes [0, 28+n)
const (
	offMagic   = 0
	offVersion = 4
	offType    = 5
	offFlags   = 6
	offSeq     = 8
	offEpoch   = 16
	offLength  = 24

	// HeaderSize is the fixed size of a frame header.
	HeaderSize = 28
	// TrailerSize is the size of the CRC32C that ends every frame.
	TrailerSize = 4
)

// Magic starts every frame; a stream that does not is not ftrun talking.
const Magic = "FTRN"

// Version is the only protocol version this package speaks. A peer on another
// version is refused rather than guessed at: a misread checkpoint is worse than none.
const Version uint8 = 1

// DefaultMaxPayload bounds a frame's payload unless Limits says otherwise. Large
// enough for a sizeable chunk of image data, small enough that a peer cannot make the
// standby reserve unbounded memory per connection.
const DefaultMaxPayload = 16 << 20

// castagnoli is CRC32C, hardware-accelerated on amd64 and arm64, so checksumming every
// frame costs little next to the network. It detects corruption, not tampering: the
// auth package's TLS provides integrity against an attacker.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Limits bounds what a Reader accepts and a Writer produces.
type Limits struct {
	// MaxPayload is the largest payload length accepted; 0 means DefaultMaxPayload.
	MaxPayload uint32
}

// DefaultLimits are the limits both ends use unless configured otherwise.
func DefaultLimits() Limits { return Limits{MaxPayload: DefaultMaxPayload} }

func (l Limits) maxPayload() uint32 {
	if l.MaxPayload == 0 {
		return DefaultMaxPayload
	}
	return l.MaxPayload
}

// Errors a Reader, the payload decoders and the Sequencer return, wrapped with detail.
// Each is distinct so the transport can count and log them separately; all of them
// mean the connection can no longer be trusted and must be closed.
var (
	ErrBadMagic    = errors.New("bad magic")
	ErrVersion     = errors.New("unsupported protocol version")
	ErrUnknownType = errors.New("unknown frame type")
	ErrTooLarge    = errors.New("payload too large")
	ErrChecksum    = errors.New("checksum mismatch")
	ErrOutOfOrder  = errors.New("sequence gap")
	ErrReplay      = errors.New("sequence replayed")
	ErrTruncated   = errors.New("truncated inside a frame")
	ErrMalformed   = errors.New("malformed")
	ErrProtocol    = errors.New("epoch protocol violation")
)

// Type says what a frame's payload is.
type Type uint8

// Frame types. 0 is deliberately unused so that a zeroed header is never valid.
const (
	TypeHello Type = iota + 1
	TypeEpochBegin
	TypeImageData
	TypePageDelta
	TypeFileDelta
	TypeEpochCommit
	TypeAck
	TypeNack
	TypeHeartbeat
	TypeResyncRequest
)

var typeNames = [...]string{
	TypeHello:         "Hello",
	TypeEpochBegin:    "EpochBegin",
	TypeImageData:     "ImageData",
	TypePageDelta:     "PageDelta",
	TypeFileDelta:     "FileDelta",
	TypeEpochCommit:   "EpochCommit",
	TypeAck:           "Ack",
	TypeNack:          "Nack",
	TypeHeartbeat:     "Heartbeat",
	TypeResyncRequest: "ResyncRequest",
}

// Valid reports whether t is a type this version of the protocol defines.
func (t Type) Valid() bool { return t >= TypeHello && t <= TypeResyncRequest }

func (t Type) String() string {
	if t.Valid() {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Frame is one decoded frame. Payload is still encoded: decode it with
// DecodePayload, or the concrete type's UnmarshalBinary, once the type is known.
type Frame struct {
	Type    Type
	Seq     uint64
	Epoch   uint64
	Payload []byte
}

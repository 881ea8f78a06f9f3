package gate

import (
	"errors"
	"time"
)

// Gate holds every packet the program sends until the epoch that explains it is committed.
type Gate interface {
	// Cut assigns every packet held so far that has no epoch yet to epoch. ftrun calls
	// it while the program is frozen right after CRIU has dumped it, so packets that
	// arrive later belong to a later epoch. Cuts are monotonic; a repeated Cut with the
	// same epoch (a retried checkpoint) extends it.
	Cut(epoch uint64)
	// Release lets out, in one batch verdict, every packet assigned to epochs <= epoch.
	Release(epoch uint64) error
	// Discard drops every packet held (the state that sent them is lost, e.g. before a
	// local restore of an older epoch).
	Discard() error
	// Stats reports held packets and bytes, the age of the oldest held packet, the
	// totals released and dropped, and the queue bounds.
	Stats() Stats
	// Pressure reports whether held packets or bytes have reached 3/4 of their bounds:
	// the supervisor then starts the next epoch early instead of letting the kernel
	// drop packets.
	Pressure() bool
	// Pressured returns a channel that gets a value (non-blocking send, buffered 1)
	// when Pressure becomes true.
	Pressured() <-chan struct{}
	// Uncut reports whether a held packet has no epoch yet: output that the next
	// checkpoint's cut will explain.
	Uncut() bool
	// Waiting returns a channel that gets a value (non-blocking send, buffered 1)
	// whenever a packet is held.
	Waiting() <-chan struct{}
	Close() error
}

// Stats is a snapshot of a gate.
type Stats struct {
	HeldPackets int           // packets held now
	HeldBytes   int64         // their original lengths, summed
	OldestAge   time.Duration // age of the oldest held packet; 0 when none is held

	ReleasedPackets uint64 // let out since the gate opened
	ReleasedBytes   uint64
	DroppedPackets  uint64 // dropped by Discard or Close
	DroppedBytes    uint64

	// Lost counts packets the kernel numbered for the queue but never delivered to the
	// gate because its socket buffer overflowed; the kernel dropped them. They show as
	// a gap in packet ids, so they are counted when the next packet arrives.
	Lost uint64
	// Overruns counts the times the socket reported such an overflow (ENOBUFS).
	Overruns uint64

	CutEpoch      uint64 // highest epoch cut so far
	ReleasedEpoch uint64 // highest epoch released so far

	MaxPackets uint32 // the kernel queue's length bound
	MaxBytes   int64  // the byte bound that Pressure watches
}

// ErrClosed is returned by a gate's methods after Close.
var ErrClosed = errors.New("gate: closed")

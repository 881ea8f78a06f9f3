package gate

import (
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"
)

// ledger is the gate's bookkeeping: which packets are held, which epoch each belongs
// to, and what one batch verdict must say to let out a set of epochs. It performs no
// I/O and reads time only from its clock. It is not safe for concurrent use; NFQueue
// guards it with a mutex.
//
// Packets arrive with sequential kernel ids, so the held packets form a run of ids,
// oldest first. The ledger keeps that run as segments: one per Cut (a repeated Cut for
// the same epoch adds a segment with the same epoch), then the segments not yet cut.
// Epochs never decrease along the run, so the packets of all epochs up to any epoch are
// a prefix, and the last id of that prefix is the id a batch verdict needs. A verdict
// only ever covers whole segments, so the ledger needs no per-packet record.
type ledger struct {
	clock      clockwork.Clock
	maxPackets int
	maxBytes   int64

	segs        []segment
	heldPackets int
	heldBytes   int64

	seen   bool   // an id has been recorded
	lastID uint32 // the newest id recorded

	cutEpoch      uint64
	releasedEpoch uint64

	releasedPackets, releasedBytes uint64
	droppedPackets, droppedBytes   uint64
	lost                           uint64

	pressured bool
}

// segment is a run of held packets with consecutive ids (gaps are packets the kernel
// dropped) that share an epoch.
type segment struct {
	cut   bool
	epoch uint64 // valid when cut
	// sealed: a planned verdict covers the segment whole, so arrivals start a new one.
	sealed      bool
	first, last uint32
	packets     int
	bytes       int64
	since       time.Time // arrival of the segment's first packet
}

// verdictKind says what a planned batch verdict does.
type verdictKind int

const (
	verdictAccept verdictKind = iota
	verdictDrop
)

// verdictPlan is the outcome of planning a Release or a Discard.
type verdictPlan struct {
	kind  verdictKind
	epoch uint64 // the epoch released (accept only)
	// need is false when no packet is concerned: no verdict is sent (the kernel would
	// answer ENOENT to a batch verdict that matches nothing).
	need bool
	// upTo is the highest packet id the batch verdict covers: the kernel applies it to
	// every queued packet whose id is not after upTo.
	upTo    uint32
	packets int   // packets the verdict covers
	bytes   int64 // their bytes
	// heldPackets and heldBytes are the totals still held once the verdict is applied.
	heldPackets int
	heldBytes   int64
}

func newLedger(clock clockwork.Clock, maxPackets int, maxBytes int64) *ledger {
	return &ledger{clock: clock, maxPackets: maxPackets, maxBytes: maxBytes}
}

// idAfter reports whether packet id a comes after b, with serial-number arithmetic so
// that ids wrapping at 2^32 compare correctly (the kernel's nfq_id_after does the
// same). It is exact while fewer than 2^31 ids separate a and b.
func idAfter(a, b uint32) bool { return int32(a-b) > 0 }

// arrive records a packet the kernel queued: its id and its original length. It
// returns rose=true when this arrival makes Pressure become true. An id that is not
// after the newest one recorded is refused: the kernel numbers packets in order, so it
// would mean the ledger and the queue disagree.
func (l *ledger) arrive(id uint32, length int) (rose bool, err error) {
	if l.seen {
		if !idAfter(id, l.lastID) {
			return false, fmt.Errorf("gate: packet id %d arrived after id %d: ids must increase", id, l.lastID)
		}
		l.lost += uint64(id - l.lastID - 1)
	}
	l.seen, l.lastID = true, id
	if n := len(l.segs); n == 0 || l.segs[n-1].cut || l.segs[n-1].sealed {
		l.segs = append(l.segs, segment{first: id, since: l.clock.Now()})
	}
	s := &l.segs[len(l.segs)-1]
	s.last = id
	s.packets++
	s.bytes += int64(length)
	l.heldPackets++
	l.heldBytes += int64(length)
	return l.updatePressure(), nil
}

// cut assigns every held packet without an epoch to epoch and returns the epoch
// actually used. Cuts are monotonic: an epoch lower than an earlier cut would let
// packets out with an epoch that does not explain them, so it is raised to the
// earlier cut (held longer, never released early).
func (l *ledger) cut(epoch uint64) uint64 {
	if epoch < l.cutEpoch {
		epoch = l.cutEpoch
	}
	l.cutEpoch = epoch
	for i := len(l.segs) - 1; i >= 0 && !l.segs[i].cut; i-- {
		l.segs[i].cut = true
		l.segs[i].epoch = epoch
	}
	return epoch
}

// uncut reports whether a held packet has no epoch yet.
func (l *ledger) uncut() bool {
	n := len(l.segs)
	return n > 0 && !l.segs[n-1].cut
}

// planRelease computes the batch verdict that lets out every packet assigned to an
// epoch <= epoch. Packets not yet cut are never included.
func (l *ledger) planRelease(epoch uint64) verdictPlan {
	p := verdictPlan{kind: verdictAccept, epoch: epoch}
	for _, s := range l.segs {
		if !s.cut || s.epoch > epoch {
			break
		}
		p.need, p.upTo = true, s.last
		p.packets += s.packets
		p.bytes += s.bytes
	}
	p.heldPackets = l.heldPackets - p.packets
	p.heldBytes = l.heldBytes - p.bytes
	return p
}

// planDiscard computes the batch verdict that drops every held packet, cut or not. It
// seals the newest segment, so that packets arriving before the plan is committed are
// kept apart and stay held.
func (l *ledger) planDiscard() verdictPlan {
	p := verdictPlan{kind: verdictDrop}
	if n := len(l.segs); n > 0 {
		l.segs[n-1].sealed = true
		p.need, p.upTo = true, l.segs[n-1].last
		p.packets, p.bytes = l.heldPackets, l.heldBytes
	}
	return p
}

// commit records that the kernel applied p: the segments it covers are no longer held.
// Packets that arrived after p was planned have later ids and stay held.
func (l *ledger) commit(p verdictPlan) {
	if p.kind == verdictAccept && p.epoch > l.releasedEpoch {
		l.releasedEpoch = p.epoch
	}
	if !p.need {
		return
	}
	k := 0
	for k < len(l.segs) && !idAfter(l.segs[k].last, p.upTo) {
		s := l.segs[k]
		l.heldPackets -= s.packets
		l.heldBytes -= s.bytes
		if p.kind == verdictAccept {
			l.releasedPackets += uint64(s.packets)
			l.releasedBytes += uint64(s.bytes)
		} else {
			l.droppedPackets += uint64(s.packets)
			l.droppedBytes += uint64(s.bytes)
		}
		k++
	}
	l.segs = append(l.segs[:0], l.segs[k:]...)
	l.updatePressure()
}

// pressure reports whether held packets or bytes have reached 3/4 of their bounds.
func (l *ledger) pressure() bool {
	return (l.maxPackets > 0 && l.heldPackets*4 >= l.maxPackets*3) ||
		(l.maxBytes > 0 && l.heldBytes*4 >= l.maxBytes*3)
}

// updatePressure refreshes the pressure state and reports whether it just became true.
func (l *ledger) updatePressure() (rose bool) {
	now := l.pressure()
	rose = now && !l.pressured
	l.pressured = now
	return rose
}

// stats reports the ledger's part of Stats.
func (l *ledger) stats() Stats {
	st := Stats{
		HeldPackets:     l.heldPackets,
		HeldBytes:       l.heldBytes,
		ReleasedPackets: l.releasedPackets,
		ReleasedBytes:   l.releasedBytes,
		DroppedPackets:  l.droppedPackets,
		DroppedBytes:    l.droppedBytes,
		Lost:            l.lost,
		CutEpoch:        l.cutEpoch,
		ReleasedEpoch:   l.releasedEpoch,
		MaxPackets:      uint32(l.maxPackets),
		MaxBytes:        l.maxBytes,
	}
	if len(l.segs) > 0 {
		st.OldestAge = l.clock.Since(l.segs[0].since)
	}
	return st
}

package epochs

import (
	"errors"
	"fmt"
	"strings"
)

// Mode says when the program's output may leave (ftrun run --commit).
type Mode string

const (
	Standby Mode = "standby" // once the standby acknowledged the epoch that explains it
	Local   Mode = "local"   // once that epoch is durable on local disk
	Off     Mode = "off"     // at once: no gate holds it
)

// Config is what the machine is told once.
type Config struct {
	Mode Mode
	// Standby: there is a standby to ship epochs to (ftrun run --standby), whatever
	// the mode.
	Standby bool
}

// Event is something that happened, fed to Step.
type Event interface{ event() }

// Cut: the dump of Epoch froze the program and the gate assigned to Epoch every
// packet it held that had no epoch yet. A retried checkpoint cuts the same epoch again.
type Cut struct{ Epoch uint64 }

// Committed: the image set of Epoch was committed in the local store.
type Committed struct{ Epoch uint64 }

// Abandoned: the dump of Epoch was cut in the gate and then failed; Epoch will not
// commit, and its number is taken again by the next dump, whose cut extends it. The
// output cut for it is on its way nowhere until then (see Stalled).
type Abandoned struct{ Epoch uint64 }

// Durable: the image set of Epoch is on stable storage here.
type Durable struct{ Epoch uint64 }

// Acked: the standby acknowledged Epoch (it holds it and will restore it).
type Acked struct{ Epoch uint64 }

// Nacked: the standby refused Epoch, or the ship failed. Full: it refused for want
// of space, and keeps its last epoch.
type Nacked struct {
	Epoch uint64
	Full  bool
}

// LinkUp: the standby is connected and heard.
type LinkUp struct{}

// LinkDown: the standby is not connected; Why says why.
type LinkDown struct{ Why string }

// Incarnation: a new gate, for a restored, freshly started, adopted or taken-over
// program. All its output belongs to epochs after After, the newest epoch number
// already used. Takeover: this host's copy takes the service over from its peer,
// whose standby (this host) acknowledged the epochs counted so far; the count of
// what the standby of this copy holds starts again.
type Incarnation struct {
	After    uint64
	Takeover bool
}

func (Cut) event()         {}
func (Committed) event()   {}
func (Abandoned) event()   {}
func (Durable) event()     {}
func (Acked) event()       {}
func (Nacked) event()      {}
func (LinkUp) event()      {}
func (LinkDown) event()    {}
func (Incarnation) event() {}

// Ready is what a step made due; whoever stepped carries it out.
type Ready struct {
	// Release: let out the current gate's output of every epoch <= Release (0:
	// nothing new may leave).
	Release uint64
	// Ship: hand this committed epoch to the standby link (0: none).
	Ship uint64
	// Protection, when not nil, is what the protection changed to.
	Protection *Protection
}

// Empty says there is nothing to do.
func (r Ready) Empty() bool { return r == Ready{} }

func (r Ready) String() string {
	var parts []string
	if r.Release > 0 {
		parts = append(parts, fmt.Sprintf("release %d", r.Release))
	}
	if r.Ship > 0 {
		parts = append(parts, fmt.Sprintf("ship %d", r.Ship))
	}
	if r.Protection != nil {
		parts = append(parts, "protection "+r.Protection.String())
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// Kind is how far the program is protected.
type Kind int

const (
	// LocalOnly: there is no standby; checkpoints stay on this host.
	LocalOnly Kind = iota
	// Protected: the standby is connected and takes the epochs.
	Protected
	// Unreachable: the standby is not connected (Protection.Why).
	Unreachable
	// StandbyFull: the standby refused the newest epoch for want of space; it keeps
	// its last one.
	StandbyFull
)

// Protection is whether the program is protected, and why not.
type Protection struct {
	Kind Kind
	Why  string // for Unreachable
}

func (p Protection) String() string {
	switch p.Kind {
	case LocalOnly:
		return "local"
	case Protected:
		return "protected"
	case StandbyFull:
		return "unprotected: standby full"
	}
	return "unprotected: " + p.Why
}

// Pins are the epochs the local store must not prune.
type Pins struct {
	Durable uint64 // the newest on stable storage here: a crash restores it
	Acked   uint64 // the standby's newest, which the next delta is computed against
}

// ErrBackwards reports an epoch that would break "epochs only grow within one ftrun".
var ErrBackwards = errors.New("epochs: epoch went backwards")

// Machine is the state of the Output Rule. Its zero value is not ready: use New.
type Machine struct {
	cfg Config
	// newest epoch cut in the current gate; newest committed, durable here and
	// acknowledged by the standby
	cut, committed, durable, acked uint64
	up                             bool   // the standby link is up
	why                            string // why it is down
	full                           bool   // the standby's disk is full
	inc                            int    // incarnations begun
	after                          uint64 // the current gate's output belongs to epochs > after
	released                       uint64 // the current gate's output released up to here
	offered                        uint64 // newest epoch handed to the link
	abandoned                      uint64 // the cut epoch whose dump failed; 0: none
	prot                           Protection
}

// New returns a machine before any incarnation: the link, if any, is down.
func New(cfg Config) *Machine {
	m := &Machine{cfg: cfg, why: "not connected yet"}
	m.prot = m.protection()
	return m
}

// Step feeds the machine one event and returns what became due. An error reports an
// event that contradicts what the machine knows; it is ignored, or, for an
// incarnation, made safe, and what became due is still returned.
func (m *Machine) Step(ev Event) (Ready, error) {
	err := m.apply(ev)
	var rd Ready
	if p := min(m.Safe(), m.cut); p > m.released {
		rd.Release, m.released = p, p
	}
	if c := m.committed; m.cfg.Standby && c > m.offered {
		rd.Ship, m.offered = c, c
	}
	if p := m.protection(); p != m.prot {
		m.prot = p
		rd.Protection = &p
	}
	return rd, err
}

func (m *Machine) apply(ev Event) error {
	switch ev := ev.(type) {
	case Cut:
		if ev.Epoch <= m.after || ev.Epoch < m.cut {
			return fmt.Errorf("%w: cut %d after cut %d, in a gate for epochs after %d", ErrBackwards, ev.Epoch, m.cut, m.after)
		}
		m.cut, m.abandoned = ev.Epoch, 0
	case Abandoned:
		// Only the newest cut, not committed, can be abandoned; a failure before
		// the cut left nothing in the gate for it.
		if ev.Epoch == m.cut && ev.Epoch > m.known() {
			m.abandoned = ev.Epoch
		}
	case Committed:
		if ev.Epoch <= m.known() {
			return fmt.Errorf("%w: committed %d, but epoch %d is known already", ErrBackwards, ev.Epoch, m.known())
		}
		m.committed = ev.Epoch
	case Durable:
		if ev.Epoch > m.known() {
			return fmt.Errorf("epochs: durable %d, but no epoch after %d was committed", ev.Epoch, m.known())
		}
		m.durable = max(m.durable, ev.Epoch)
	case Acked:
		if ev.Epoch > m.offered {
			return fmt.Errorf("epochs: acked %d, but no epoch after %d was shipped", ev.Epoch, m.offered)
		}
		m.acked = max(m.acked, ev.Epoch)
		m.full = false
	case Nacked:
		m.full = m.full || ev.Full
	case LinkUp:
		m.up, m.why, m.full = true, "", false
	case LinkDown:
		m.up, m.why = false, ev.Why
	case Incarnation:
		return m.incarnation(ev)
	default:
		return fmt.Errorf("epochs: unknown event %T", ev)
	}
	return nil
}

// known is the newest epoch number used so far: committed here, or found committed
// when an incarnation began.
func (m *Machine) known() uint64 { return max(m.committed, m.after) }

// incarnation begins a new gate, which has cut nothing yet. Its output may be released
// only by epochs after every one known so far, even when told otherwise. A dump cut
// in the old gate but never committed leaves its epoch number free for the new one.
func (m *Machine) incarnation(ev Incarnation) error {
	var err error
	after := ev.After
	if known := m.known(); after < known {
		err = fmt.Errorf("%w: an incarnation after epoch %d, but epoch %d is known", ErrBackwards, after, known)
		after = known
	}
	m.inc++
	m.after, m.cut, m.released, m.abandoned = after, after, after, 0
	if ev.Takeover {
		m.acked, m.full = 0, false
	}
	return err
}

// Safe is the newest epoch whose output may leave under the rule (see the package
// documentation), in whichever incarnation it was sent; 0: none.
func (m *Machine) Safe() uint64 {
	switch {
	case m.cfg.Mode == Local:
		return m.durable
	case m.cfg.Mode == Standby && m.cfg.Standby && m.up:
		return m.acked
	case m.cfg.Mode == Standby:
		return m.durable
	}
	return 0
}

// Drained reports whether every epoch cut in the current gate has had its output
// released: nothing is on its way, so a new epoch now would be the only one in flight.
// An abandoned cut is on its way nowhere: only the epochs before it count.
func (m *Machine) Drained() bool {
	if m.Stalled() {
		return m.released >= m.known()
	}
	return m.released >= m.cut
}

// Stalled reports whether output is held for an abandoned epoch: no dump in flight
// will let it out, the next one will (it cuts the same epoch again).
func (m *Machine) Stalled() bool {
	return m.abandoned != 0 && m.abandoned == m.cut && m.cut > m.released
}

// Pins are the epochs the local store must keep now.
func (m *Machine) Pins() Pins { return Pins{Durable: m.durable, Acked: m.acked} }

// Protection is the program's protection now.
func (m *Machine) Protection() Protection { return m.prot }

func (m *Machine) protection() Protection {
	switch {
	case !m.cfg.Standby:
		return Protection{Kind: LocalOnly}
	case !m.up:
		return Protection{Kind: Unreachable, Why: m.why}
	case m.full:
		return Protection{Kind: StandbyFull}
	}
	return Protection{Kind: Protected}
}

// String shows the whole state, for tests and debugging.
func (m *Machine) String() string {
	link := "none"
	if m.cfg.Standby {
		link = "up"
		if !m.up {
			link = fmt.Sprintf("down(%s)", m.why)
		}
	}
	return fmt.Sprintf("mode=%s link=%s cut=%d committed=%d durable=%d acked=%d offered=%d inc=%d after=%d released=%d safe=%d pins=%d,%d protection=%q drained=%v stalled=%v",
		m.cfg.Mode, link, m.cut, m.committed, m.durable, m.acked, m.offered, m.inc, m.after, m.released, m.Safe(),
		m.durable, m.acked, m.prot, m.Drained(), m.Stalled())
}

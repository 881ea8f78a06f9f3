package frame

import "fmt"

// Role is the part an ftrun end plays on a connection.
type Role uint8

// Roles. 0 is unused so that a zero Role is never mistaken for one.
const (
	RolePrimary Role = iota + 1
	RoleStandby
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleStandby:
		return "standby"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// peer is the role on the other end of the connection.
func (r Role) peer() Role {
	if r == RolePrimary {
		return RoleStandby
	}
	return RolePrimary
}

// Sequencer validates the order of the frames one end receives within the epoch
// protocol. It is pure (no I/O, no clock): the connection loop feeds it every
// accepted frame and acts on a frame only if Step returns nil.
//
// A standby's Sequencer checks the primary's stream: Hello first; then per epoch
// EpochBegin (epoch e > last committed), any ImageData, PageDelta and FileDelta
// frames of epoch e, and EpochCommit for e. Heartbeat may come at any point after
// Hello. A primary's Sequencer checks the standby's stream: Hello first, then Ack,
// Nack, ResyncRequest and Heartbeat, with acks strictly increasing and never ahead of
// what the primary has committed (see Sent), because an ack releases held output.
//
// A refused frame leaves the Sequencer's state as it was, so an out-of-order or
// replayed epoch can never move what counts as committed. The connection is still
// to be dropped: the stream is no longer the one the protocol describes.
//
// On the standby, accepting EpochCommit advances Committed before the store has
// made the epoch durable. If the store then fails, the standby Nacks and drops the
// connection; the next connection starts a new Sequencer from the store's real state.
type Sequencer struct {
	role      Role
	helloSeen bool
	committed uint64
	// open is the epoch between its EpochBegin and EpochCommit (standby), 0 if none.
	open uint64
	// sent is the newest epoch the primary has sent EpochCommit for (primary).
	sent uint64
}

// NewSequencer returns a Sequencer for the end playing role, whose newest committed
// epoch is lastCommitted (0: none). On a primary that is the newest acked epoch.
func NewSequencer(role Role, lastCommitted uint64) *Sequencer {
	return &Sequencer{role: role, committed: lastCommitted, sent: lastCommitted}
}

// Committed is the newest epoch committed as far as this stream shows: committed on
// the standby's side, acked on the primary's.
func (s *Sequencer) Committed() uint64 { return s.committed }

// Open is the epoch currently being received on a standby, or 0 between epochs.
func (s *Sequencer) Open() uint64 { return s.open }

// Sent records, on a primary, that EpochCommit for epoch went out, so acks up to
// epoch become acceptable. Epochs must increase.
func (s *Sequencer) Sent(epoch uint64) error {
	if s.role != RolePrimary {
		return fmt.Errorf("frame: %w: only a primary sends epochs, this end is %s", ErrProtocol, s.role)
	}
	if epoch <= s.sent {
		return fmt.Errorf("frame: %w: sent epoch %d after epoch %d", ErrProtocol, epoch, s.sent)
	}
	s.sent = epoch
	return nil
}

// Step checks that f may come next and, if so, advances. Errors wrap ErrProtocol
// (or ErrMalformed for a payload the check needed but could not decode) and say what
// was expected instead.
func (s *Sequencer) Step(f Frame) error {
	if !f.Type.Valid() {
		return fmt.Errorf("frame: %w: %s", ErrUnknownType, f.Type)
	}
	if f.Type == TypeHello {
		return s.stepHello(f)
	}
	if !s.helloSeen {
		return s.unexpected(f)
	}
	switch s.role {
	case RoleStandby:
		return s.stepStandby(f)
	case RolePrimary:
		return s.stepPrimary(f)
	}
	return fmt.Errorf("frame: %w: sequencer has no role (%s)", ErrProtocol, s.role)
}

func (s *Sequencer) stepHello(f Frame) error {
	if s.helloSeen {
		return s.unexpected(f)
	}
	var h Hello
	if err := h.UnmarshalBinary(f.Payload); err != nil {
		return err
	}
	if h.Version != Version {
		return fmt.Errorf("frame: %w: Hello from protocol version %d, this end speaks %d", ErrVersion, h.Version, Version)
	}
	if want := s.role.peer().String(); h.Role != want && !(s.role == RolePrimary && h.Role == HelloRoleLive) {
		return fmt.Errorf("frame: %w: Hello from a %q, expected a %q", ErrProtocol, h.Role, want)
	}
	s.helloSeen = true
	return nil
}

func (s *Sequencer) stepStandby(f Frame) error {
	switch f.Type {
	case TypeHeartbeat:
		return nil
	case TypeEpochBegin:
		if s.open != 0 {
			return s.unexpected(f)
		}
		if f.Epoch <= s.committed {
			return fmt.Errorf("frame: %w: EpochBegin for epoch %d, already committed epoch %d", ErrProtocol, f.Epoch, s.committed)
		}
		var b EpochBegin
		if err := b.UnmarshalBinary(f.Payload); err != nil {
			return err
		}
		// The base has to be something this standby committed; whether the store
		// still holds exactly that epoch is the store's call (NackBadBase).
		if !b.Full && b.BaseEpoch > s.committed {
			return fmt.Errorf("frame: %w: epoch %d is a delta against epoch %d, newest committed is %d", ErrProtocol, f.Epoch, b.BaseEpoch, s.committed)
		}
		s.open = f.Epoch
		return nil
	case TypeImageData, TypePageDelta, TypeFileDelta:
		if s.open == 0 || f.Epoch != s.open {
			return s.unexpected(f)
		}
		return nil
	case TypeEpochCommit:
		if s.open == 0 || f.Epoch != s.open {
			return s.unexpected(f)
		}
		s.committed, s.open = f.Epoch, 0
		return nil
	}
	return s.unexpected(f)
}

func (s *Sequencer) stepPrimary(f Frame) error {
	switch f.Type {
	case TypeHeartbeat, TypeResyncRequest:
		return nil
	case TypeAck:
		var a Ack
		if err := a.UnmarshalBinary(f.Payload); err != nil {
			return err
		}
		if a.Epoch != f.Epoch {
			return fmt.Errorf("frame: %w: Ack for epoch %d in a frame of epoch %d", ErrProtocol, a.Epoch, f.Epoch)
		}
		switch {
		case f.Epoch <= s.committed:
			return fmt.Errorf("frame: %w: Ack for epoch %d, already acked epoch %d", ErrProtocol, f.Epoch, s.committed)
		case f.Epoch > s.sent:
			return fmt.Errorf("frame: %w: Ack for epoch %d, newest epoch sent is %d", ErrProtocol, f.Epoch, s.sent)
		}
		s.committed = f.Epoch
		return nil
	case TypeNack:
		var n Nack
		if err := n.UnmarshalBinary(f.Payload); err != nil {
			return err
		}
		if n.Epoch != f.Epoch {
			return fmt.Errorf("frame: %w: Nack for epoch %d in a frame of epoch %d", ErrProtocol, n.Epoch, f.Epoch)
		}
		if f.Epoch <= s.committed {
			return fmt.Errorf("frame: %w: Nack for epoch %d, already acked epoch %d", ErrProtocol, f.Epoch, s.committed)
		}
		return nil
	}
	return s.unexpected(f)
}

// unexpected describes f against what the current state allows.
func (s *Sequencer) unexpected(f Frame) error {
	return fmt.Errorf("frame: %w: got %s (epoch %d) as %s, expected %s", ErrProtocol, f.Type, f.Epoch, s.role, s.expected())
}

func (s *Sequencer) expected() string {
	switch {
	case !s.helloSeen:
		return "Hello"
	case s.role == RolePrimary:
		return fmt.Sprintf("Ack/Nack for an epoch in (%d, %d], ResyncRequest or Heartbeat", s.committed, s.sent)
	case s.open != 0:
		return fmt.Sprintf("ImageData/PageDelta/FileDelta or EpochCommit for epoch %d, or Heartbeat", s.open)
	default:
		return fmt.Sprintf("EpochBegin for an epoch after %d, or Heartbeat", s.committed)
	}
}

package frame

import (
	"errors"
	"testing"
)

// step is one line of a Sequencer script: either the primary records a sent commit
// (sent != 0) or a frame arrives and Step must return want.
type step struct {
	sent uint64
	f    Frame
	want error
}

func mk(t Type, epoch uint64, p Payload) step {
	b, err := p.AppendBinary(nil)
	if err != nil {
		panic(err)
	}
	return step{f: Frame{Type: t, Epoch: epoch, Payload: b}}
}

func (s step) fails(err error) step { s.want = err; return s }

func hello(role string) step {
	return mk(TypeHello, 0, &Hello{Version: Version, Service: "svc", Host: "h", Role: role})
}
func full(e uint64) step        { return mk(TypeEpochBegin, e, &EpochBegin{Full: true, Files: 1}) }
func delta(e, base uint64) step { return mk(TypeEpochBegin, e, &EpochBegin{BaseEpoch: base}) }
func image(e uint64) step       { return mk(TypeImageData, e, &ImageData{Name: "core-1.img", Last: true}) }
func pages(e uint64) step {
	return mk(TypePageDelta, e, &PageDelta{Pagemap: "pagemap-1.img", CopyRuns: []CopyRun{{NrPages: 1}}})
}
func file(e uint64) step   { return mk(TypeFileDelta, e, &FileDelta{Path: "/data"}) }
func commit(e uint64) step { return mk(TypeEpochCommit, e, &EpochCommit{Manifest: []byte("{}")}) }
func hb() step             { return mk(TypeHeartbeat, 0, &Heartbeat{SentUnixNano: 1}) }
func ack(e uint64) step    { return mk(TypeAck, e, &Ack{Epoch: e}) }
func nack(e uint64) step   { return mk(TypeNack, e, &Nack{Epoch: e, Code: NackBadBase}) }
func resync() step         { return mk(TypeResyncRequest, 0, &ResyncRequest{Reason: "lost base"}) }
func sent(e uint64) step   { return step{sent: e} }
func raw(t Type, e uint64, b []byte) step {
	return step{f: Frame{Type: t, Epoch: e, Payload: b}}
}

func TestSequencer(t *testing.T) {
	tests := []struct {
		name          string
		role          Role
		lastCommitted uint64
		script        []step
		wantCommitted uint64
		wantOpen      uint64
	}{
		{
			name: "standby: full epoch then deltas", role: RoleStandby,
			script: []step{
				hello("primary"), hb(),
				full(1), image(1), pages(1), hb(), file(1), commit(1),
				hb(), delta(2, 1), pages(2), file(2), commit(2),
				delta(3, 1), commit(3),
			},
			wantCommitted: 3,
		},
		{
			name: "standby: epochs may skip numbers", role: RoleStandby, lastCommitted: 4,
			script:        []step{hello("primary"), delta(9, 4), commit(9), full(12)},
			wantCommitted: 9, wantOpen: 12,
		},
		{
			name: "standby: nothing before Hello", role: RoleStandby,
			script: []step{
				full(1).fails(ErrProtocol), hb().fails(ErrProtocol), image(1).fails(ErrProtocol),
				hello("primary"), full(1),
			},
			wantOpen: 1,
		},
		{
			name: "standby: bad Hellos", role: RoleStandby,
			script: []step{
				hello("standby").fails(ErrProtocol),
				hello("").fails(ErrProtocol),
				mk(TypeHello, 0, &Hello{Version: 2, Role: "primary"}).fails(ErrVersion),
				raw(TypeHello, 0, []byte{1, 2, 3}).fails(ErrMalformed),
				hello("primary"),
				hello("primary").fails(ErrProtocol),
			},
		},
		{
			name: "standby: replayed epoch refused, committed untouched", role: RoleStandby, lastCommitted: 5,
			script: []step{
				hello("primary"),
				full(5).fails(ErrProtocol), full(3).fails(ErrProtocol), delta(4, 3).fails(ErrProtocol),
				commit(5).fails(ErrProtocol), image(5).fails(ErrProtocol),
				full(6), commit(6),
				full(6).fails(ErrProtocol), commit(6).fails(ErrProtocol),
			},
			wantCommitted: 6,
		},
		{
			name: "standby: frames outside their epoch", role: RoleStandby,
			script: []step{
				hello("primary"),
				image(1).fails(ErrProtocol), pages(1).fails(ErrProtocol), file(1).fails(ErrProtocol), commit(1).fails(ErrProtocol),
				full(1),
				image(2).fails(ErrProtocol), pages(0).fails(ErrProtocol), file(2).fails(ErrProtocol),
				commit(2).fails(ErrProtocol), full(2).fails(ErrProtocol),
				image(1),
			},
			wantOpen: 1,
		},
		{
			name: "standby: delta bases", role: RoleStandby, lastCommitted: 7,
			script: []step{
				hello("primary"),
				delta(8, 8).fails(ErrProtocol), // base not committed (it is the epoch itself)
				delta(9, 8).fails(ErrProtocol), // base newer than anything committed
				raw(TypeEpochBegin, 8, []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}).fails(ErrMalformed), // delta against 0
				raw(TypeEpochBegin, 8, nil).fails(ErrMalformed),
				delta(8, 2), // old but committed: the store decides whether it still has it
			},
			wantCommitted: 7, wantOpen: 8,
		},
		{
			name: "standby: standby->primary frames refused", role: RoleStandby,
			script: []step{
				hello("primary"), full(1),
				ack(1).fails(ErrProtocol), nack(1).fails(ErrProtocol), resync().fails(ErrProtocol),
				commit(1),
			},
			wantCommitted: 1,
		},
		{
			name: "standby: unknown type", role: RoleStandby,
			script: []step{hello("primary"), raw(Type(77), 1, nil).fails(ErrUnknownType)},
		},
		{
			name: "primary: acks, nacks, resync", role: RolePrimary, lastCommitted: 10,
			script: []step{
				hello("standby"), hb(),
				sent(11), ack(11),
				sent(12), nack(12), resync(), hb(),
				sent(13), ack(13),
			},
			wantCommitted: 13,
		},
		{
			name: "primary: acks only for what was sent, once", role: RolePrimary, lastCommitted: 10,
			script: []step{
				ack(11).fails(ErrProtocol), // before Hello
				hello("primary").fails(ErrProtocol),
				hello("standby"),
				ack(11).fails(ErrProtocol), // not sent yet: would release uncommitted output
				sent(11), sent(12),
				ack(10).fails(ErrProtocol),
				ack(13).fails(ErrProtocol),
				ack(12), // acks may cover several epochs at once
				ack(11).fails(ErrProtocol), ack(12).fails(ErrProtocol),
				nack(12).fails(ErrProtocol), // contradicts the ack
				raw(TypeAck, 13, mk(0, 0, &Ack{Epoch: 12}).f.Payload).fails(ErrProtocol),
				raw(TypeNack, 13, mk(0, 0, &Nack{Epoch: 14, Code: NackCorrupt}).f.Payload).fails(ErrProtocol),
				raw(TypeAck, 13, []byte{1}).fails(ErrMalformed),
				raw(TypeNack, 13, nil).fails(ErrMalformed),
				nack(13),
			},
			wantCommitted: 12,
		},
		{
			name: "primary: primary->standby frames refused", role: RolePrimary,
			script: []step{
				hello("standby"), sent(1),
				full(1).fails(ErrProtocol), image(1).fails(ErrProtocol), pages(1).fails(ErrProtocol),
				file(1).fails(ErrProtocol), commit(1).fails(ErrProtocol),
				ack(1),
			},
			wantCommitted: 1,
		},
		{
			name: "primary: sent epochs increase", role: RolePrimary, lastCommitted: 3,
			script: []step{
				sent(3).fails(ErrProtocol), sent(4), sent(4).fails(ErrProtocol), sent(2).fails(ErrProtocol), sent(5),
			},
			wantCommitted: 3,
		},
		{
			name: "standby: Sent is a primary's call", role: RoleStandby,
			script: []step{sent(1).fails(ErrProtocol)},
		},
		{
			name: "no role", role: 0,
			script: []step{hello("primary"), hb().fails(ErrProtocol)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewSequencer(tt.role, tt.lastCommitted)
			for i, st := range tt.script {
				var err error
				what := ""
				if st.sent != 0 {
					err, what = s.Sent(st.sent), "Sent"
				} else {
					err, what = s.Step(st.f), st.f.Type.String()
				}
				if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
					t.Fatalf("step %d (%s epoch %d): err = %v, want %v", i, what, st.f.Epoch+st.sent, err, st.want)
				}
			}
			if got := s.Committed(); got != tt.wantCommitted {
				t.Errorf("Committed() = %d, want %d", got, tt.wantCommitted)
			}
			if got := s.Open(); got != tt.wantOpen {
				t.Errorf("Open() = %d, want %d", got, tt.wantOpen)
			}
		})
	}
}

// TestSequencerRefusalLeavesState checks, for every frame a standby in the middle of
// an epoch refuses, that the refusal changed nothing.
func TestSequencerRefusalLeavesState(t *testing.T) {
	bad := []step{full(2), full(9), delta(3, 2), image(3), commit(3), commit(1), ack(2), hello("primary")}
	for _, b := range bad {
		s := NewSequencer(RoleStandby, 1)
		for _, st := range []step{hello("primary"), full(2), image(2)} {
			if err := s.Step(st.f); err != nil {
				t.Fatal(err)
			}
		}
		before := *s
		if err := s.Step(b.f); !errors.Is(err, ErrProtocol) {
			t.Fatalf("%s epoch %d: err = %v, want ErrProtocol", b.f.Type, b.f.Epoch, err)
		}
		if *s != before {
			t.Fatalf("%s epoch %d: refused frame changed state %+v -> %+v", b.f.Type, b.f.Epoch, before, *s)
		}
	}
}

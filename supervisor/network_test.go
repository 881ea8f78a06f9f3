package supervisor

import (
	"fmt"
	"log/slog"
	"testing"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/supervisor/gate"
)

func TestResolveCommit(t *testing.T) {
	for _, c := range []struct {
		mode         CommitMode
		net, standby bool
		want         CommitMode
		wantErr      bool
	}{
		{"", true, true, CommitStandby, false},
		{"", true, false, CommitOff, false},
		{"", false, true, CommitOff, false},
		{CommitLocal, true, false, CommitLocal, false},
		{CommitLocal, false, false, "", true},
		{CommitStandby, true, false, "", true},
		{CommitStandby, false, true, "", true},
		{CommitOff, false, false, CommitOff, false},
	} {
		got, err := resolveCommit(c.mode, c.net, c.standby)
		if got != c.want || (err != nil) != c.wantErr {
			t.Errorf("resolveCommit(%q, net=%v, standby=%v) = %q, %v; want %q, error %v", c.mode, c.net, c.standby, got, err, c.want, c.wantErr)
		}
	}
}

func TestReleaseTarget(t *testing.T) {
	for _, c := range []struct {
		mode           CommitMode
		up             bool
		acked, durable uint64
		want           uint64
	}{
		{CommitStandby, true, 4, 7, 4},  // only what the standby holds
		{CommitStandby, false, 4, 7, 7}, // standby gone: unprotected, local durability
		{CommitLocal, true, 4, 7, 7},
		{CommitLocal, false, 0, 0, 0},
		{CommitOff, true, 4, 7, 0},
	} {
		if got := releaseTarget(c.mode, c.up, c.acked, c.durable); got != c.want {
			t.Errorf("releaseTarget(%q, up=%v, acked=%d, durable=%d) = %d, want %d", c.mode, c.up, c.acked, c.durable, got, c.want)
		}
	}
}

func TestKeepConnections(t *testing.T) {
	for _, c := range []struct {
		net                    bool
		mode                   CommitMode
		takeover, newest, want bool
	}{
		{true, CommitLocal, false, true, true},    // a crash here, behind the gate
		{true, CommitStandby, false, true, true},  // the same with a standby
		{true, CommitOff, false, true, false},     // no gate: the peers saw the sockets close
		{true, CommitOff, true, true, true},       // a standby's take-over (its copy runs ungated)
		{true, CommitLocal, false, false, false},  // an older epoch: behind what peers were shown
		{true, CommitStandby, true, false, false}, // the same on a take-over
		{false, CommitOff, true, true, false},     // no address of its own
	} {
		if got := keepConnections(c.net, c.mode, c.takeover, c.newest); got != c.want {
			t.Errorf("keepConnections(net=%v, %q, takeover=%v, newest=%v) = %v, want %v", c.net, c.mode, c.takeover, c.newest, got, c.want)
		}
	}
}

func TestParseCommitMode(t *testing.T) {
	if _, err := ParseCommitMode("remote"); err == nil {
		t.Fatal("ParseCommitMode accepted a mode that does not exist")
	}
	if m, err := ParseCommitMode("local"); err != nil || m != CommitLocal {
		t.Fatalf("ParseCommitMode(local) = %q, %v", m, err)
	}
}

// recordingGate is a Gate that records releases.
type recordingGate struct {
	gate.Gate // unused methods panic
	released  []uint64
	closed    bool
}

func (g *recordingGate) Release(epoch uint64) error {
	if g.closed {
		return gate.ErrClosed
	}
	g.released = append(g.released, epoch)
	return nil
}

func (g *recordingGate) Stats() gate.Stats { return gate.Stats{} }

func (g *recordingGate) Close() error { g.closed = true; return nil }

// Under --commit standby the link releases output the moment the standby acks, not
// when the loop gets round to it; once the gate is closed, an ack releases nothing.
func TestReleaseAcked(t *testing.T) {
	g := &recordingGate{}
	s := &Supervisor{cfg: Config{Commit: CommitStandby}, log: slog.New(slog.DiscardHandler), gate: g, metrics: newMetrics("t"), clock: clockwork.NewFakeClock()}
	s.ackGate.Store(&gateRef{g: g})
	s.releaseAcked(4)
	s.releaseSafe(CommitLocal, 9) // durable is not enough under --commit standby
	s.releaseAcked(5)
	if fmt.Sprint(g.released) != "[4 5]" {
		t.Errorf("released %v, want [4 5]", g.released)
	}
	s.closeGate()
	s.releaseAcked(6)
	if fmt.Sprint(g.released) != "[4 5]" || !g.closed {
		t.Errorf("after close: released %v, closed %v", g.released, g.closed)
	}
}

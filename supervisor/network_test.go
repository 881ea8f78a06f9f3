package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor/epochs"
	"github.com/ftrun/ftrun/supervisor/gate"
	"github.com/ftrun/ftrun/supervisor/phase"
	"github.com/ftrun/ftrun/transport/ship"
	"github.com/ftrun/ftrun/watchdog"
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

// recordingGate is a Gate that records cuts and releases.
type recordingGate struct {
	gate.Gate // unused methods panic
	mu        sync.Mutex
	cuts      []uint64
	released  []uint64
	closed    bool
	fail      int // releases to fail before they go through
}

func (g *recordingGate) Cut(epoch uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.cuts = append(g.cuts, epoch)
}

func (g *recordingGate) Release(epoch uint64) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return gate.ErrClosed
	}
	if g.fail > 0 {
		g.fail--
		return errors.New("netlink receive: no buffer space available")
	}
	g.released = append(g.released, epoch)
	return nil
}

func (g *recordingGate) Stats() gate.Stats { return gate.Stats{} }

func (g *recordingGate) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return nil
}

func (g *recordingGate) String() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fmt.Sprintf("cuts %v, released %v", g.cuts, g.released)
}

// gated is a supervisor under mode with a standby, whose program's output g holds,
// in its first incarnation.
func gated(t *testing.T, mode CommitMode, g *recordingGate) *Supervisor {
	t.Helper()
	s := &Supervisor{cfg: Config{Commit: mode, Standby: "b:7000"}, log: slog.New(slog.DiscardHandler), gate: g,
		metrics: newMetrics("t"), clock: clockwork.NewFakeClock(), rule: newOutputRule(mode, true), nextEpoch: 1, events: make(chan event, 8),
		cg: &Cgroup{}}
	s.step(epochs.Incarnation{})
	s.rule.setGate(g)
	return s
}

// dump runs what the dump of epoch does to the gate: its post-dump hook, which cuts.
func dump(t *testing.T, s *Supervisor, epoch uint64) {
	t.Helper()
	var marks phase.Local
	var synced []checkpoint.SyncedFile
	if err := s.dumpOptions(epoch, t.TempDir(), false, &marks, &synced).PostDump(); err != nil {
		t.Fatal(err)
	}
}

// Under --commit standby, the standby's ack of epoch 1 lets its output out on the
// link's goroutine while the dump of epoch 2 is in progress (cut, not committed) and
// the loop, inside that checkpoint, reads no event: the pipelining that keeps an
// epoch's output from waiting for the next one's checkpoint.
func TestAckReleasesDuringNextDump(t *testing.T) {
	g := &recordingGate{}
	s := gated(t, CommitStandby, g)
	s.linkStep(linkEvent{up: true})
	dump(t, s, 1)
	if rd := s.step(epochs.Committed{Epoch: 1}); rd.Ship != 1 {
		t.Fatalf("epoch 1 committed: %v, want it shipped", rd)
	}
	dump(t, s, 2)
	done := make(chan linkEvent)
	go func() { done <- s.linkStep(linkEvent{up: true, shipped: 1}) }()
	<-done
	if got := g.String(); got != "cuts [1 2], released [1]" {
		t.Errorf("after epoch 1's ack, during epoch 2's dump: %s; want epoch 1 released", got)
	}
	if len(s.events) != 0 {
		t.Errorf("the release went through the loop's events")
	}
	// Durable here is not enough under --commit standby while the link is up.
	s.step(epochs.Committed{Epoch: 2})
	s.step(epochs.Durable{Epoch: 2})
	if got := g.String(); got != "cuts [1 2], released [1]" {
		t.Errorf("epoch 2 durable, not acked: %s", got)
	}
	// Once the gate is closed (the incarnation ended), an ack releases nothing.
	s.closeGate()
	s.linkStep(linkEvent{up: true, shipped: 2})
	if got := g.String(); got != "cuts [1 2], released [1]" || !g.closed {
		t.Errorf("after close: %s, closed %v", got, g.closed)
	}
}

// Under --commit local, the background fsync lets out what it made durable itself,
// on its own goroutine, while the loop is inside the next dump.
func TestDurableReleasesDuringNextDump(t *testing.T) {
	g := &recordingGate{}
	s := gated(t, CommitLocal, g)
	dump(t, s, 1)
	s.step(epochs.Committed{Epoch: 1})
	dump(t, s, 2)
	s.linkStep(linkEvent{up: true})
	s.linkStep(linkEvent{up: true, shipped: 1}) // an ack is not enough under --commit local
	if got := g.String(); got != "cuts [1 2], released []" {
		t.Fatalf("acked, not durable: %s", got)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.step(epochs.Durable{Epoch: 1})
	}()
	<-done
	if got := g.String(); got != "cuts [1 2], released [1]" {
		t.Errorf("epoch 1 durable, during epoch 2's dump: %s; want epoch 1 released", got)
	}
}

// The link's events carry the protection the rule decided, as status words it.
func TestLinkProtection(t *testing.T) {
	s := gated(t, CommitStandby, &recordingGate{})
	s.cfg.AckFromMemory = true
	var got []string
	for _, ev := range []linkEvent{
		{up: true},
		{up: true, err: fmt.Errorf("ship epoch 1: %w", ship.ErrStandbyFull), failed: 1},
		{up: true, err: errors.New("ship epoch 2: reset"), failed: 2},
		{why: "lost standby b:7000: EOF"},
	} {
		if p := s.linkStep(ev).protection; p != nil {
			got = append(got, s.protectionText(*p))
		}
	}
	want := []string{"protected by standby b:7000 (acks from memory)",
		"unprotected: the standby's disk is full (it keeps its last epoch; free space there)",
		"unprotected: lost standby b:7000: EOF"}
	if !slices.Equal(got, want) {
		t.Errorf("protection %q, want %q", got, want)
	}
}

func TestEpochOnOutput(t *testing.T) {
	for _, c := range []struct{ enabled, uncut, drained, paused, want bool }{
		{true, true, true, false, true},
		{true, true, false, false, false}, // an epoch is still in flight: its ack starts the next
		{true, false, true, false, false}, // nothing waits
		{false, true, true, false, false}, // the interval alone starts epochs
		{true, true, true, true, false},   // a checkpoint failed just now: not once per packet
	} {
		if got := epochOnOutput(c.enabled, c.uncut, c.drained, c.paused); got != c.want {
			t.Errorf("epochOnOutput(enabled %v, uncut %v, drained %v, paused %v) = %v, want %v", c.enabled, c.uncut, c.drained, c.paused, got, c.want)
		}
	}
}

// uncutGate is a gate that always holds output no epoch explains yet.
type uncutGate struct{ gate.Gate }

func (uncutGate) Uncut() bool  { return true }
func (uncutGate) Close() error { return nil }

// A checkpoint that fails (the program died under it, say) pauses epochs on output
// for onOutputPause, not until the interval; a new incarnation ends the pause at once.
func TestEpochOnOutputPausesAfterAFailureOnlyBriefly(t *testing.T) {
	clk := clockwork.NewFakeClock()
	s := &Supervisor{cfg: Config{EpochOnOutput: true, Interval: time.Hour}, clock: clk, gate: uncutGate{}, alive: true,
		rule: newOutputRule(CommitLocal, false), nextEpoch: 1, log: slog.New(slog.DiscardHandler)}
	if !s.epochDue() {
		t.Fatal("held output starts no epoch")
	}
	s.pauseOnOutput()
	if s.epochDue() {
		t.Fatal("a failed checkpoint is retried for every packet")
	}
	clk.Advance(onOutputPause)
	select {
	case <-s.onOutputResumes():
		s.onOutputPaused = nil
	case <-time.After(5 * time.Second):
		t.Fatal("the pause did not end")
	}
	if !s.epochDue() {
		t.Fatal("held output waits for the interval after a failed checkpoint")
	}
	s.pauseOnOutput()
	if err := s.placeNet(0, false); err != nil { // a restore's new incarnation
		t.Fatal(err)
	}
	if s.onOutputResumes() != nil {
		t.Fatal("a new incarnation inherits its predecessor's pause")
	}
}

// cutGate is a gate whose held output has all been cut.
type cutGate struct{ gate.Gate }

func (cutGate) Uncut() bool          { return false }
func (cutGate) Cut(uint64)           {}
func (cutGate) Close() error         { return nil }
func (cutGate) Release(uint64) error { return nil }
func (cutGate) Stats() gate.Stats    { return gate.Stats{HeldPackets: 1} }

// A dump that fails after its cut leaves the output it cut waiting for the next dump:
// that output starts one once the pause is over, though the gate has nothing uncut
// (it waited for --interval, an hour here, before).
func TestEpochOnOutputAfterADumpFailedPastItsCut(t *testing.T) {
	clk := clockwork.NewFakeClock()
	s := &Supervisor{cfg: Config{EpochOnOutput: true, Interval: time.Hour, Notifier: &watchdog.Notifier{}}, clock: clk, gate: cutGate{}, alive: true,
		rule: newOutputRule(CommitLocal, false), nextEpoch: 1, log: slog.New(slog.DiscardHandler),
		metrics: newMetrics("t-abandoned"), cg: &Cgroup{}}
	s.step(epochs.Incarnation{})
	s.step(epochs.Cut{Epoch: 1})
	if s.epochDue() {
		t.Fatal("an epoch in flight, and another one starts")
	}
	s.checkpointFailed(1, errors.New("read-only file system"))
	clk.Advance(onOutputPause)
	<-s.onOutputResumes()
	s.onOutputPaused = nil
	if !s.epochDue() {
		t.Fatal("output cut for a failed dump waits for the interval")
	}
	s.step(epochs.Cut{Epoch: 1}) // the retry
	if s.epochDue() {
		t.Fatal("the retry is in flight, and another epoch starts")
	}
}

// Dumps leave the connections out exactly where no restore could reopen them.
func TestDumpClosesTCPWhereNoRestoreKeepsIt(t *testing.T) {
	for _, hasNet := range []bool{false, true} {
		kept := false
		for _, mode := range []CommitMode{CommitOff, CommitLocal, CommitStandby} {
			for _, takeover := range []bool{false, true} {
				kept = kept || keepConnections(hasNet, mode, takeover, true)
			}
		}
		if dumpClosesTCP(hasNet) != !kept {
			t.Errorf("hasNet=%v: dump closes TCP %v, but a restore keeps connections %v", hasNet, dumpClosesTCP(hasNet), kept)
		}
	}
}

// A release that fails is tried again until it goes through: output the rule found
// safe does not wait for a next release, which an idle program may never cause; and
// the retry ends with ftrun.
func TestFailedReleaseIsRetried(t *testing.T) {
	g := &recordingGate{fail: 3}
	s := gated(t, CommitLocal, g)
	s.clock = clockwork.NewRealClock()
	ctx, cancel := context.WithCancel(context.Background())
	s.ctx = ctx
	dump(t, s, 1)
	s.step(epochs.Committed{Epoch: 1})
	s.step(epochs.Durable{Epoch: 1})
	for deadline := time.Now().Add(10 * time.Second); g.String() != "cuts [1], released [1]"; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the failed release was not retried: %s", g)
		}
	}
	// A retry that cannot succeed ends with ftrun.
	g.mu.Lock()
	g.fail = 1 << 30
	g.mu.Unlock()
	dump(t, s, 2)
	s.step(epochs.Committed{Epoch: 2})
	s.step(epochs.Durable{Epoch: 2})
	cancel()
	s.wg.Wait()
	if got := g.String(); got != "cuts [1 2], released [1]" {
		t.Errorf("after ftrun stopped: %s", got)
	}
}

// A release that fails on a new incarnation's gate while a retry of the old gate's
// still runs is not lost when the old gate closes: the retry follows the newest
// gate, and the old one's closing does not end it.
func TestReleaseRetryFollowsTheNewGate(t *testing.T) {
	old := &recordingGate{fail: 1 << 30}
	s := gated(t, CommitLocal, old)
	s.clock = clockwork.NewRealClock()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s.ctx = ctx
	dump(t, s, 1)
	s.step(epochs.Committed{Epoch: 1})
	s.step(epochs.Durable{Epoch: 1}) // fails on old: a retry starts
	cur := &recordingGate{fail: 1}
	s.releaseLater(cur, 2) // the new incarnation's release failed once
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		cur.mu.Lock()
		got := fmt.Sprint(cur.released)
		cur.mu.Unlock()
		if got == "[2]" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new gate's failed release was not retried: released %s", got)
		}
	}
	cancel()
	s.wg.Wait()
	if got := old.String(); got != "cuts [1], released []" {
		t.Errorf("old gate: %s", got)
	}
}

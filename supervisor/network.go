package supervisor

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor/epochs"
	"github.com/ftrun/ftrun/supervisor/gate"
	"github.com/ftrun/ftrun/supervisor/netplace"
)

// CommitMode says when the program's network output may leave (the Output Rule).
type CommitMode string

const (
	// CommitStandby releases output once the standby has acknowledged the epoch that
	// explains it: nothing a client was told is lost when the primary host dies.
	CommitStandby CommitMode = "standby"
	// CommitLocal releases output once that epoch is durable on local disk: nothing a
	// client was told is lost when the program crashes and is restored here.
	CommitLocal CommitMode = "local"
	// CommitOff lets output leave at once (no gate).
	CommitOff CommitMode = "off"
)

// ParseCommitMode reads --commit.
func ParseCommitMode(s string) (CommitMode, error) {
	switch m := CommitMode(s); m {
	case CommitStandby, CommitLocal, CommitOff:
		return m, nil
	case "":
		return "", nil
	}
	return "", fmt.Errorf("--commit %q: want standby, local or off", s)
}

// resolveCommit fills in the default commit mode and checks it fits the placement: a
// gate needs the program in its own network namespace, and standby commit a standby.
func resolveCommit(mode CommitMode, hasNet, hasStandby bool) (CommitMode, error) {
	if mode == "" {
		if hasNet && hasStandby {
			return CommitStandby, nil
		}
		return CommitOff, nil
	}
	switch {
	case mode != CommitOff && !hasNet:
		return "", fmt.Errorf("--commit %s holds the program's output, which needs --net (the program in its own network namespace)", mode)
	case mode == CommitStandby && !hasStandby:
		return "", fmt.Errorf("--commit standby needs --standby HOST:PORT (or use --commit local)")
	}
	return mode, nil
}

// keepConnections is the pure rule for whether a restore brings the program's
// established TCP connections back open. The peers of a program that dies see its
// sockets close (FIN or RST) unless those packets stay behind the output gate, which
// never releases what no checkpoint explains; they are dropped with the namespace.
// And a connection can only go on from a state at least as new as what its peer was
// shown: the gate releases nothing beyond the newest committed epoch, so that one
// qualifies, and an older one (the newest was unusable, or one was asked for by hand)
// does not. So connections are kept when the program has an address of its own
// (--net), the epoch is the newest, and either the program ran behind the gate or this
// is a standby's take-over, whose primary host went silent as a whole.
func keepConnections(hasNet bool, mode CommitMode, takeover, newest bool) bool {
	return hasNet && newest && (mode == CommitStandby || mode == CommitLocal || takeover)
}

// NetSpec turns a manifest's placement back into a spec for this host's bridge.
func NetSpec(service string, p *checkpoint.NetPlacement, bridge string) (*netplace.Spec, error) {
	if p == nil {
		return nil, nil
	}
	spec, err := netplace.ParseSpec(service, p.Addr, p.MAC, bridge, p.Gateway)
	if err != nil {
		return nil, fmt.Errorf("the checkpoint's network placement: %w", err)
	}
	return &spec, nil
}

func placementOf(spec *netplace.Spec) *checkpoint.NetPlacement {
	if spec == nil {
		return nil
	}
	p := &checkpoint.NetPlacement{Addr: spec.Addr.String(), MAC: spec.HardwareAddr().String()}
	if spec.Gateway.IsValid() {
		p.Gateway = spec.Gateway.String()
	}
	return p
}

// enter runs fn inside the program's network namespace (or here, without --net).
func (s *Supervisor) enter() func(func() error) error {
	if s.place == nil {
		return nil
	}
	return s.place.Do
}

// placeNet gives the next incarnation a network: a new namespace for a program about
// to be started or restored (nothing of a dead incarnation's sockets survives into it),
// or the running program's own for an adopted one (adoptPid > 0). The gate is bound
// and its rule in place before the program can send anything. The incarnation begins
// here for the Output Rule too (takeover: this host's copy takes the service over).
func (s *Supervisor) placeNet(adoptPid int, takeover bool) error {
	s.dropNet()
	s.step(epochs.Incarnation{After: s.nextEpoch - 1, Takeover: takeover})
	s.resumeOnOutput()
	if s.cfg.Net == nil {
		return nil
	}
	var (
		p   *netplace.Place
		err error
	)
	if adoptPid > 0 {
		p, err = netplace.Adopt(*s.cfg.Net, adoptPid)
	} else {
		p, err = netplace.Create(*s.cfg.Net)
	}
	if err != nil {
		return err
	}
	s.place = p
	s.st.NetNS = p.Path()
	if s.cfg.Commit == CommitOff {
		return nil
	}
	// The dump lock's tables are made before the gate holds anything: making them
	// changes the namespace's hooks, which drops whatever is queued there.
	l, err := gate.OpenDumpLock(gate.Config{NetNS: p.Path(), Clock: s.clock, Log: s.log})
	if err != nil {
		s.dropNet()
		return fmt.Errorf("output gate: %w", err)
	}
	s.dumpLock = l
	g, err := gate.OpenNFQueue(gate.Config{NetNS: p.Path(), Clock: s.clock, Log: s.log})
	if err != nil {
		s.dropNet()
		return fmt.Errorf("output gate: %w", err)
	}
	s.gate = g
	s.rule.setGate(g)
	return nil
}

// dropNet ends the current incarnation's network: held output is dropped with its
// gate (the state that sent it is gone) and the namespace is freed.
func (s *Supervisor) dropNet() {
	s.closeGate()
	if s.place != nil {
		if err := s.place.Close(); err != nil {
			s.log.Warn("remove network namespace", "err", err)
		}
		s.place = nil
		s.st.NetNS = ""
	}
}

// closeGate drops held output with the gate, then the dump lock.
func (s *Supervisor) closeGate() {
	s.rule.setGate(nil)
	if s.gate != nil {
		if err := s.gate.Close(); err != nil {
			s.log.Warn("close output gate", "err", err)
		}
		s.gate = nil
	}
	if s.dumpLock != nil {
		if err := s.dumpLock.Close(); err != nil {
			s.log.Warn("close dump lock", "err", err)
		}
		s.dumpLock = nil
	}
}

// leaveNet keeps the program's network as it is for a later ftrun to adopt.
func (s *Supervisor) leaveNet() {
	s.closeGate()
	if s.place != nil {
		_ = s.place.Release()
		s.place = nil
	}
}

// connectNet joins the program's namespace to the LAN and tells the network where
// the service address lives now: the bridge's port changed with the new namespace,
// and after a failover the host did too. A restored program must hold its sockets
// before this (see netplace.Place.Connect).
func (s *Supervisor) connectNet(announce int) error {
	if s.place == nil {
		return nil
	}
	if err := s.place.Connect(); err != nil {
		return err
	}
	if err := s.place.Announce(announce, 20*time.Millisecond); err != nil {
		s.log.Warn("gratuitous ARP", "err", err)
	}
	return nil
}

// nudgePeers hurries the connections restored from the image set in dir along (see
// netplace.Nudge): without it a client's next try waits for its own backed-off
// retransmission timer, and a reply the program had sent but the client never got
// waits for the restored socket's first retransmission: a second or more after the
// program is back. resend says the program's output in that image set may leave (a
// standby's take-over, whose copy runs ungated; or an epoch the gate may release);
// otherwise it is left to the restored socket, behind the gate. Best effort: a
// failure costs that wait, nothing else.
func (s *Supervisor) nudgePeers(dir string, resend bool) {
	if s.place == nil {
		return
	}
	conns, err := checkpoint.TCPConns(dir)
	if err != nil {
		s.log.Warn("reading the restored TCP connections", "err", err)
		return
	}
	peers := make([]netplace.Peer, len(conns))
	for i, c := range conns {
		peers[i] = netplace.Peer{Local: c.Local, Remote: c.Peer, Una: c.RcvNxt, Seq: c.SndUna, Unacked: c.Unacked,
			MSS: c.MSS, Window: c.Window, WScale: c.WScale, Timestamps: c.Timestamps, TSval: c.TSval}
	}
	n, err := s.place.Nudge(peers, netplace.NudgeRounds, resend)
	if err != nil {
		s.log.Warn("hurrying the restored connections", "err", err)
	}
	if n > 0 {
		s.log.Info("asked the peers of restored connections to resend now", "connections", n, "resent_output", resend)
	}
}

// gateStats copies the gate's figures into status and metrics.
func (s *Supervisor) gateStats() {
	if s.gate == nil {
		return
	}
	g := s.gate.Stats()
	s.st.Held = &g
	s.metrics.gate(g)
}

// epochOnOutput is the pure rule for starting an epoch before --interval is up: with
// --epoch-on-output, as soon as output is held that no epoch explains yet (uncut, or
// cut for a dump that failed) and every earlier epoch's output is out. Epochs then follow the commits, one in flight at a
// time, while the program talks, and the interval while it is silent. For a while
// after a checkpoint that failed or was skipped (paused, see onOutputPause) output
// starts none, so that a failing dump is not retried for every packet.
func epochOnOutput(enabled, uncut, drained, paused bool) bool {
	return enabled && uncut && drained && !paused
}

// onOutputPause is how long, after a checkpoint that failed or was skipped, held
// output waits before it may start an epoch again. Not until the interval: a dump
// that failed because the program died under it would otherwise hold the restored
// program's replies for a whole --interval.
const onOutputPause = time.Second

// pauseOnOutput starts (or restarts) that pause, when --epoch-on-output is on.
func (s *Supervisor) pauseOnOutput() {
	if !s.cfg.EpochOnOutput {
		return
	}
	s.resumeOnOutput()
	s.onOutputPaused = s.clock.NewTimer(onOutputPause)
}

// resumeOnOutput ends the pause: a checkpoint committed, a new incarnation began
// (the failure was its predecessor's), or the pause ran out.
func (s *Supervisor) resumeOnOutput() {
	if s.onOutputPaused != nil {
		s.onOutputPaused.Stop()
		s.onOutputPaused = nil
	}
}

// onOutputResumes fires when the pause runs out (nil without one).
func (s *Supervisor) onOutputResumes() <-chan time.Time {
	if s.onOutputPaused == nil {
		return nil
	}
	return s.onOutputPaused.Chan()
}

// outputWaiting is where the gate says it holds a packet (nil without a gate or
// without --epoch-on-output).
func (s *Supervisor) outputWaiting() <-chan struct{} {
	if s.gate == nil || !s.cfg.EpochOnOutput {
		return nil
	}
	return s.gate.Waiting()
}

// epochDue says whether the output held now starts an epoch at once.
func (s *Supervisor) epochDue() bool {
	waiting := s.gate != nil && (s.gate.Uncut() || s.rule.stalled())
	return waiting && s.alive && epochOnOutput(s.cfg.EpochOnOutput, waiting, s.rule.drained(), s.onOutputPaused != nil)
}

func (s *Supervisor) pressured() <-chan struct{} {
	if s.gate == nil {
		return nil
	}
	return s.gate.Pressured()
}

// outputRule is the Output Rule's machine (package epochs) and the gate whose output
// it releases. The loop, the link and the background fsync all step it, each on its
// own goroutine, and each carries out the release its step made due at once: an ack
// lets out its epoch's output while the loop is inside the next checkpoint.
type outputRule struct {
	mu   sync.Mutex
	m    *epochs.Machine
	gate gate.Gate // the current incarnation's; nil while there is none
}

func newOutputRule(mode CommitMode, hasStandby bool) *outputRule {
	return &outputRule{m: epochs.New(epochs.Config{Mode: epochs.Mode(mode), Standby: hasStandby})}
}

// setGate makes g the gate that releases go to.
func (r *outputRule) setGate(g gate.Gate) {
	r.mu.Lock()
	r.gate = g
	r.mu.Unlock()
}

func (r *outputRule) step(ev epochs.Event) (epochs.Ready, gate.Gate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rd, err := r.m.Step(ev)
	return rd, r.gate, err
}

// safe is the newest epoch whose output may leave (see epochs.Machine.Safe).
func (r *outputRule) safe() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m.Safe()
}

// drained: every cut epoch's output is out (see epochs.Machine.Drained).
func (r *outputRule) drained() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m.Drained()
}

// stalled says output is held for a dump that failed after its cut.
func (r *outputRule) stalled() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m.Stalled()
}

// pins are the epochs pruning must keep.
func (r *outputRule) pins() epochs.Pins {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m.Pins()
}

func (r *outputRule) protection() epochs.Protection {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.m.Protection()
}

// step feeds ev to the output rule and lets out, on the calling goroutine, the held
// output the step made safe. Gate releases are cumulative and the gate serializes
// them, so two goroutines releasing at once need no order between them; a release
// that reaches a gate closed meanwhile had nothing left to let out.
func (s *Supervisor) step(ev epochs.Event) epochs.Ready {
	rd, g, err := s.rule.step(ev)
	if err != nil {
		s.log.Warn("output rule", "event", fmt.Sprintf("%T%+v", ev, ev), "err", err)
	}
	if rd.Release > 0 && g != nil {
		if err := g.Release(rd.Release); err != nil && !errors.Is(err, gate.ErrClosed) {
			s.log.Error("release held output; retrying", "epoch", rd.Release, "err", err)
			s.releaseLater(g, rd.Release)
		}
	}
	return rd
}

// releaseRetryMax bounds the wait between tries of a failed release.
const releaseRetryMax = time.Second

// releaseLater tries a failed release of epoch on g again until it goes through, g
// is closed (its output went with its incarnation) or ftrun stops. Releases are
// cumulative, so one retry serves every failed epoch up to the newest; without one,
// output the rule found safe would wait for the next release, which an idle program
// may never cause. A failure on a newer gate (a new incarnation's) replaces the
// retry's target: the old gate's output is no longer ftrun's to let out.
func (s *Supervisor) releaseLater(g gate.Gate, epoch uint64) {
	if s.ctx == nil {
		return // not running (a test of the rule alone)
	}
	s.retryMu.Lock()
	defer s.retryMu.Unlock()
	if s.relRetry.g == g && epoch <= s.relRetry.epoch {
		return
	}
	running := s.relRetry.g != nil
	s.relRetry = pendingRelease{g: g, epoch: epoch}
	if running {
		return // the running retry takes the newer target
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.retryReleases()
	}()
}

// pendingRelease is the release a retry owes: up to epoch on g.
type pendingRelease struct {
	g     gate.Gate
	epoch uint64
}

// retryReleases carries out s.relRetry until it goes through or ftrun stops.
func (s *Supervisor) retryReleases() {
	for delay := 10 * time.Millisecond; ; delay = min(2*delay, releaseRetryMax) {
		select {
		case <-s.ctx.Done():
			return
		case <-s.clock.After(delay):
		}
		s.retryMu.Lock()
		try := s.relRetry
		s.retryMu.Unlock()
		err := try.g.Release(try.epoch)
		if err != nil && !errors.Is(err, gate.ErrClosed) {
			s.log.Warn("release held output again", "epoch", try.epoch, "err", err)
			continue
		}
		s.retryMu.Lock()
		done := s.relRetry == try
		if done {
			s.relRetry = pendingRelease{}
		}
		s.retryMu.Unlock()
		if done {
			if err == nil {
				s.log.Info("held output released after a retry", "epoch", try.epoch)
			}
			return
		}
		delay = 5 * time.Millisecond // a newer target: back off from the start again (10 ms)
	}
}

// protectionText is what status says of p.
func (s *Supervisor) protectionText(p epochs.Protection) string {
	switch p.Kind {
	case epochs.LocalOnly:
		return "local checkpoints"
	case epochs.StandbyFull:
		return "unprotected: the standby's disk is full (it keeps its last epoch; free space there)"
	case epochs.Unreachable:
		return "unprotected: " + p.Why
	}
	if s.cfg.AckFromMemory {
		return "protected by standby " + s.cfg.Standby + " (acks from memory)"
	}
	return "protected by standby " + s.cfg.Standby
}

package supervisor

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
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

// releaseTarget is the pure rule for how far held output may go: up to the newest
// epoch the standby acknowledged, or, while the standby is unreachable (the program is
// unprotected and says so), up to the newest epoch durable on local disk, so that the
// service goes on rather than stalling behind a dead standby.
func releaseTarget(mode CommitMode, standbyUp bool, acked, durable uint64) uint64 {
	switch {
	case mode == CommitLocal:
		return durable
	case mode == CommitStandby && standbyUp:
		return acked
	case mode == CommitStandby:
		return durable
	}
	return 0
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
// and its rule in place before the program can send anything.
func (s *Supervisor) placeNet(adoptPid int) error {
	if s.cfg.Net == nil {
		return nil
	}
	s.dropNet()
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
	s.ackGate.Store(&gateRef{g: g})
	return nil
}

// releaseSafe lets out at once, from the goroutine that learnt it, the output that
// epoch explains, when epoch has just become safe under the configured --commit
// mode: acked by the standby (the link calls it with CommitStandby) or durable on
// local disk (the background fsync, with CommitLocal). The loop releases it too when
// it hears of it (releaseOutput); this only saves the wait for the loop, which may be
// inside a checkpoint. Epochs only grow within one ftrun, so news that arrives late
// never releases a newer incarnation's output that no safe epoch explains.
func (s *Supervisor) releaseSafe(mode CommitMode, epoch uint64) {
	if mode != s.cfg.Commit {
		return
	}
	r := s.ackGate.Load()
	if r == nil {
		return
	}
	if err := r.g.Release(epoch); err != nil && !errors.Is(err, gate.ErrClosed) {
		s.log.Warn("release held output", "epoch", epoch, "safe", string(mode), "err", err)
	}
}

// releaseAcked is releaseSafe for the link: the standby acknowledged epoch. It
// returns how long the release took (the epoch's release phase).
func (s *Supervisor) releaseAcked(epoch uint64) time.Duration {
	t := s.clock.Now()
	s.releaseSafe(CommitStandby, epoch)
	return s.clock.Since(t)
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
	s.ackGate.Store(nil)
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

// releasable is the newest epoch whose output may leave (see releaseTarget).
func (s *Supervisor) releasable() uint64 {
	return releaseTarget(s.cfg.Commit, s.link != nil && s.linkUp, s.st.StandbyEpoch, s.durable)
}

// releaseOutput lets out what the newest safe epoch explains.
func (s *Supervisor) releaseOutput() {
	if s.gate == nil {
		return
	}
	to := s.releasable()
	if to == 0 {
		return
	}
	if err := s.gate.Release(to); err != nil {
		s.log.Error("release held output", "epoch", to, "err", err)
	}
	s.gateStats()
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

func (s *Supervisor) pressured() <-chan struct{} {
	if s.gate == nil {
		return nil
	}
	return s.gate.Pressured()
}

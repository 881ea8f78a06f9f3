package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/arbiter"
	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/failover"
	"github.com/ftrun/ftrun/transport/standby"
)

// DefaultPeerWait is how long `ftrun run --standby` tries to reach its peer at boot
// before it decides alone: a few take-over timeouts, so a peer that is merely
// restarting answers in time.
const DefaultPeerWait = 5 * time.Second

// roleFile in the state dir records the part this host played last: "primary" (it
// ran the program) or "standby" (it held the epochs of the program's live copy on the
// peer). It decides the boot when the peer cannot be asked.
const roleFile = "role"

// Role names in status and in roleFile.
const (
	RolePrimary = "primary"
	RoleStandby = "standby"
)

// PeerAnswer is what the boot learned from the peer.
type PeerAnswer int

const (
	PeerUnreachable PeerAnswer = iota // no answer within the wait
	PeerStandby                       // a standby: it does not run the service
	PeerLive                          // it runs the service (it took over, or it is the primary)
	PeerBooting                       // it is deciding too: RoleInput.PeerClaim says what it holds
)

func (a PeerAnswer) String() string {
	switch a {
	case PeerStandby:
		return "standby"
	case PeerLive:
		return "live"
	case PeerBooting:
		return "booting"
	}
	return "unreachable"
}

// Claim is what a host deciding its role says of itself to its peer, and what the
// tie-break between two such hosts compares. Both hosts of a symmetric pair compare
// the same two claims, so they reach opposite roles: one runs the program, the other
// serves as its standby.
type Claim struct {
	// Running: a program of the service that an earlier ftrun left behind still runs
	// on this host (it is adopted, not restored).
	Running bool
	// Epoch is the newest committed epoch this host holds, of its own or as the
	// standby of the live copy elsewhere (epoch numbers go on across take-overs).
	Epoch uint64
	// Priority is --priority: the higher runs the program when the epochs are equal.
	Priority int
	// Name is the host's certificate name, taken from the TLS handshake, never from
	// what the peer says; Node its --node name; Nonce a random number drawn at boot,
	// the last word between two hosts that share a certificate and a name.
	Name  string
	Node  string
	Nonce uint64
}

// RoleInput is what the boot's role decision looks at.
type RoleInput struct {
	Peer PeerAnswer
	// Last is roleFile's content ("" when this host never ran the service).
	Last string
	// ForcePrimary is --force-primary: the operator says the peer is gone for good.
	ForcePrimary bool
	// Own is this host's claim; PeerClaim the peer's, when Peer is PeerBooting.
	Own, PeerClaim Claim
}

// RoleDecision says whether this host runs the program or serves as the standby of
// its live copy on the peer.
type RoleDecision struct {
	Role   string
	Reason string
}

// DecideRole is the pure boot rule of `ftrun run --standby PEER` (before anything is
// restored or started). A peer that runs the service makes this host its standby:
// never two copies. A peer that is a standby leaves the service here. A peer that is
// deciding too (a symmetric pair booting at once) is told this host's claim and tells
// its own, and both apply the same order to the same two claims (see outranks). A
// peer that cannot be reached leaves the decision to what this host was: a program
// still running here is adopted; a former standby keeps waiting for the live copy
// (the peer may be running it behind a partition, and a standby's epochs may be older
// than what clients were shown), unless the operator says the peer is gone for good;
// a former primary runs the program, and should the peer turn out to run it too once
// they can talk, this copy fences itself (exit 156) and the peer's copy, whose
// acknowledged output is the only one released under the Output Rule, survives.
func DecideRole(in RoleInput) RoleDecision {
	switch {
	case in.Peer == PeerLive:
		return RoleDecision{RoleStandby, "the service is live on the peer: this host becomes its standby and does not start the program"}
	case in.Peer == PeerStandby:
		return RoleDecision{RolePrimary, "the peer is a standby: this host runs the program"}
	case in.Peer == PeerBooting:
		if win, why := outranks(in.Own, in.PeerClaim); win {
			return RoleDecision{RolePrimary, "the peer is deciding too: this host runs the program (" + why + ")"}
		} else {
			return RoleDecision{RoleStandby, "the peer is deciding too: the peer runs the program and this host becomes its standby (" + why + ")"}
		}
	case in.Own.Running:
		return RoleDecision{RolePrimary, "the peer cannot be reached and the program still runs here: this host adopts it; should the peer turn out to run it too, this copy fences itself"}
	case in.ForcePrimary:
		return RoleDecision{RolePrimary, "the peer cannot be reached and --force-primary is set: this host runs the program"}
	case in.Last == RoleStandby:
		return RoleDecision{RoleStandby, "the peer cannot be reached and this host was its standby: waiting for the live copy (--force-primary runs the program here if the peer is gone for good)"}
	}
	return RoleDecision{RolePrimary, "the peer cannot be reached: this host runs the program; should the peer turn out to run it too, this copy fences itself"}
}

// outranks is the order between two booting hosts' claims, the same seen from either
// side: a program still running beats any claim, since its output up to the last
// acknowledged epoch is what clients were told (an epoch is only a number the peer
// states, so a running program here is never given up for a claimed newer one; two
// running programs, which only a partition leaves behind, go by rank first); then
// the newer epoch, which has more of what clients were told; then the rank:
// the higher --priority, the smaller certificate name, the smaller node name, the
// smaller nonce. A claim equal to this host's own in every field is no peer's (it
// echoes this host): it does not make this host give way.
func outranks(own, peer Claim) (bool, string) {
	same := fmt.Sprintf("same epoch %d", own.Epoch)
	if own.Running {
		same = "both run the program"
	}
	switch {
	case own.Running != peer.Running:
		if own.Running {
			return true, "the program still runs here, not there"
		}
		return false, "the program still runs there, not here"
	case !own.Running && own.Epoch != peer.Epoch:
		if own.Epoch > peer.Epoch {
			return true, fmt.Sprintf("epoch %d here, %d there", own.Epoch, peer.Epoch)
		}
		return false, fmt.Sprintf("epoch %d there, %d here", peer.Epoch, own.Epoch)
	case own.Priority != peer.Priority:
		return own.Priority > peer.Priority, fmt.Sprintf("%s; priority %d here, %d there", same, own.Priority, peer.Priority)
	case own.Name != peer.Name:
		return own.Name < peer.Name, fmt.Sprintf("%s, same priority; certificate %q here, %q there", same, own.Name, peer.Name)
	case own.Node != peer.Node:
		return own.Node < peer.Node, fmt.Sprintf("%s, same priority and certificate; node %q here, %q there", same, own.Node, peer.Node)
	case own.Nonce != peer.Nonce:
		return own.Nonce < peer.Nonce, fmt.Sprintf("%s, same priority, certificate and node; boot nonce %d here, %d there", same, own.Nonce, peer.Nonce)
	case own.Epoch != peer.Epoch:
		// Both run the program and rank alike: only the epochs are left.
		return own.Epoch > peer.Epoch, fmt.Sprintf("both run the program and rank alike; epoch %d here, %d there", own.Epoch, peer.Epoch)
	}
	return true, "the peer's claim is this host's own: no peer's"
}

func readRole(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, roleFile))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func writeRole(dir, role string) error {
	tmp := filepath.Join(dir, roleFile+".tmp")
	if err := os.WriteFile(tmp, []byte(role+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, roleFile))
}

// negotiate is the boot's exchange with the peer: it asks the peer what it is until
// it answers, the wait is over, or a peer deciding too has asked here (x, when this
// host answers while it decides), then decides with what it learnt (in's Peer and
// PeerClaim are filled in here).
func negotiate(ctx context.Context, clock clockwork.Clock, wait time.Duration, ask func(context.Context) (PeerAnswer, Claim, error),
	x *exchange, in RoleInput) (RoleDecision, RoleInput, error) {
	deadline := clock.Now().Add(wait)
	var why error
	for {
		in.Peer, in.PeerClaim, why = ask(ctx)
		if in.Peer != PeerUnreachable || ctx.Err() != nil || !clock.Now().Add(redialDelay).Before(deadline) {
			break
		}
		select {
		case <-ctx.Done():
		case <-x.askedCh():
		case <-clock.After(redialDelay):
			continue
		}
		break
	}
	decide := func(heard *Claim) RoleDecision {
		if in.Peer == PeerUnreachable && heard != nil {
			in.Peer, in.PeerClaim = PeerBooting, *heard
		}
		return DecideRole(in)
	}
	if x == nil {
		return decide(nil), in, why
	}
	return x.decide(decide), in, why
}

// ownClaim is what this host holds of the service before it decides: whether a
// program an earlier ftrun left behind still runs here, and the newest committed
// epoch among its own checkpoints and those it holds as the live copy's standby.
func (s *Supervisor) ownClaim() Claim {
	c := Claim{Priority: s.cfg.Priority, Name: certName(s.cfg.StandbyTLS), Node: s.cfg.Node, Nonce: bootNonce()}
	_, c.Running = s.runningProgram()
	if latest, err := s.store.Latest(); err == nil {
		c.Epoch = latest
	}
	if st, err := standby.OpenStore(filepath.Join(s.cfg.StateDir, "standby")); err == nil {
		if sets, err := st.Sets(s.cfg.Name); err == nil && len(sets) > 0 {
			c.Epoch = max(c.Epoch, sets[0].Epoch)
		}
	}
	return c
}

// adoptStandbyEpoch links the newest epoch this host holds as a standby into its own
// checkpoints, for a boot that runs the program after serving as standby.
func (s *Supervisor) adoptStandbyEpoch() error {
	st, err := standby.OpenStore(filepath.Join(s.cfg.StateDir, "standby"))
	if err != nil {
		return err
	}
	sets, err := st.Sets(s.cfg.Name)
	if err != nil || len(sets) == 0 {
		return err
	}
	if err := linkSet(sets[0].Dir, filepath.Join(s.store.Dir(), filepath.Base(sets[0].Dir))); err != nil {
		return err
	}
	s.nextEpoch = max(s.nextEpoch, sets[0].Epoch+1)
	s.log.Info("restoring the newest epoch this host holds as the live copy's standby", "epoch", sets[0].Epoch)
	return nil
}

// handoff is a take-over decided while serving as the standby of the live copy.
type handoff struct {
	set   checkpoint.Set
	lease arbiter.Lease
}

// chooseRole runs the boot's role decision. When this host is to be the standby of
// the live copy on the peer, it serves as that until ctx ends (stopped true) or the
// live copy goes silent and this host takes over, whose epoch it then restores.
func (s *Supervisor) chooseRole(ctx context.Context) (stopped bool, err error) {
	s.st.State = StateStarting
	own := s.ownClaim()
	var x *exchange
	if s.cfg.Symmetric && s.cfg.Listen != "" && s.cfg.ListenTLS != nil {
		if x, err = listenExchange(s.cfg.Listen, s.cfg.ListenTLS, s.cfg.Name, own, s.log); err != nil {
			s.log.Warn("boot: cannot answer the peer while deciding; deciding by asking it alone", "err", err)
			x = nil
		}
	}
	s.log.Info("boot: asking the peer whether the service is live there", "peer", s.cfg.Standby, "wait", s.cfg.PeerWait,
		"epoch", own.Epoch, "running", own.Running)
	host, _ := os.Hostname()
	ask := func(ctx context.Context) (PeerAnswer, Claim, error) {
		return askOnce(ctx, s.cfg.Standby, s.cfg.StandbyTLS, s.cfg.Name, host, own)
	}
	last := readRole(s.cfg.StateDir)
	d, in, why := negotiate(ctx, s.clock, s.cfg.PeerWait, ask, x, RoleInput{Last: last, ForcePrimary: s.cfg.ForcePrimary, Own: own})
	if ctx.Err() != nil {
		if x != nil {
			x.close()
		}
		return true, nil
	}
	ans := in.Peer
	args := []any{"peer", s.cfg.Standby, "answer", ans.String()}
	if why != nil && ans == PeerUnreachable {
		args = append(args, "err", why)
	}
	s.log.Info("boot: "+d.Reason, append(args, "role", d.Role)...)
	if d.Role == RolePrimary {
		if x != nil {
			// It answers "live" to a peer that boots while this host runs the program.
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				<-s.ctx.Done()
				x.close()
			}()
		}
		if last == RoleStandby && !own.Running {
			// This host's own checkpoints went when it became a standby: what it holds
			// of the service is what the live copy streamed here.
			if err := s.adoptStandbyEpoch(); err != nil {
				return false, err
			}
		}
		return false, writeRole(s.cfg.StateDir, RolePrimary)
	}
	if x != nil {
		x.close()
	}
	if own.Running {
		// The peer runs the service (it took over while this host's ftrun was gone,
		// or it outranks this host): the program left running here must not be
		// adopted later, when this host takes over from the peer's copy.
		s.log.Warn("boot: killing the program an earlier ftrun left running here: the peer's copy is the one that counts")
		if err := s.killAll(); err != nil {
			return false, err
		}
	}
	if s.cfg.Listen == "" {
		return true, &ExitErr{Code: ExitSuperseded, Err: errors.New("the service is live on the peer and --listen is empty: not starting it here")}
	}
	h, stopped, err := s.serveAsStandby(ctx)
	if err != nil || stopped {
		return stopped, err
	}
	s.log.Warn("taking over from the silent live copy on the peer", "epoch", h.set.Epoch)
	target := filepath.Join(s.store.Dir(), filepath.Base(h.set.Dir))
	if err := linkSet(h.set.Dir, target); err != nil {
		return false, err
	}
	s.nextEpoch = h.set.Epoch + 1
	s.cfg.Failover, s.cfg.Discard, s.cfg.LiveSince = true, false, h.set.Epoch
	if h.lease != nil {
		s.cfg.Lease = h.lease
	}
	// What this host held as the standby is no epoch its own standby holds: that
	// count starts again at the first ack.
	s.st.Role, s.st.Protection, s.st.StandbyEpoch = RolePrimary, "unprotected: connecting to standby "+s.cfg.Standby, 0
	return false, writeRole(s.cfg.StateDir, RolePrimary)
}

// serveAsStandby holds the epochs the live copy on the peer streams here, answers
// status meanwhile, and returns the take-over once that copy goes silent.
func (s *Supervisor) serveAsStandby(ctx context.Context) (handoff, bool, error) {
	if err := writeRole(s.cfg.StateDir, RoleStandby); err != nil {
		return handoff{}, false, err
	}
	// This host's own checkpoints are older than what the live copy went on from,
	// under the same epoch numbers: worthless, and dangerous to restore.
	sets, err := s.store.List()
	if err != nil {
		return handoff{}, false, err
	}
	for _, set := range sets {
		if err := s.store.Remove(set); err != nil {
			return handoff{}, false, err
		}
	}
	if len(sets) > 0 {
		s.log.Info("dropped this host's own checkpoints: the live copy on the peer supersedes them", "count", len(sets), "newest", sets[0].Epoch)
	}
	s.st.Role, s.st.State = RoleStandby, StateStandby
	s.st.Protection = "standby of the live copy on " + s.cfg.Standby
	s.notifyStatus()
	handoffs := make(chan handoff, 1)
	var standbyStatus func() []failover.StandbyStatus
	statusReady := make(chan struct{})
	done := make(chan error, 1)
	bridge := ""
	if s.cfg.Net != nil {
		bridge = s.cfg.Net.BridgeName()
	}
	host, _ := os.Hostname()
	cfg := failover.Config{
		Listen: s.cfg.Listen, StateDir: filepath.Join(s.cfg.StateDir, "standby"), TLS: s.cfg.ListenTLS, Host: host,
		Timeout: s.cfg.TakeoverTimeout, Clock: s.clock, Log: s.log.With("role", RoleStandby), Arbiter: s.cfg.Arbiter,
		Bridge: bridge, Only: s.cfg.Name, ControlSocket: "-",
		OnStatus: func(f func() []failover.StandbyStatus) { standbyStatus = f; close(statusReady) },
		GoLive: func(h failover.Handoff) (failover.Live, error) {
			select {
			case handoffs <- handoff{set: h.Set, lease: h.Lease}:
			default:
				return failover.Live{}, errors.New("already taking over")
			}
			// The outer supervisor runs the program: Run stays nil.
			return failover.Live{Announce: s.Reannounce}, nil
		},
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// It goes on after a take-over: it is what tells the peer, should it come
		// back as a primary, that the service is live here now.
		done <- failover.Run(s.ctx, cfg)
	}()
	select {
	case <-statusReady:
	case err := <-done:
		return handoff{}, false, fmt.Errorf("serve as standby on %q: %w", s.cfg.Listen, err)
	}
	// Under systemd a standby is a started service, and a live one: its watchdog is
	// fed while the standby serves, or systemd would restart it for want of a
	// checkpoint it has no program to take.
	if err := s.cfg.Notifier.Ready(s.st.Protection); err != nil {
		s.log.Warn("sd_notify READY", "err", err)
	}
	var wdog <-chan time.Time
	if iv := s.cfg.Notifier.WatchdogInterval(); iv > 0 {
		t := s.clock.NewTicker(iv)
		defer t.Stop()
		wdog = t.Chan()
	}
	for {
		select {
		case <-wdog:
			if err := s.cfg.Notifier.Watchdog(); err != nil {
				s.log.Debug("sd_notify WATCHDOG", "err", err)
			}
		case <-ctx.Done():
			s.st.State = StateStopped
			return handoff{}, true, nil
		case err := <-done:
			return handoff{}, false, fmt.Errorf("serve as standby on %q: %w", s.cfg.Listen, err)
		case h := <-handoffs:
			return h, false, nil
		case ev := <-s.events:
			if ev.kind == "request" {
				s.standbyView(standbyStatus())
				s.serve(ev.req)
			}
		}
	}
}

// standbyView copies what the standby holds into the status.
func (s *Supervisor) standbyView(sts []failover.StandbyStatus) {
	for _, st := range sts {
		if st.Service != s.cfg.Name {
			continue
		}
		s.st.Epoch, s.st.StandbyEpoch = st.Epoch, st.Epoch
		switch {
		case st.Connected:
			s.st.Protection = fmt.Sprintf("standby of the live copy on %s: holding epoch %d", s.cfg.Standby, st.Epoch)
		default:
			s.st.Protection = fmt.Sprintf("standby of the live copy on %s: not connected (holding epoch %d)", s.cfg.Standby, st.Epoch)
		}
	}
}

// Reannounce tells the LAN again that the program's address is here, in the
// background: after an old primary that came back was refused, the switch may have
// learnt the address's MAC from that copy's last packets.
// It never blocks: a loop too busy to take the event has nothing better to do soon.
func (s *Supervisor) Reannounce() {
	select {
	case s.events <- event{kind: "announce"}:
	default:
	}
}

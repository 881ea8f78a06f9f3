package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftrun/ftrun/arbiter"
	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/failover"
	"github.com/ftrun/ftrun/transport/ship"
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
	PeerLive                          // it runs the service (it took over)
)

func (a PeerAnswer) String() string {
	switch a {
	case PeerStandby:
		return "standby"
	case PeerLive:
		return "live"
	}
	return "unreachable"
}

// RoleInput is what the boot's role decision looks at.
type RoleInput struct {
	Peer PeerAnswer
	// Last is roleFile's content ("" when this host never ran the service).
	Last string
	// ForcePrimary is --force-primary: the operator says the peer is gone for good.
	ForcePrimary bool
}

// RoleDecision says whether this host runs the program or serves as the standby of
// its live copy on the peer.
type RoleDecision struct {
	Role   string
	Reason string
}

// DecideRole is the pure boot rule of `ftrun run --standby PEER` (before anything is
// restored or started). A peer that runs the service makes this host its standby:
// never two copies. A peer that is a standby leaves the service here. A peer that
// cannot be reached leaves the decision to what this host was: a former standby keeps
// waiting for the live copy (the peer may be running it behind a partition, and a
// standby's epochs may be older than what clients were shown), unless the operator
// says the peer is gone for good; a former primary runs the program, and should the
// peer turn out to run it too once they can talk, this copy fences itself (exit 156)
// and the peer's copy, whose acknowledged output is the only one released under the
// Output Rule, survives.
func DecideRole(in RoleInput) RoleDecision {
	switch {
	case in.Peer == PeerLive:
		return RoleDecision{RoleStandby, "the service is live on the peer: this host becomes its standby and does not start the program"}
	case in.Peer == PeerStandby:
		return RoleDecision{RolePrimary, "the peer is a standby: this host runs the program"}
	case in.ForcePrimary:
		return RoleDecision{RolePrimary, "the peer cannot be reached and --force-primary is set: this host runs the program"}
	case in.Last == RoleStandby:
		return RoleDecision{RoleStandby, "the peer cannot be reached and this host was its standby: waiting for the live copy (--force-primary runs the program here if the peer is gone for good)"}
	}
	return RoleDecision{RolePrimary, "the peer cannot be reached: this host runs the program; should the peer turn out to run it too, this copy fences itself"}
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

// askPeer asks the peer whether it runs the service, retrying until wait is over.
func (s *Supervisor) askPeer(ctx context.Context, wait time.Duration) (PeerAnswer, error) {
	host, _ := os.Hostname()
	sh := ship.New(ship.Config{Service: s.cfg.Name, Host: host, Clock: s.clock, Logger: s.log})
	defer sh.Close()
	deadline := s.clock.Now().Add(wait)
	var last error
	for {
		dctx, cancel := context.WithTimeout(ctx, min(2*time.Second, max(wait, 100*time.Millisecond)))
		err := sh.Dial(dctx, s.cfg.Standby, s.cfg.StandbyTLS)
		cancel()
		switch {
		case err == nil:
			return PeerStandby, nil
		case errors.Is(err, ship.ErrPeerLive):
			return PeerLive, err
		}
		last = err
		if ctx.Err() != nil || !s.clock.Now().Add(redialDelay).Before(deadline) {
			return PeerUnreachable, last
		}
		select {
		case <-ctx.Done():
			return PeerUnreachable, last
		case <-s.clock.After(redialDelay):
		}
	}
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
	s.log.Info("boot: asking the peer whether the service is live there", "peer", s.cfg.Standby, "wait", s.cfg.PeerWait)
	ans, why := s.askPeer(ctx, s.cfg.PeerWait)
	if ctx.Err() != nil {
		return true, nil
	}
	d := DecideRole(RoleInput{Peer: ans, Last: readRole(s.cfg.StateDir), ForcePrimary: s.cfg.ForcePrimary})
	args := []any{"peer", s.cfg.Standby, "answer", ans.String()}
	if why != nil && ans == PeerUnreachable {
		args = append(args, "err", why)
	}
	s.log.Info("boot: "+d.Reason, append(args, "role", d.Role)...)
	if d.Role == RolePrimary {
		if readRole(s.cfg.StateDir) == RoleStandby {
			// This host's own checkpoints went when it became a standby: what it holds
			// of the service is what the live copy streamed here.
			if err := s.adoptStandbyEpoch(); err != nil {
				return false, err
			}
		}
		return false, writeRole(s.cfg.StateDir, RolePrimary)
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
	s.cfg.Failover, s.cfg.Discard = true, false
	if h.lease != nil {
		s.cfg.Lease = h.lease
	}
	s.st.Role, s.st.Protection = RolePrimary, "unprotected: connecting to standby "+s.cfg.Standby
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

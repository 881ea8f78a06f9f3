package supervisor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor/epochs"
	"github.com/ftrun/ftrun/transport/ship"
	"github.com/ftrun/ftrun/watchdog"
)

// Defaults of the primary<->standby link (Remus-style heartbeats).
const (
	HeartbeatInterval = 100 * time.Millisecond
	redialDelay       = 500 * time.Millisecond
)

// link keeps the primary connected to its standby and ships committed epochs to it.
// It owns the Shipper: shipping and heartbeats happen on its one goroutine, and the
// loop learns what happened through events. Only the newest committed set waits to be
// shipped: an older one is worthless once a newer one exists.
type link struct {
	addr    string
	tls     *tls.Config
	shipper *ship.Shipper
	clock   clockwork.Clock
	log     *slog.Logger
	timeout time.Duration
	// liveSince is the epoch this copy took the service over from (0: it never did).
	liveSince uint64

	mu   sync.Mutex
	next *checkpoint.Set
	wake chan struct{}
}

// newLink ships to addr as sc says (its Clock and Logger serve the link too).
func newLink(addr string, tlsConf *tls.Config, sc ship.Config) *link {
	return &link{
		addr: addr, tls: tlsConf, clock: sc.Clock, log: sc.Logger, timeout: HeartbeatTimeout, liveSince: sc.LiveSince,
		shipper: ship.New(sc),
		wake:    make(chan struct{}, 1),
	}
}

// offer hands the newest committed set to the link.
func (l *link) offer(set checkpoint.Set) {
	l.mu.Lock()
	l.next = &set
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *link) take() *checkpoint.Set {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.next
	l.next = nil
	return s
}

// yields is the rule between two live copies of a service that meet once a partition
// heals (each one's link refused by the other's standby side): the copy that took
// over later, from a newer epoch of the other's stream, is the one clients were using
// while the other was cut off, so the other one stops (fences itself). own and peer
// are the epochs each went live from, 0 for a copy that never took over (the
// original primary, or one whose take-over this ftrun did not see); on a tie, or a
// peer that states no epoch (an older ftrun), this copy stops, so at least one does.
func yields(own, peer uint64) bool { return peer == 0 || own <= peer }

// linkEvent is what the link tells the loop.
type linkEvent struct {
	up  bool // connected and hearing the standby
	why string
	// superseded: the peer runs the service itself now (it took over while this
	// copy was cut off); this copy must stop.
	superseded bool
	shipped    uint64 // epoch acknowledged by the standby (0: none in this event)
	stats      ship.Stats
	released   time.Duration // how long letting out the output shipped explains took
	err        error         // a ship that failed
	failed     uint64        // the epoch whose ship failed
	// protection is what the output rule made of this event, nil: no change. report
	// fills it in, with released.
	protection *epochs.Protection
}

// run keeps the link up until ctx ends. report is called on this goroutine the moment
// the link learns something (the standby acknowledged an epoch, the link went up or
// down), and must not block for long: the output an ack explains is let out there.
func (l *link) run(ctx context.Context, report func(linkEvent)) {
	defer l.shipper.Close()
	up := false
	// Heartbeats have a goroutine of their own, so that a long ship (a whole epoch
	// after a resync, a slow disk) never leaves the standby without them: a silent
	// primary is one the standby takes over.
	lost := make(chan string, 1)
	var stopBeats func()
	defer func() {
		if stopBeats != nil {
			stopBeats()
		}
	}()
	down := func(why string) {
		if stopBeats != nil {
			stopBeats()
			stopBeats = nil
		}
		l.shipper.Close()
		up = false
		report(linkEvent{why: why})
	}
	for ctx.Err() == nil {
		if !up {
			dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := l.shipper.Dial(dctx, l.addr, l.tls)
			cancel()
			if errors.Is(err, ship.ErrPeerLive) {
				var pe *ship.PeerLiveError
				var peerSince uint64
				if errors.As(err, &pe) {
					peerSince = pe.LiveSince
				}
				if yields(l.liveSince, peerSince) {
					report(linkEvent{superseded: true, why: fmt.Sprintf("standby %s: %v", l.addr, err)})
					return
				}
				err = fmt.Errorf("%w: it went live from epoch %d, this copy took over from it later (epoch %d): it yields, not this copy", err, peerSince, l.liveSince)
			}
			if err != nil {
				down(fmt.Sprintf("standby %s unreachable: %v", l.addr, err))
				select {
				case <-ctx.Done():
					return
				case <-l.clock.After(redialDelay):
				}
				continue
			}
			up = true
			select { // a loss of the previous connection is old news
			case <-lost:
			default:
			}
			hctx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() {
				defer close(done)
				l.heartbeats(hctx, lost)
			}()
			stopBeats = func() { cancel(); <-done }
			report(linkEvent{up: true, why: "connected to standby " + l.addr})
		}
		select {
		case <-ctx.Done():
			return
		case why := <-lost:
			down(why)
		case <-l.wake:
			set := l.take()
			if set == nil {
				continue
			}
			err := l.shipper.Ship(ctx, set.Epoch, set.Dir)
			if err != nil {
				report(linkEvent{up: up, err: fmt.Errorf("ship epoch %d: %w", set.Epoch, err), failed: set.Epoch})
				if errors.Is(err, ship.ErrNotConnected) {
					why := fmt.Sprintf("lost standby %s: %v", l.addr, err)
					select {
					case why = <-lost:
					default:
					}
					down(why)
				}
				continue
			}
			report(linkEvent{up: true, shipped: set.Epoch, stats: l.shipper.LastStats()})
		}
	}
}

// heartbeats sends one every HeartbeatInterval until ctx ends, and reports on lost (and
// closes the connection, which ends a ship in progress) once a heartbeat cannot be
// sent or the standby has been silent for longer than the timeout.
func (l *link) heartbeats(ctx context.Context, lost chan<- string) {
	hb := l.clock.NewTicker(HeartbeatInterval)
	defer hb.Stop()
	fail := func(why string) {
		l.shipper.Close()
		select {
		case lost <- why:
		default:
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-hb.Chan():
			if err := l.shipper.Heartbeat(ctx); err != nil {
				if ctx.Err() == nil {
					fail(fmt.Sprintf("lost standby %s: %v", l.addr, err))
				}
				return
			}
			d := watchdog.NewDetector(l.timeout, l.shipper.LastHeard())
			if d.Expired(l.clock.Now()) {
				fail(fmt.Sprintf("standby %s silent for %s", l.addr, d.Silence(l.clock.Now()).Round(time.Millisecond)))
				return
			}
		}
	}
}

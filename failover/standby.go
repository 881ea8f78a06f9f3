package failover

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftrun/ftrun/arbiter"
	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/internal/promserve"
	"github.com/ftrun/ftrun/supervisor/netplace"
	"github.com/ftrun/ftrun/transport/standby"
)

// DefaultTimeout is the silence of a primary after which a standby takes over.
const DefaultTimeout = time.Second

// check is how often the loop looks for silent primaries: the decision is cheap, and
// every tick of delay adds to the failover time a client sees.
const check = 10 * time.Millisecond

// ControlSocket is the name of the control socket in a state dir, a standby's as a
// supervisor's, so that `ftrun status --state-dir` finds either.
const ControlSocket = "ctl.sock"

// Config is everything a standby was told.
type Config struct {
	Listen   string
	StateDir string
	TLS      *tls.Config
	Host     string
	// Timeout is how long a primary may be silent before the standby takes over.
	Timeout time.Duration
	Clock   clockwork.Clock
	Log     *slog.Logger
	// Ready, when set, receives the listening address once accepting.
	Ready chan<- string
	// Arbiter, when set, must hand this standby a service's key before it goes live.
	Arbiter arbiter.Arbiter
	// Bridge is this host's bridge on the clients' network, for programs that ran in a
	// network namespace of their own (--net) on their primary ("" for the default).
	Bridge string
	// MetricsAddr serves Prometheus metrics per service at /metrics ("" for none).
	MetricsAddr string
	// Only, when set, is the one service this standby may take over (a `ftrun run`
	// serving as the standby of its service's live copy elsewhere).
	Only string
	// GoLive carries out a take-over; it owns the handoff's lease from then on.
	GoLive func(Handoff) (Live, error)
	// Adopt, when set, is asked at start, for every service this standby holds,
	// whether a copy an earlier standby here took over still runs in its live dir;
	// if so (ok) it returns that copy, adopted, and the service is live here again
	// before any primary is accepted.
	Adopt func(service, liveDir string) (live Live, ok bool)
	// OnStatus, when set, receives the function that reports what the standby holds.
	OnStatus func(func() []StandbyStatus)
	// ControlSocket answers `ftrun status` ("" for STATE_DIR/control.sock, "-" for none).
	ControlSocket string
	// Server holds the standby server's limits and quotas; its Store, TLS, Host,
	// Clock, Logger and OnRefused are the ones above.
	Server standby.Config
}

// Handoff is a take-over decided: the service, the epoch to restore and the lease.
type Handoff struct {
	Service string
	Set     checkpoint.Set
	Lease   arbiter.Lease // nil without an arbiter
	// LiveDir is where a copy run by this standby keeps its own state.
	LiveDir string
}

// Live is a take-over under way. Run, when set, supervises the program until ctx
// ends; the loop runs it on a goroutine it owns. Announce tells the LAN again that
// the service's address is here (after its old primary came back and was refused).
type Live struct {
	Run      func(ctx context.Context) error
	Announce func()
}

// LiveDir is where a standby with state dir root keeps the state of a copy of svc it
// runs.
func LiveDir(root, svc string) string { return filepath.Join(root, svc, "live") }

// loop is Run's state. Maps under mu are written by the loop and read by the control
// socket, the metrics and the server's callbacks; the rest is the loop's alone.
type loop struct {
	cfg   Config
	store *standby.Store
	srv   *standby.Server
	ctx   context.Context
	wg    sync.WaitGroup

	mu         sync.Mutex
	live       map[string]bool
	problems   map[string][]string // what would make a failover fail, per service
	failovers  map[string]int
	announcers map[string]func()

	checked   map[string]bool
	acquiring map[string]context.CancelFunc
	acquired  chan acquired
	ended     chan ended
}

// ended is a live copy's end, with why.
type ended struct {
	svc string
	err error
}

type acquired struct {
	svc   string
	lease arbiter.Lease
	err   error
}

// Run holds every primary's newest committed epoch and, when a primary goes silent,
// hands its newest epoch to cfg.GoLive. It returns when ctx ends, once every
// goroutine it started has.
func Run(ctx context.Context, cfg Config) error {
	if cfg.GoLive == nil {
		return errors.New("failover: Config needs GoLive")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	store, err := standby.OpenStore(cfg.StateDir)
	if err != nil {
		return err
	}
	l := &loop{cfg: cfg, store: store, live: map[string]bool{}, problems: map[string][]string{}, failovers: map[string]int{},
		announcers: map[string]func(){}, checked: map[string]bool{}, acquiring: map[string]context.CancelFunc{},
		acquired: make(chan acquired), ended: make(chan ended, 16)}
	sc := cfg.Server
	sc.Store, sc.TLS, sc.Host, sc.Clock, sc.Logger, sc.OnRefused = store, cfg.TLS, cfg.Host, cfg.Clock, cfg.Log, l.refused
	l.srv, err = standby.NewServer(sc)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", cfg.Listen, err)
	}
	for _, svc := range store.Services() {
		cfg.Log.Info("holding committed epoch", "service", svc, "epoch", store.LastCommitted(svc))
	}
	cfg.Log.Info("standby listening", "addr", ln.Addr().String(), "state_dir", store.Root(), "takeover_after", cfg.Timeout)
	if cfg.Ready != nil {
		cfg.Ready <- ln.Addr().String()
	}
	inner, cancel := context.WithCancel(ctx)
	l.ctx = inner
	defer func() {
		cancel()
		l.wg.Wait()
	}()
	if cfg.Adopt != nil {
		l.adopt()
	}
	var serveErr error
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		serveErr = l.srv.Serve(inner, ln)
	}()
	if err := l.serve(); err != nil {
		return err
	}
	tick := cfg.Clock.NewTicker(check)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			cancel()
			l.wg.Wait()
			return serveErr
		case e := <-l.ended:
			l.liveEnded(e)
		case a := <-l.acquired:
			delete(l.acquiring, a.svc)
			if a.err != nil {
				cfg.Log.Info("not taking over", "service", a.svc, "why", a.err)
				continue
			}
			cfg.Log.Warn("holding the arbiter's key: going live", "service", a.svc)
			l.goLive(a.svc, a.lease)
		case <-tick.Chan():
			l.tick()
		}
	}
}

// serve starts what answers for the standby: status to the caller, the control
// socket and the metrics.
func (l *loop) serve() error {
	if l.cfg.OnStatus != nil {
		l.cfg.OnStatus(l.status)
	}
	path := l.cfg.ControlSocket
	if path == "" {
		path = filepath.Join(l.store.Root(), ControlSocket)
	}
	if path != "-" {
		if err := serveControl(l.ctx, &l.wg, path, l.status); err != nil {
			return err
		}
	}
	if l.cfg.MetricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(newCollector(l.status, l.failoversOf))
		addr, err := promserve.Serve(l.ctx, &l.wg, l.cfg.MetricsAddr, reg)
		if err != nil {
			return err
		}
		l.cfg.Log.Info("serving metrics", "addr", "http://"+addr+"/metrics")
	}
	return nil
}

// tick looks at every service once.
func (l *loop) tick() {
	now := l.cfg.Clock.Now()
	all := l.srv.Status()
	for svc, st := range all {
		if st.LastCommitted > 0 && !l.checked[svc] {
			l.checked[svc] = true
			l.checkRestorable(svc)
		}
		if l.cfg.Only != "" && svc != l.cfg.Only {
			continue
		}
		heard := st.LastHeard
		if st.Committing {
			// This standby is busy with the primary's epoch and reads none of its
			// heartbeats meanwhile: that silence is not the primary's.
			heard = now
		}
		ok, why := TakeOver(now, heard, l.cfg.Timeout, st.LastCommitted, l.isLive(svc))
		if !ok {
			continue
		}
		if l.cfg.Arbiter == nil {
			l.cfg.Log.Warn("taking over: "+why, "service", svc, "epoch", st.LastCommitted)
			l.goLive(svc, nil)
			continue
		}
		if _, busy := l.acquiring[svc]; !busy {
			l.cfg.Log.Warn("primary looks gone ("+why+"): asking the arbiter for its key", "service", svc)
			l.acquire(svc)
		}
	}
	// A primary heard again keeps its service: stop asking for its key.
	for svc, stop := range l.acquiring {
		if st, ok := all[svc]; ok {
			if silent, _ := TakeOver(now, st.LastHeard, l.cfg.Timeout, st.LastCommitted, false); !silent {
				stop()
			}
		}
	}
}

// acquire asks the arbiter for svc's key on a goroutine of its own; the answer comes
// back to the loop through l.acquired.
func (l *loop) acquire(svc string) {
	actx, stop := context.WithCancel(l.ctx)
	l.acquiring[svc] = stop
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		lease, err := l.cfg.Arbiter.Acquire(actx, svc, l.cfg.Host)
		select {
		case l.acquired <- acquired{svc: svc, lease: lease, err: err}:
		case <-l.ctx.Done():
			if lease != nil {
				lease.Release()
			}
		}
	}()
}

// goLive takes svc over: from the moment the server marks it live, its old primary is
// refused and its epochs are never acknowledged again, so the set chosen next is the
// last word.
func (l *loop) goLive(svc string, lease arbiter.Lease) {
	fail := func(err error) {
		l.cfg.Log.Error("cannot take over", "service", svc, "err", err)
		if lease != nil {
			lease.Release()
		}
	}
	if err := l.claim(svc); err != nil {
		fail(err)
		return
	}
	sets, err := l.store.Sets(svc)
	if err == nil && len(sets) == 0 {
		err = errors.New("no committed epoch")
	}
	if err != nil {
		fail(err)
		return
	}
	live, err := l.cfg.GoLive(Handoff{Service: svc, Set: sets[0], Lease: lease, LiveDir: LiveDir(l.store.Root(), svc)})
	if err != nil {
		fail(err)
		return
	}
	l.mu.Lock()
	l.failovers[svc]++
	l.mu.Unlock()
	l.run(svc, live)
}

// run marks svc live here and runs its copy on a goroutine the loop owns.
func (l *loop) run(svc string, live Live) {
	l.mu.Lock()
	l.live[svc] = true
	l.announcers[svc] = live.Announce
	l.mu.Unlock()
	if live.Run == nil {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		err := live.Run(l.ctx)
		if l.ctx.Err() != nil {
			return
		}
		// Buffered for every service that can be live at once; the loop reads it
		// until ctx ends.
		select {
		case l.ended <- ended{svc, err}:
		case <-l.ctx.Done():
		}
	}()
}

// adopt takes back the copies an earlier standby here left running (Config.Adopt),
// before the server accepts a primary that would otherwise be taken for theirs.
func (l *loop) adopt() {
	for _, svc := range l.store.Services() {
		if l.cfg.Only != "" && svc != l.cfg.Only {
			continue
		}
		live, ok := l.cfg.Adopt(svc, LiveDir(l.store.Root(), svc))
		if !ok {
			continue
		}
		if err := l.claim(svc); err != nil {
			l.cfg.Log.Error("cannot mark the adopted copy live", "service", svc, "err", err)
			continue
		}
		l.cfg.Log.Warn("adopted the live copy an earlier standby here left running", "service", svc)
		l.run(svc, live)
	}
}

// liveEnded: the copy that went live here ended (it fenced itself because the peer
// runs the service, or it finished, or recovery gave up). The service is no longer
// live here: this host serves as its standby again, for whichever primary connects.
func (l *loop) liveEnded(e ended) {
	if e.err != nil {
		l.cfg.Log.Error("live program ended: serving as the service's standby again", "service", e.svc, "err", e.err)
	} else {
		l.cfg.Log.Warn("live program ended: serving as the service's standby again", "service", e.svc)
	}
	l.srv.Unclaim(e.svc)
	l.mu.Lock()
	delete(l.live, e.svc)
	delete(l.announcers, e.svc)
	l.mu.Unlock()
}

// claim marks svc live in the server, waiting out an epoch being committed (which
// the take-over then restores).
func (l *loop) claim(svc string) error {
	var err error
	for range 1000 {
		if err = l.srv.Claim(svc); err == nil {
			return nil
		}
		l.cfg.Clock.Sleep(5 * time.Millisecond)
	}
	return err
}

// refused is the server's news that svc's old primary came back and was told the
// service is live here: the switch may have learnt the address on that host again.
func (l *loop) refused(svc string) {
	l.mu.Lock()
	a := l.announcers[svc]
	l.mu.Unlock()
	if a != nil {
		a()
	}
}

func (l *loop) isLive(svc string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.live[svc]
}

func (l *loop) failoversOf(svc string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.failovers[svc]
}

// status is what `ftrun status` shows of each service.
func (l *loop) status() []StandbyStatus {
	all := l.srv.Status()
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []StandbyStatus
	for svc, st := range all {
		ss := StandbyStatus{Service: svc, Role: "standby", Epoch: st.LastCommitted, LastHeard: st.LastHeard,
			Connected: st.Connections > 0, BytesReceived: st.BytesReceived, Receiving: st.Receiving}
		if !st.LastHeard.IsZero() {
			ss.Silence = l.cfg.Clock.Since(st.LastHeard)
		}
		if l.live[svc] {
			ss.Role, ss.LiveStateDir = "live", LiveDir(l.store.Root(), svc)
		}
		ss.Problems = l.problems[svc]
		out = append(out, ss)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
	return out
}

// checkRestorable records what this host lacks to restore svc's newest epoch: files
// the restore opens by path (binary, libraries) that are missing or differ, and the
// bridge of a program with its own network, so that a mismatch shows when the
// service arrives, not at failover.
func (l *loop) checkRestorable(svc string) {
	miss := missing(l.store, svc, l.cfg.Bridge)
	l.mu.Lock()
	l.problems[svc] = miss
	l.mu.Unlock()
	if len(miss) > 0 {
		l.cfg.Log.Error(fmt.Sprintf("service cannot fail over to this host: %s (%d problem(s); `ftrun status` lists them)", miss[0], len(miss)), "service", svc)
	}
}

func missing(store *standby.Store, svc, bridge string) []string {
	sets, err := store.Sets(svc)
	if err != nil || len(sets) == 0 {
		return nil
	}
	m, err := checkpoint.ReadManifest(sets[0].Dir)
	if err != nil {
		return []string{err.Error()}
	}
	req, err := checkpoint.RequiredFiles(sets[0].Dir)
	if err != nil {
		return []string{err.Error()}
	}
	miss := checkpoint.MissingFiles(req, m.SyncRoots)
	if m.Net != nil {
		if bridge == "" {
			bridge = netplace.DefaultBridge
		}
		if _, err := net.InterfaceByName(bridge); err != nil {
			miss = append(miss, fmt.Sprintf("the program serves %s from its own network namespace, but this host has no bridge %q: create it on the clients' network, or pass --bridge", m.Net.Addr, bridge))
		}
	}
	return miss
}

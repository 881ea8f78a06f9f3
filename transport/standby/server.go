package standby

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/frame"
	"github.com/ftrun/ftrun/transport/progress"
	"github.com/ftrun/ftrun/transport/svcname"
)

// Defaults for Config's zero fields.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	// DefaultIdleTimeout: a primary sends a heartbeat every 100 ms, so a connection
	// silent this long is held open by nobody who means well.
	DefaultIdleTimeout = 30 * time.Second
	// DefaultMaxUnauthenticated and DefaultMaxUnauthenticatedPerHost bound the
	// connections between accept and an accepted Hello: what a peer without a
	// certificate can hold. Per host it is low (a primary needs one connection per
	// service, and it is authenticated within a round trip or two), in all high
	// enough that one flooding host cannot take every slot.
	DefaultMaxUnauthenticated        = 64
	DefaultMaxUnauthenticatedPerHost = 8
)

// Accept retry backoff: a failing Accept (out of file descriptors, say) is retried,
// never given up, from this delay doubling up to acceptBackoffMax.
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Config is what a Server needs.
type Config struct {
	Store *Store
	// TLS is the server side of mutual TLS (auth.Config.Server()); required, since
	// the stream carries a program's memory.
	TLS *tls.Config
	// Host names this standby in its Hello.
	Host string
	// Clock times LastHeard; default the real clock.
	Clock clockwork.Clock
	// Logger gets one line per refused connection or epoch; default slog.Default().
	Logger *slog.Logger
	// Limits bound what a frame may declare; zero fields take frame's defaults.
	Limits frame.Limits
	// Pages rebuilds page deltas; default DeltaPages (checkpoint/delta). One that is
	// also a PagePatcher may write over the older set's pages files, and only what it
	// wrote anew is checksummed again; any other is checked whole.
	Pages PageApplier
	// HandshakeTimeout bounds TLS handshake plus Hello; WriteTimeout each reply;
	// IdleTimeout the wait for each frame after the Hello.
	HandshakeTimeout time.Duration
	WriteTimeout     time.Duration
	IdleTimeout      time.Duration
	// MaxUnauthenticated and MaxUnauthenticatedPerHost cap connections not yet past
	// their Hello, in all and per remote address; zero takes the defaults.
	MaxUnauthenticated        int
	MaxUnauthenticatedPerHost int
	// Quota bounds what one certificate may hold here; zero fields are unlimited.
	Quota Quota
	// OnRefused, when set, is called (on the connection's goroutine) after the old
	// primary of a claimed service was told the service is live here.
	OnRefused func(service string)
	// ProgressEvery: an epoch that takes longer than this to arrive is reported in
	// the log this often; default progress.Every.
	ProgressEvery time.Duration
}

// Status is what the standby knows of one service.
type Status struct {
	Service       string
	LastCommitted uint64
	// LastHeard is when the last valid frame from the service's primary arrived
	// (zero: never since this Server started).
	LastHeard     time.Time
	BytesReceived uint64
	Connections   int
	// LastCommitTime is how long the standby took over the last epoch it committed,
	// from the primary's EpochCommit to the ack: rebuilding, verifying and fsyncing.
	LastCommitTime time.Duration
	// Committing is set while the standby commits an epoch of the service: it reads no
	// frame meanwhile, so the primary's silence then is the standby's own doing.
	Committing bool
	// Receiving is the epoch on its way in, if one is.
	Receiving *progress.Transfer
}

// Server receives epochs from any number of primaries, one goroutine per connection.
type Server struct {
	cfg Config
	log *slog.Logger
	clk clockwork.Clock

	mu    sync.Mutex
	stats map[string]*Status
	// meters follow each service's epoch on its way in, on its newest connection.
	meters map[string]*progress.Meter
	// unauth counts connections not yet past their Hello, in all and per host.
	unauth     int
	unauthHost map[string]int
	// impairedAt is when this standby last could not have heard a primary because
	// of itself: Accept failing, or every unauthenticated slot taken. Silence up
	// to then is not evidence that a primary died (see LastHeard).
	impairedAt time.Time
	// refusals and impairments rate-limit the log lines of turned-away connections
	// and of the standby's own trouble, each on its own.
	refusals, impairments rateLog
	quotas                *quotas
	// live are the services this host runs itself now (see Claim); conns are the open
	// connections per service, closed when it is claimed.
	live  map[string]bool
	conns map[string]map[*conn]struct{}
	// liveSince is the epoch each claimed service went live from (its newest
	// committed epoch when claimed), stated to the refused (frame.FeatureLiveSince).
	liveSince map[string]uint64
}

// NewServer returns a Server for cfg.
func NewServer(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.TLS == nil {
		return nil, errors.New("standby: Config needs a Store and a TLS config")
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Pages == nil {
		cfg.Pages = DeltaPages{}
	}
	if cfg.HandshakeTimeout == 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.WriteTimeout == 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.MaxUnauthenticated == 0 {
		cfg.MaxUnauthenticated = DefaultMaxUnauthenticated
	}
	if cfg.MaxUnauthenticatedPerHost == 0 {
		cfg.MaxUnauthenticatedPerHost = DefaultMaxUnauthenticatedPerHost
	}
	return &Server{cfg: cfg, log: cfg.Logger, clk: cfg.Clock, stats: map[string]*Status{}, meters: map[string]*progress.Meter{},
		unauthHost: map[string]int{}, quotas: newQuotas(cfg.Store, cfg.Quota),
		live: map[string]bool{}, conns: map[string]map[*conn]struct{}{}, liveSince: map[string]uint64{}}, nil
}

// Status reports every service known to the store or heard from since start.
func (s *Server) Status() map[string]Status {
	out := map[string]Status{}
	for _, name := range s.cfg.Store.Services() {
		out[name] = Status{Service: name}
	}
	s.mu.Lock()
	for name, st := range s.stats {
		out[name] = *st
		if imp := s.impairedNow(); !st.LastHeard.IsZero() && imp.After(st.LastHeard) {
			o := out[name]
			o.LastHeard = imp
			out[name] = o
		}
	}
	for name, m := range s.meters {
		if tr, ok := m.Current(); ok {
			st := out[name]
			st.Receiving = &tr
			out[name] = st
		}
	}
	s.mu.Unlock()
	for name, st := range out {
		st.LastCommitted = s.cfg.Store.LastCommitted(name)
		out[name] = st
	}
	return out
}

// LastHeard is when the primary of service was last heard from (zero: not since
// this Server started) or, if later, when this standby last could not have heard it
// because of itself (its Accept failing, every unauthenticated slot taken by a
// flood): failure detection compares it with the injected clock, and must never take
// a primary for dead that only this standby failed to hear. Status reports the same.
func (s *Server) LastHeard(service string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.stats[service]; st != nil {
		if imp := s.impairedNow(); !st.LastHeard.IsZero() && imp.After(st.LastHeard) {
			return imp
		}
		return st.LastHeard
	}
	return time.Time{}
}

// impairedNow is when this standby was last impaired: now while every
// unauthenticated slot is taken (a primary reconnecting now would be turned away),
// else the last time it was. s.mu must be held.
func (s *Server) impairedNow() time.Time {
	if s.unauth >= s.cfg.MaxUnauthenticated {
		return s.clk.Now()
	}
	return s.impairedAt
}

// impaired records that this standby cannot hear every primary now, and says so.
func (s *Server) impaired(why string, err error) {
	s.mu.Lock()
	s.impairedAt = s.clk.Now()
	s.mu.Unlock()
	if n, ok := s.impairments.allow(s.clk.Now()); ok {
		s.log.Error("standby: "+why+": primaries may not reach this standby, so it takes over nothing until it can hear them again",
			"err", err, "similar_suppressed", n)
	}
}

// admit takes an unauthenticated slot for a connection from host, or says why not.
// The slot is held until release (after the Hello, or when the connection ends).
func (s *Server) admit(host string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unauthHost[host] >= s.cfg.MaxUnauthenticatedPerHost {
		return fmt.Errorf("%d connections from %s not yet authenticated (cap %d per host)", s.unauthHost[host], host, s.cfg.MaxUnauthenticatedPerHost)
	}
	if s.unauth >= s.cfg.MaxUnauthenticated {
		return errFull{fmt.Errorf("%d connections not yet authenticated (cap %d)", s.unauth, s.cfg.MaxUnauthenticated)}
	}
	s.unauth++
	s.unauthHost[host]++
	return nil
}

func (s *Server) release(host string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.unauth >= s.cfg.MaxUnauthenticated {
		// Impaired until this moment: silence is counted from here on.
		s.impairedAt = s.clk.Now()
	}
	s.unauth--
	if s.unauthHost[host]--; s.unauthHost[host] <= 0 {
		delete(s.unauthHost, host)
	}
}

// errFull is an admission refusal for want of a slot in all: unlike one host over
// its own cap, that can keep a genuine primary out.
type errFull struct{ error }

// rateLog lets through one line a second and counts the rest.
type rateLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

func (r *rateLog) allow(now time.Time) (int, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.last.IsZero() && now.Sub(r.last) < time.Second {
		r.suppressed++
		return 0, false
	}
	n := r.suppressed
	r.last, r.suppressed = now, 0
	return n, true
}

// ErrLive: the service runs on this host now; no primary's epoch of it is taken.
var ErrLive = errors.New("the service is live on this host")

// Claim marks service as live on this host, from now until the Server ends: every
// connection of it is closed, a primary that connects again is told so (a Hello of
// role frame.HelloRoleLive) and its epochs are never acknowledged again, so the copy
// that went live here is the only one whose output counts. Claim fails while an
// epoch of the service is being committed; that epoch decides which set goes live,
// so the caller asks again once it is in.
func (s *Server) Claim(service string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.stats[service]; st != nil && st.Committing {
		return fmt.Errorf("standby: an epoch of %q is being committed", service)
	}
	s.live[service] = true
	s.liveSince[service] = s.cfg.Store.LastCommitted(service)
	for cn := range s.conns[service] {
		cn.c.Close()
	}
	return nil
}

// Unclaim ends Claim: the copy that went live here has ended (it fenced itself, or
// it finished), so a primary of the service may connect here again. The silence of
// the service's old primary counts for nothing from now on: a service is taken over
// again only once a primary has been heard (LastHeard is zero until then).
func (s *Server) Unclaim(service string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.live, service)
	delete(s.liveSince, service)
	if st := s.stats[service]; st != nil {
		st.LastHeard = time.Time{}
	}
}

func (s *Server) liveSinceOf(service string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.liveSince[service]
}

// Live says whether service was claimed.
func (s *Server) Live(service string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.live[service]
}

// beginCommit marks a commit of service in progress, unless the service was claimed.
func (s *Server) beginCommit(service string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live[service] {
		return ErrLive
	}
	s.statOf(service).Committing = true
	return nil
}

// endCommit marks a commit of service over, which counts as hearing the primary: its
// frames waited unread while the standby committed.
func (s *Server) endCommit(service string) {
	s.mu.Lock()
	s.statOf(service).Committing = false
	s.mu.Unlock()
	s.heard(service, 0)
}

func (s *Server) heard(service string, bytes int) {
	now := s.clk.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.statOf(service)
	st.LastHeard = now
	st.BytesReceived += uint64(bytes)
}

// statOf is service's entry in s.stats, made on first use; s.mu must be held.
func (s *Server) statOf(service string) *Status {
	st := s.stats[service]
	if st == nil {
		st = &Status{Service: service}
		s.stats[service] = st
	}
	return st
}

// attachMeter gives a new connection of service its own progress meter, which Status
// shows from now on (the newest connection is the one that sends).
func (s *Server) attachMeter(service string) *progress.Meter {
	m := progress.NewMeter(s.clk, s.cfg.ProgressEvery)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.meters[service] = m
	return m
}

// detachMeter forgets m when its connection ends, unless a newer one took over.
func (s *Server) detachMeter(service string, m *progress.Meter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meters[service] == m {
		delete(s.meters, service)
	}
}

func (s *Server) commitTook(service string, d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.statOf(service).LastCommitTime = d
}

// connected counts cn in (delta 1) or out (-1); a claimed service takes no new one.
func (s *Server) connected(cn *conn, delta int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	service := cn.name
	if delta > 0 {
		if s.live[service] {
			return ErrLive
		}
		if s.conns[service] == nil {
			s.conns[service] = map[*conn]struct{}{}
		}
		s.conns[service][cn] = struct{}{}
	} else {
		delete(s.conns[service], cn)
	}
	s.statOf(service).Connections += delta
	return nil
}

// Serve accepts connections on ln until ctx ends, then closes ln and every
// connection and returns nil once all their goroutines have ended. Accept errors
// never end it: each is logged and retried with backoff, and while they last the
// standby counts itself impaired (see LastHeard), so it takes nothing over that it
// merely cannot hear.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	backoff := time.Duration(0)
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			s.impaired(fmt.Sprintf("cannot accept connections (retrying in %s)", backoff), err)
			select {
			case <-ctx.Done():
				return nil
			case <-s.clk.After(backoff):
			}
			continue
		}
		backoff = 0
		host := remoteHost(c)
		if err := s.admit(host); err != nil {
			c.Close()
			if full := (errFull{}); errors.As(err, &full) {
				s.impaired("turning connections away", err)
			} else if n, ok := s.refusals.allow(s.clk.Now()); ok {
				s.log.Warn("standby: refused connection", "remote", c.RemoteAddr().String(), "err", err, "similar_suppressed", n)
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handleTLS(ctx, c, host)
		}()
	}
}

func remoteHost(c net.Conn) string {
	host, _, err := net.SplitHostPort(c.RemoteAddr().String())
	if err != nil {
		return c.RemoteAddr().String()
	}
	return host
}

// handleTLS authenticates the peer, then runs the epoch protocol on the connection.
// The connection holds one of host's unauthenticated slots until its Hello is
// accepted.
func (s *Server) handleTLS(ctx context.Context, c net.Conn, host string) {
	slot := true
	unslot := func() {
		if slot {
			slot = false
			s.release(host)
		}
	}
	defer unslot()
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	tc := tls.Server(c, s.cfg.TLS)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			if n, ok := s.refusals.allow(s.clk.Now()); ok {
				s.log.Warn("standby: refused connection: TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err, "similar_suppressed", n)
			}
		}
		return
	}
	s.serveConn(ctx, tc, auth.PeerIdentity(tc.ConnectionState()), unslot)
}

// conn is one primary's connection. Its goroutine alone reads and writes it.
type conn struct {
	s    *Server
	c    net.Conn
	peer string
	id   auth.Identity
	// authed gives up the connection's unauthenticated slot once its Hello is in.
	authed  func()
	r       *frame.Reader
	w       *frame.Writer
	seq     *frame.Sequencer
	svc     *service
	name    string
	in      *incoming
	resync  bool // a full epoch was asked for; deltas until then are dropped
	started bool
	// ackPhases: the primary's Hello asked for the commit's phases in each Ack.
	ackPhases bool
	// fromMemory: the primary's Hello asked for acks once an epoch is complete and
	// verified, before it is on disk (frame.FeatureAckFromMemory).
	fromMemory bool
	meter      *progress.Meter
}

// serveConn runs the protocol on an authenticated connection. Any frame that does
// not check out ends the connection with one log line; committed state is only
// ever changed by a complete, verified epoch.
func (s *Server) serveConn(ctx context.Context, c net.Conn, id auth.Identity, authed func()) {
	peer := id.Name
	cn := &conn{s: s, c: c, peer: peer, id: id, authed: authed, r: frame.NewReader(c, s.cfg.Limits), w: frame.NewWriterLimits(c, s.cfg.Limits)}
	defer func() {
		if cn.in != nil {
			cn.in.abort()
		}
		if cn.started {
			s.detachMeter(cn.name, cn.meter)
			_ = s.connected(cn, -1)
		}
	}()
	err := cn.run()
	switch {
	case ctx.Err() != nil:
	case errors.Is(err, io.EOF):
		s.log.Info("standby: primary closed the connection", "peer", peer, "remote", c.RemoteAddr().String(), "service", cn.name)
	default:
		s.log.Warn("standby: closing connection", "peer", peer, "remote", c.RemoteAddr().String(), "service", cn.name, "err", err)
	}
}

func (cn *conn) send(epoch uint64, p frame.Payload) error {
	if err := cn.c.SetWriteDeadline(time.Now().Add(cn.s.cfg.WriteTimeout)); err != nil {
		return err
	}
	return cn.w.WritePayload(epoch, p)
}

func (cn *conn) run() error {
	cn.c.SetReadDeadline(time.Now().Add(cn.s.cfg.HandshakeTimeout))
	f, err := cn.r.Next()
	if err != nil {
		return fmt.Errorf("waiting for Hello: %w", err)
	}
	if f.Type != frame.TypeHello {
		return fmt.Errorf("first frame is %s, not Hello", f.Type)
	}
	var h frame.Hello
	if err := h.UnmarshalBinary(f.Payload); err != nil {
		return err
	}
	if err := svcname.Check(h.Service); err != nil {
		return err
	}
	if !cn.id.MayServe(h.Service) {
		return fmt.Errorf("%w: certificate %s may not serve service %q (issue one that names it: `ftrun keygen issue --role primary --service %s`)", auth.ErrForbidden, cn.id, h.Service, h.Service)
	}
	release, err := cn.s.quotas.claim(cn.id, h.Service)
	if err != nil {
		return err
	}
	defer release()
	svc, err := cn.s.cfg.Store.service(h.Service)
	if err != nil {
		return err
	}
	cn.svc, cn.name = svc, h.Service
	committed := cn.s.cfg.Store.LastCommitted(h.Service)
	cn.seq = frame.NewSequencer(frame.RoleStandby, committed)
	if err := cn.seq.Step(f); err != nil {
		return err
	}
	if err := cn.s.connected(cn, 1); err != nil {
		// The copy that went live here is the only one: tell the old primary, which
		// stops its own.
		cn.s.log.Warn("standby: refusing the service's old primary: the service is live on this host", "service", cn.name, "peer", cn.peer, "remote", cn.c.RemoteAddr().String())
		_ = cn.send(0, &frame.Hello{Version: frame.Version, Service: h.Service, Host: cn.s.cfg.Host, Role: frame.HelloRoleLive, LastCommitted: committed,
			Features: []string{frame.FeatureLiveSince + strconv.FormatUint(cn.s.liveSinceOf(cn.name), 10)}})
		if f := cn.s.cfg.OnRefused; f != nil {
			f(cn.name)
		}
		return fmt.Errorf("refused primary of %q: %w", cn.name, err)
	}
	cn.started = true
	cn.ackPhases = slices.Contains(h.Features, frame.FeatureAckPhases)
	cn.fromMemory = slices.Contains(h.Features, frame.FeatureAckFromMemory)
	if cn.fromMemory {
		cn.s.log.Info("standby: the primary asks for acks from memory: its epochs are acked before they are on this disk", "service", cn.name, "peer", cn.peer)
	}
	cn.meter = cn.s.attachMeter(cn.name)
	cn.s.heard(cn.name, frame.HeaderSize+len(f.Payload)+frame.TrailerSize)
	if h.LastCommitted != committed {
		cn.s.log.Info("standby: primary's view of this standby differs", "service", cn.name, "primary_thinks", h.LastCommitted, "committed", committed)
	}
	reply := &frame.Hello{Version: frame.Version, Service: h.Service, Host: cn.s.cfg.Host, Role: frame.RoleStandby.String(), LastCommitted: committed,
		Features: []string{frame.FeatureFileDelta}}
	if err := cn.send(0, reply); err != nil {
		return err
	}
	cn.authed()
	for {
		// Set before every read, not once: the time this goroutine spends committing
		// an epoch is not the primary's silence.
		cn.c.SetReadDeadline(time.Now().Add(cn.s.cfg.IdleTimeout))
		f, err := cn.r.Next()
		if err != nil {
			return err
		}
		if err := cn.seq.Step(f); err != nil {
			return err
		}
		n := frame.HeaderSize + len(f.Payload) + frame.TrailerSize
		cn.s.heard(cn.name, n)
		if tr, due := cn.meter.Add(int64(n)); due {
			cn.s.log.Info("standby: receiving", "service", cn.name, "progress", tr.String(), "done_bytes", tr.Done, "rate_bytes_per_s", int64(tr.Rate()))
		}
		p, err := frame.DecodePayload(f.Type, f.Payload)
		if err != nil {
			return err
		}
		if err := cn.step(f.Epoch, p); err != nil {
			return err
		}
	}
}

// ack is the Ack for epoch, with the commit's phases for a primary that asked for
// them: an older one refuses an Ack longer than the epoch.
func (cn *conn) ack(epoch uint64, took frame.AckPhases) *frame.Ack {
	a := &frame.Ack{Epoch: epoch}
	if cn.ackPhases {
		a.Phases = &took
	}
	return a
}

// step acts on one frame the Sequencer accepted.
func (cn *conn) step(epoch uint64, p frame.Payload) error {
	switch p := p.(type) {
	case *frame.Heartbeat:
		return cn.send(0, &frame.Heartbeat{SentUnixNano: cn.s.clk.Now().UnixNano(), Committed: cn.s.cfg.Store.LastCommitted(cn.name)})
	case *frame.EpochBegin:
		if p.Full {
			cn.resync = false
		}
		cn.s.quotas.begin(cn.name)
		cn.in = beginEpoch(cn.svc, epoch, *p, cn.s.cfg.Pages)
		cn.in.cached = cn.fromMemory
		name := cn.name
		cn.in.charge = func(n int64) error { return cn.s.quotas.charge(name, n) }
		cn.in.onEnd = func() { cn.s.quotas.end(name) }
		cn.in.now = cn.s.clk.Now
		cn.meter.Start(epoch, p.Full, 0)
		if cn.resync {
			// Already asked for a full epoch: this delta was sent before the primary
			// saw the request. Drop it quietly.
			cn.in.failWith(badBase("delta epoch %d sent before the requested full epoch", epoch))
			return nil
		}
		if f := cn.in.fail; f != nil && f.resync {
			cn.resync = true
			cn.s.log.Warn("standby: refusing epoch, asking for a full one", "service", cn.name, "epoch", epoch, "err", f.err)
			return cn.send(epoch, &frame.ResyncRequest{Reason: f.err.Error(), HaveEpoch: cn.s.cfg.Store.LastCommitted(cn.name)})
		}
		return nil
	case *frame.ImageData:
		cn.in.image(p)
	case *frame.PageDelta:
		cn.in.pageDelta(p)
	case *frame.FileDelta:
		cn.in.fileDelta(p)
	case *frame.EpochCommit:
		in := cn.in
		cn.in = nil
		if tr, long := cn.meter.Finish(); long {
			cn.s.log.Info("standby: epoch received", "service", cn.name, "progress", tr.String(), "took", tr.Elapsed.Round(time.Millisecond))
		}
		alreadyAsked := in.fail != nil && in.fail.resync && cn.resync
		start := time.Now()
		if err := cn.s.beginCommit(cn.name); err != nil {
			in.abort()
			return fmt.Errorf("epoch %d of %q not committed: %w", epoch, cn.name, err)
		}
		e := in.commit(p.Manifest, func(err error) {
			if err != nil {
				cn.s.log.Warn("standby: pruning old epochs failed", "service", cn.name, "err", err)
			}
		})
		cn.s.endCommit(cn.name)
		if e == nil {
			cn.s.commitTook(cn.name, time.Since(start))
			return cn.send(epoch, cn.ack(epoch, in.took))
		}
		cn.s.log.Warn("standby: epoch not committed", "service", cn.name, "epoch", epoch, "code", e.code.String(), "err", e.err)
		if e.resync && !alreadyAsked {
			cn.resync = true
			if err := cn.send(epoch, &frame.ResyncRequest{Reason: e.err.Error(), HaveEpoch: cn.s.cfg.Store.LastCommitted(cn.name)}); err != nil {
				return err
			}
		}
		if err := cn.send(epoch, &frame.Nack{Epoch: epoch, Code: e.code, Reason: e.err.Error()}); err != nil {
			return err
		}
		if errors.Is(e.err, auth.ErrForbidden) {
			return e.err
		}
		return nil
	default:
		return fmt.Errorf("frame: %w: unexpected %s from a primary", frame.ErrProtocol, p.Type())
	}
	return nil
}

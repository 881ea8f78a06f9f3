package standby

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/frame"
	"github.com/ftrun/ftrun/transport/progress"
)

// Defaults for Config's zero fields.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
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
	// HandshakeTimeout bounds TLS handshake plus Hello; WriteTimeout each reply.
	HandshakeTimeout time.Duration
	WriteTimeout     time.Duration
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
	// live are the services this host runs itself now (see Claim); conns are the open
	// connections per service, closed when it is claimed.
	live  map[string]bool
	conns map[string]map[*conn]struct{}
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
	return &Server{cfg: cfg, log: cfg.Logger, clk: cfg.Clock, stats: map[string]*Status{}, meters: map[string]*progress.Meter{},
		live: map[string]bool{}, conns: map[string]map[*conn]struct{}{}}, nil
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
// this Server started). Failure detection compares it with the injected clock.
func (s *Server) LastHeard(service string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.stats[service]; st != nil {
		return st.LastHeard
	}
	return time.Time{}
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
	for cn := range s.conns[service] {
		cn.c.Close()
	}
	return nil
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
// connection and returns once all their goroutines have ended. It returns nil when
// stopped by ctx, otherwise the listener's error.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			cancel()
			return fmt.Errorf("standby: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handleTLS(ctx, c)
		}()
	}
}

// handleTLS authenticates the peer, then runs the epoch protocol on the connection.
func (s *Server) handleTLS(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	tc := tls.Server(c, s.cfg.TLS)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.HandshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		if ctx.Err() == nil {
			s.log.Warn("standby: refused connection: TLS handshake failed", "peer", c.RemoteAddr().String(), "err", err)
		}
		return
	}
	s.serveConn(ctx, tc, auth.PeerName(tc.ConnectionState()))
}

// conn is one primary's connection. Its goroutine alone reads and writes it.
type conn struct {
	s       *Server
	c       net.Conn
	peer    string
	r       *frame.Reader
	w       *frame.Writer
	seq     *frame.Sequencer
	svc     *service
	name    string
	in      *incoming
	resync  bool // a full epoch was asked for; deltas until then are dropped
	started bool
	meter   *progress.Meter
}

// serveConn runs the protocol on an authenticated connection. Any frame that does
// not check out ends the connection with one log line; committed state is only
// ever changed by a complete, verified epoch.
func (s *Server) serveConn(ctx context.Context, c net.Conn, peer string) {
	cn := &conn{s: s, c: c, peer: peer, r: frame.NewReader(c, s.cfg.Limits), w: frame.NewWriterLimits(c, s.cfg.Limits)}
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
		_ = cn.send(0, &frame.Hello{Version: frame.Version, Service: h.Service, Host: cn.s.cfg.Host, Role: frame.HelloRoleLive, LastCommitted: committed})
		if f := cn.s.cfg.OnRefused; f != nil {
			f(cn.name)
		}
		return fmt.Errorf("refused primary of %q: %w", cn.name, err)
	}
	cn.started = true
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
	cn.c.SetReadDeadline(time.Time{})
	for {
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

// step acts on one frame the Sequencer accepted.
func (cn *conn) step(epoch uint64, p frame.Payload) error {
	switch p := p.(type) {
	case *frame.Heartbeat:
		return cn.send(0, &frame.Heartbeat{SentUnixNano: cn.s.clk.Now().UnixNano(), Committed: cn.s.cfg.Store.LastCommitted(cn.name)})
	case *frame.EpochBegin:
		if p.Full {
			cn.resync = false
		}
		cn.in = beginEpoch(cn.svc, epoch, *p, cn.s.cfg.Pages)
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
			return cn.send(epoch, &frame.Ack{Epoch: epoch})
		}
		cn.s.log.Warn("standby: epoch not committed", "service", cn.name, "epoch", epoch, "code", e.code.String(), "err", e.err)
		if e.resync && !alreadyAsked {
			cn.resync = true
			if err := cn.send(epoch, &frame.ResyncRequest{Reason: e.err.Error(), HaveEpoch: cn.s.cfg.Store.LastCommitted(cn.name)}); err != nil {
				return err
			}
		}
		return cn.send(epoch, &frame.Nack{Epoch: epoch, Code: e.code, Reason: e.err.Error()})
	default:
		return fmt.Errorf("frame: %w: unexpected %s from a primary", frame.ErrProtocol, p.Type())
	}
	return nil
}

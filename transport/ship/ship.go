package ship

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/frame"
	"github.com/ftrun/ftrun/transport/progress"
)

// Errors Ship wraps; check them with errors.Is.
var (
	// ErrStandbyFull: the standby had no space for the epoch. It still holds the
	// last acked one, so the next epoch may again be a delta.
	ErrStandbyFull = errors.New("standby disk full")
	// ErrResync: the standby refused the epoch as corrupt or against a base it does
	// not hold; the next Ship sends a full set.
	ErrResync = errors.New("standby asked for a full epoch")
	// ErrRefused: the standby refused the epoch for another reason (NackInternal).
	ErrRefused = errors.New("standby refused the epoch")
	// ErrNotConnected: no connection, or it broke; Dial again.
	ErrNotConnected = errors.New("not connected to a standby")
	// ErrPeerLive: the standby runs the service itself (it took over); this copy is
	// superseded and must stop, and the peer takes no epochs from it.
	ErrPeerLive = errors.New("the service is live on the standby's host")
)

// PeerLiveError is the ErrPeerLive that Dial returns: what the refusing peer said.
type PeerLiveError struct {
	Host      string
	Committed uint64
	// LiveSince is the epoch the peer's copy went live from (0: it did not say).
	LiveSince uint64
}

func (e *PeerLiveError) Error() string {
	return fmt.Sprintf("%v (host %q, holding epoch %d, live since epoch %d)", ErrPeerLive, e.Host, e.Committed, e.LiveSince)
}

func (e *PeerLiveError) Is(target error) bool { return target == ErrPeerLive }

// liveSince reads frame.FeatureLiveSince among a Hello's features (0 when absent).
func liveSince(features []string) uint64 {
	for _, f := range features {
		if v, ok := strings.CutPrefix(f, frame.FeatureLiveSince); ok {
			n, err := strconv.ParseUint(v, 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return 0
}

// DefaultChunkSize is how much of an image one ImageData frame carries: well below
// the frame limit, large enough that framing costs nothing measurable.
const DefaultChunkSize = 1 << 20

// Config is what a Shipper needs.
type Config struct {
	// Service names the protected program; the standby keeps its epochs under it.
	Service string
	// Host names this primary in its Hello.
	Host string
	// Clock times heartbeats and Stats; default the real clock.
	Clock  clockwork.Clock
	Logger *slog.Logger
	// Differ computes deltas; default a PageDiffer (changed pages and files only).
	Differ Differ
	// ChunkSize is the ImageData payload size; default DefaultChunkSize.
	ChunkSize int
	// Limits must match the standby's; zero fields take frame's defaults.
	Limits frame.Limits
	// HelloTimeout bounds the Hello exchange when ctx has no deadline.
	HelloTimeout time.Duration
	// LiveSince is the epoch this copy took the service over from (0: it never
	// took over), stated in the Hello (frame.FeatureLiveSince).
	LiveSince uint64
	// AckFromMemory asks the standby to ack epochs before they are on its disk
	// (frame.FeatureAckFromMemory).
	AckFromMemory bool
	// ProgressEvery: an epoch that takes longer than this to send is reported in the
	// log this often; default progress.Every.
	ProgressEvery time.Duration
}

// Stats describes one shipped epoch.
type Stats struct {
	Epoch uint64
	// Bytes is everything written for the epoch, frame headers included.
	Bytes int64
	// BlockBytes is the part of Bytes that is file data sent as changed blocks
	// (FileDelta), framing excluded.
	BlockBytes int64
	Full       bool
	Duration   time.Duration
	// When the Ship started, its delta was computed, its last frame written, and the
	// standby's answer came: where the epoch's time went on this side.
	Started, Diffed, Sent, Answered time.Time
	// Standby is what the standby measured of its commit (nil: it did not say).
	Standby *frame.AckPhases
}

// Shipper sends one service's epochs to one standby. Ship calls are serialised;
// Heartbeat may be called concurrently with Ship.
type Shipper struct {
	cfg Config
	log *slog.Logger
	clk clockwork.Clock

	shipMu sync.Mutex // one epoch in flight at a time
	meter  *progress.Meter

	mu sync.Mutex
	// base is the newest epoch the standby acked, nil before the first.
	base             *Base
	needFull         bool
	lastHeard        time.Time
	standbyCommitted uint64
	stats            Stats
	l                *link
}

// link is one connection and the goroutine that reads it.
type link struct {
	conn    net.Conn
	wmu     sync.Mutex
	w       *frame.Writer
	seqMu   sync.Mutex
	seq     *frame.Sequencer
	results chan result
	closing chan struct{}
	done    chan struct{} // closed when the reader has ended; err is then set
	err     error
	once    sync.Once
	// fileDelta: the standby rebuilds files from FileDeltas (its Hello said so).
	fileDelta bool
}

type result struct {
	epoch  uint64
	nack   *frame.Nack
	phases *frame.AckPhases
}

// New returns a Shipper that is not connected yet.
func New(cfg Config) *Shipper {
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Differ == nil {
		cfg.Differ = NewPageDiffer()
	}
	if cfg.ChunkSize <= 0 {
		cfg.ChunkSize = DefaultChunkSize
	}
	if cfg.HelloTimeout <= 0 {
		cfg.HelloTimeout = 10 * time.Second
	}
	return &Shipper{cfg: cfg, log: cfg.Logger, clk: cfg.Clock, meter: progress.NewMeter(cfg.Clock, cfg.ProgressEvery)}
}

// Progress is the epoch being sent, if one is: bytes written so far of about how
// many, and the rate.
func (s *Shipper) Progress() (progress.Transfer, bool) { return s.meter.Current() }

// Dial connects to the standby at addr (closing any earlier connection) and
// exchanges Hellos. If the standby's newest committed epoch is not the one last
// acked here, the next epoch is sent full: a delta would have no base there.
func (s *Shipper) Dial(ctx context.Context, addr string, tlsConf *tls.Config) error {
	s.Close()
	d := tls.Dialer{Config: tlsConf}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("ship: dial %s: %w", addr, err)
	}
	if err := s.hello(ctx, c); err != nil {
		c.Close()
		return fmt.Errorf("ship: %s: %w", addr, err)
	}
	return nil
}

func (s *Shipper) hello(ctx context.Context, c net.Conn) error {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(s.cfg.HelloTimeout)
	}
	c.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()

	s.mu.Lock()
	var acked uint64
	if s.base != nil {
		acked = s.base.Epoch
	}
	s.mu.Unlock()
	l := &link{
		conn:    c,
		w:       frame.NewWriterLimits(c, s.cfg.Limits),
		seq:     frame.NewSequencer(frame.RolePrimary, acked),
		results: make(chan result, 4),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	hello := &frame.Hello{Version: frame.Version, Service: s.cfg.Service, Host: s.cfg.Host, Role: frame.RolePrimary.String(), LastCommitted: acked,
		Features: []string{frame.FeatureAckPhases}}
	if s.cfg.LiveSince > 0 {
		hello.Features = append(hello.Features, frame.FeatureLiveSince+strconv.FormatUint(s.cfg.LiveSince, 10))
	}
	if s.cfg.AckFromMemory {
		hello.Features = append(hello.Features, frame.FeatureAckFromMemory)
	}
	if err := l.w.WritePayload(0, hello); err != nil {
		return err
	}
	r := frame.NewReader(c, s.cfg.Limits)
	f, err := r.Next()
	if err != nil {
		return fmt.Errorf("waiting for the standby's Hello: %w", err)
	}
	if err := l.seq.Step(f); err != nil {
		return err
	}
	var h frame.Hello
	if err := h.UnmarshalBinary(f.Payload); err != nil {
		return err
	}
	if h.Service != s.cfg.Service {
		return fmt.Errorf("standby answered for service %q, not %q", h.Service, s.cfg.Service)
	}
	if h.Role == frame.HelloRoleLive {
		return &PeerLiveError{Host: h.Host, Committed: h.LastCommitted, LiveSince: liveSince(h.Features)}
	}
	l.fileDelta = slices.Contains(h.Features, frame.FeatureFileDelta)
	if !stop() {
		return ctx.Err()
	}
	c.SetDeadline(time.Time{})

	s.mu.Lock()
	s.lastHeard = s.clk.Now()
	s.standbyCommitted = h.LastCommitted
	if h.LastCommitted != acked || acked == 0 {
		if acked != 0 {
			s.log.Info("ship: standby holds another epoch than the last acked; next epoch is full", "service", s.cfg.Service, "standby", h.LastCommitted, "acked", acked)
		}
		s.needFull = true
	}
	s.l = l
	s.mu.Unlock()
	go s.read(l, r)
	return nil
}

// read is the link's reader goroutine: it ends when the connection does, and
// Close (or a failed Ship) waits for it.
func (s *Shipper) read(l *link, r *frame.Reader) {
	defer close(l.done)
	for {
		f, err := r.Next()
		if err == nil {
			l.seqMu.Lock()
			err = l.seq.Step(f)
			l.seqMu.Unlock()
		}
		var p frame.Payload
		if err == nil {
			p, err = frame.DecodePayload(f.Type, f.Payload)
		}
		if err != nil {
			l.err = err
			l.conn.Close()
			return
		}
		s.mu.Lock()
		s.lastHeard = s.clk.Now()
		s.mu.Unlock()
		switch p := p.(type) {
		case *frame.Heartbeat:
			s.mu.Lock()
			s.standbyCommitted = p.Committed
			s.mu.Unlock()
		case *frame.ResyncRequest:
			s.log.Warn("ship: standby asks for a full epoch", "service", s.cfg.Service, "reason", p.Reason, "standby_has", p.HaveEpoch)
			s.mu.Lock()
			s.needFull = true
			s.mu.Unlock()
		case *frame.Ack:
			select {
			case l.results <- result{epoch: p.Epoch, phases: p.Phases}:
			case <-l.closing:
				return
			}
		case *frame.Nack:
			select {
			case l.results <- result{epoch: p.Epoch, nack: p}:
			case <-l.closing:
				return
			}
		}
	}
}

// shut closes the link's connection and waits for its reader.
func (l *link) shut() {
	l.once.Do(func() {
		close(l.closing)
		l.conn.Close()
	})
	<-l.done
}

// Close drops the connection, if any, and waits for its goroutine. What was acked
// is kept: the next Dial continues from it.
func (s *Shipper) Close() error {
	s.mu.Lock()
	l := s.l
	s.l = nil
	s.mu.Unlock()
	if l != nil {
		l.shut()
	}
	return nil
}

// drop forgets l if it is still the current link, and shuts it.
func (s *Shipper) drop(l *link) {
	s.mu.Lock()
	if s.l == l {
		s.l = nil
	}
	s.mu.Unlock()
	l.shut()
}

func (s *Shipper) current() *link {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.l
}

// LastHeard is when the standby last sent a valid frame.
func (s *Shipper) LastHeard() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastHeard
}

// Acked is the newest epoch the standby acked (0: none).
func (s *Shipper) Acked() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.base == nil {
		return 0
	}
	return s.base.Epoch
}

// StandbyCommitted is the standby's newest committed epoch as its last Hello or
// heartbeat said.
func (s *Shipper) StandbyCommitted() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.standbyCommitted
}

// LastStats describes the last epoch Ship sent (acked or not).
func (s *Shipper) LastStats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Heartbeat sends one heartbeat; the standby answers with its own, which updates
// LastHeard and StandbyCommitted.
func (s *Shipper) Heartbeat(ctx context.Context) error {
	l := s.current()
	if l == nil {
		return fmt.Errorf("ship: heartbeat: %w", ErrNotConnected)
	}
	hb := &frame.Heartbeat{SentUnixNano: s.clk.Now().UnixNano(), Committed: s.Acked()}
	if _, err := s.write(ctx, l, 0, hb); err != nil {
		s.drop(l)
		return fmt.Errorf("ship: heartbeat: %w: %w", ErrNotConnected, err)
	}
	return nil
}

// write sends one frame and returns its size on the wire.
func (s *Shipper) write(ctx context.Context, l *link, epoch uint64, p frame.Payload) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b, err := p.MarshalBinary()
	if err != nil {
		return 0, err
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	if err := l.w.Write(p.Type(), epoch, b); err != nil {
		return 0, err
	}
	return frame.HeaderSize + len(b) + frame.TrailerSize, nil
}

// Ship sends the committed image set in setDir as epoch and returns once the
// standby acked it (nil: it is durable there) or refused it (ErrStandbyFull,
// ErrResync, ErrRefused). Any other error means the connection is gone: Dial again,
// and the epoch may be shipped again under a new number.
func (s *Shipper) Ship(ctx context.Context, epoch uint64, setDir string) error {
	s.shipMu.Lock()
	defer s.shipMu.Unlock()
	l := s.current()
	if l == nil {
		return fmt.Errorf("ship: epoch %d: %w", epoch, ErrNotConnected)
	}
	start := s.clk.Now()
	raw, err := os.ReadFile(filepath.Join(setDir, checkpoint.ManifestName))
	if err != nil {
		return fmt.Errorf("ship: epoch %d: %w", epoch, err)
	}
	var m checkpoint.Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return fmt.Errorf("ship: epoch %d: manifest in %q: %w", epoch, setDir, err)
	}
	if m.Epoch != epoch {
		return fmt.Errorf("ship: %q holds epoch %d, not %d", setDir, m.Epoch, epoch)
	}

	s.mu.Lock()
	full := s.needFull || s.base == nil
	var base Base
	if s.base != nil {
		base = *s.base
	}
	s.mu.Unlock()
	var delta *Delta
	if !full {
		if delta, err = s.cfg.Differ.Diff(base, setDir, &m); err != nil {
			s.log.Warn("ship: delta failed, sending a full epoch", "service", s.cfg.Service, "epoch", epoch, "err", err)
			full = true
		}
	}
	if full {
		delta = &Delta{}
		for _, f := range m.Files {
			delta.Files = append(delta.Files, File{Name: f.Name})
		}
	} else if !l.fileDelta {
		delta.wholeFiles()
	}

	l.seqMu.Lock()
	err = l.seq.Sent(epoch)
	l.seqMu.Unlock()
	if err != nil {
		return fmt.Errorf("ship: %w", err)
	}
	// A cancelled ctx interrupts a write or the wait for the ack by expiring the
	// connection's deadlines; the link is then dropped, never reused half-written.
	stop := context.AfterFunc(ctx, func() { l.conn.SetDeadline(time.Now()) })
	st := Stats{Epoch: epoch, Full: full, Started: start, Diffed: s.clk.Now()}
	s.meter.Start(epoch, full, deltaSize(setDir, delta))
	err = s.send(ctx, l, epoch, full, base.Epoch, setDir, delta, raw, &st)
	if tr, long := s.meter.Finish(); long && err == nil {
		s.log.Info("ship: epoch sent", "service", s.cfg.Service, "progress", tr.String(), "took", tr.Elapsed.Round(time.Millisecond))
	}
	var res result
	if err == nil {
		st.Sent = s.clk.Now()
		res, err = s.await(ctx, l, epoch)
		st.Answered, st.Standby = s.clk.Now(), res.phases
	}
	if !stop() && err == nil {
		err = ctx.Err()
	}
	st.Duration = s.clk.Since(start)
	s.mu.Lock()
	s.stats = st
	s.mu.Unlock()
	if err != nil {
		s.drop(l)
		return fmt.Errorf("ship: epoch %d: %w: %w", epoch, ErrNotConnected, err)
	}
	return s.settle(epoch, setDir, &m, res)
}

// send writes the epoch's frames.
func (s *Shipper) send(ctx context.Context, l *link, epoch uint64, full bool, baseEpoch uint64, dir string, d *Delta, manifest []byte, st *Stats) error {
	put := func(p frame.Payload) error {
		n, err := s.write(ctx, l, epoch, p)
		st.Bytes += int64(n)
		if tr, due := s.meter.Add(int64(n)); due {
			s.log.Info("ship: sending", "service", s.cfg.Service, "progress", tr.String(),
				"done_bytes", tr.Done, "total_bytes", tr.Total, "rate_bytes_per_s", int64(tr.Rate()))
		}
		return err
	}
	begin := &frame.EpochBegin{Full: full, Files: uint32(len(d.Files) + len(d.Blocks))}
	if !full {
		begin.BaseEpoch = baseEpoch
	}
	if err := put(begin); err != nil {
		return err
	}
	for _, f := range d.Files {
		if err := s.sendFile(dir, f, put); err != nil {
			return err
		}
	}
	max := int(s.cfg.Limits.MaxPayload)
	if max == 0 {
		max = frame.DefaultMaxPayload
	}
	for _, fb := range d.Blocks {
		n, err := sendBlocks(dir, fb, min(s.cfg.ChunkSize, max/2), put)
		st.BlockBytes += n
		if err != nil {
			return err
		}
	}
	for _, pm := range d.Pagemaps {
		for _, piece := range splitPages(pm, max/2) {
			if err := put(&piece); err != nil {
				return err
			}
		}
	}
	return put(&frame.EpochCommit{Manifest: manifest})
}

// deltaSize is about how many bytes sending d takes, framing left out: what
// progress reports count towards.
func deltaSize(dir string, d *Delta) int64 {
	var n int64
	for _, f := range d.Files {
		if f.Data != nil {
			n += int64(len(f.Data))
		} else if fi, err := os.Stat(filepath.Join(dir, f.Name)); err == nil {
			n += fi.Size()
		}
	}
	for _, fb := range d.Blocks {
		for _, r := range fb.Ranges {
			n += r.Len
		}
	}
	for _, pm := range d.Pagemaps {
		for _, r := range pm.Pages {
			n += int64(len(r.Data))
		}
	}
	return n
}

// sendFile sends one file whole, in chunks; an empty file is one empty last chunk.
func (s *Shipper) sendFile(dir string, f File, put func(frame.Payload) error) error {
	if f.Data != nil {
		return chunks(f.Name, f.Data, s.cfg.ChunkSize, put)
	}
	fh, err := os.Open(filepath.Join(dir, f.Name))
	if err != nil {
		return err
	}
	defer fh.Close()
	fi, err := fh.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	buf := make([]byte, min(int64(s.cfg.ChunkSize), max(size, 1)))
	var off int64
	for {
		n := int(min(int64(len(buf)), size-off))
		if _, err := io.ReadFull(fh, buf[:n]); err != nil {
			return fmt.Errorf("read %q: %w", f.Name, err)
		}
		last := off+int64(n) == size
		if err := put(&frame.ImageData{Name: f.Name, Offset: uint64(off), Data: buf[:n], Last: last}); err != nil {
			return err
		}
		off += int64(n)
		if last {
			return nil
		}
	}
}

func chunks(name string, data []byte, size int, put func(frame.Payload) error) error {
	off := 0
	for {
		n := min(size, len(data)-off)
		last := off+n == len(data)
		if err := put(&frame.ImageData{Name: name, Offset: uint64(off), Data: data[off : off+n], Last: last}); err != nil {
			return err
		}
		off += n
		if last {
			return nil
		}
	}
}

// await waits for the standby's answer to epoch.
func (s *Shipper) await(ctx context.Context, l *link, epoch uint64) (result, error) {
	for {
		select {
		case r := <-l.results:
			if r.epoch == epoch {
				return r, nil
			}
			// An answer to an earlier epoch whose Ship gave up: already settled.
		case <-l.done:
			// The answer may have arrived just before the connection ended.
			select {
			case r := <-l.results:
				if r.epoch == epoch {
					return r, nil
				}
			default:
			}
			return result{}, fmt.Errorf("connection lost waiting for the ack: %w", l.err)
		case <-ctx.Done():
			return result{}, ctx.Err()
		}
	}
}

// settle records the standby's answer.
func (s *Shipper) settle(epoch uint64, dir string, m *checkpoint.Manifest, r result) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r.nack == nil {
		s.base = &Base{Epoch: epoch, Dir: dir, Manifest: m}
		s.needFull = false
		return nil
	}
	n := r.nack
	switch n.Code {
	case frame.NackDiskFull:
		return fmt.Errorf("ship: epoch %d: %w: %s", epoch, ErrStandbyFull, n.Reason)
	case frame.NackBadBase, frame.NackCorrupt:
		s.needFull = true
		return fmt.Errorf("ship: epoch %d: %w (%s): %s", epoch, ErrResync, n.Code, n.Reason)
	default:
		s.needFull = true
		return fmt.Errorf("ship: epoch %d: %w (%s): %s", epoch, ErrRefused, n.Code, n.Reason)
	}
}

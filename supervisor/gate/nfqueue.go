package gate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"

	"github.com/jonboulle/clockwork"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Defaults for Config.
const (
	DefaultMaxPackets = 8192
	DefaultMaxBytes   = 64 << 20
)

// Config configures an NFQueue.
type Config struct {
	// NetNS is the path of the program's network namespace file (/proc/PID/ns/net,
	// /run/netns/NAME, /proc/self/fd/N); "" means ftrun's own namespace.
	NetNS string
	// Queue is the NFQUEUE queue number; it must not be bound by another process in
	// that namespace.
	Queue uint16
	// MaxPackets bounds the kernel queue (its maxlen); further packets are dropped.
	// Default DefaultMaxPackets.
	MaxPackets uint32
	// MaxBytes bounds the held bytes that Pressure watches. The kernel has no byte
	// bound: this one only makes the supervisor start the next epoch early. Default
	// DefaultMaxBytes.
	MaxBytes int64
	// Clock stamps arrivals for Stats.OldestAge. Default the real clock.
	Clock clockwork.Clock
	// Log receives warnings (socket overruns, cuts that went backwards). Default: none.
	Log *slog.Logger
}

// NFQueue is the Gate on Linux's NFQUEUE; see the package documentation. Its methods
// are safe for concurrent use.
type NFQueue struct {
	cfg  Config
	log  *slog.Logger
	conn *netlink.Conn
	// rules is touched only by OpenNFQueue and Close.
	rules *rules

	// opMu serializes Cut, Release, Discard and Close, so a verdict in flight never
	// races a cut or another verdict.
	opMu   sync.Mutex
	closed bool // under opMu

	// mu guards the ledger, the pending requests and the reader's outcome. It is never
	// held while waiting for the kernel: the reader needs it to record arrivals.
	mu       sync.Mutex
	led      *ledger
	pending  map[uint32]chan error
	overruns uint64
	readErr  error // why the reader stopped; set before done is closed

	seq       atomic.Uint32
	closing   atomic.Bool
	done      chan struct{} // closed when the reader returns
	pressured chan struct{}
	waiting   chan struct{}
}

var _ Gate = (*NFQueue)(nil)

// errAckLost fails a request whose acknowledgement may have been dropped because the
// socket overflowed; verdicts are retried.
var errAckLost = errors.New("gate: acknowledgement lost to a socket overrun")

// requestRetries bounds the retries of an idempotent request after errAckLost.
const requestRetries = 3

// recvBufferPerPacket is the socket's receive buffer per queued packet: a netlink
// message with 64 bytes of payload, with the kernel's per-buffer overhead. The whole
// kernel queue fits, so the socket overflows only if the reader stalls. maxRecvBuffer
// caps it (setsockopt takes a C int).
const (
	recvBufferPerPacket = 4 << 10
	maxRecvBuffer       = 1 << 30
)

// OpenNFQueue binds cfg.Queue inside cfg.NetNS, configures it, starts the reader and
// only then installs the iptables rules that send the namespace's output to it.
func OpenNFQueue(cfg Config) (*NFQueue, error) { return openQueue(cfg, true) }

// openQueue binds a queue; withRules installs the output gate's rules for it.
func openQueue(cfg Config, withRules bool) (*NFQueue, error) {
	if cfg.MaxPackets == 0 {
		cfg.MaxPackets = DefaultMaxPackets
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("queue", cfg.Queue, "netns", cfg.NetNS)

	conn, err := dial(cfg.NetNS)
	if err != nil {
		return nil, err
	}
	if err := setRecvBuffer(conn, int(min(uint64(cfg.MaxPackets)*recvBufferPerPacket, maxRecvBuffer))); err != nil {
		log.Warn("gate: cannot enlarge the socket receive buffer; a slow reader may drop packets", "err", err)
	}
	// Smaller acknowledgements: the kernel does not echo the request back.
	// NETLINK_NO_ENOBUFS stays off on purpose: the ENOBUFS that an overflow reports is
	// how the reader learns that an acknowledgement may have been dropped with the
	// packets, so that the waiting request is retried instead of waiting forever.
	_ = conn.SetOption(netlink.CapAcknowledge, true)

	q := &NFQueue{
		cfg:       cfg,
		log:       log,
		conn:      conn,
		rules:     &rules{netns: cfg.NetNS, queue: cfg.Queue, run: execRunner, lookPath: exec.LookPath},
		led:       newLedger(cfg.Clock, int(cfg.MaxPackets), cfg.MaxBytes),
		pending:   make(map[uint32]chan error),
		done:      make(chan struct{}),
		pressured: make(chan struct{}, 1),
		waiting:   make(chan struct{}, 1),
	}
	go q.read()

	fail := func(err error) (*NFQueue, error) {
		q.closing.Store(true)
		_ = q.conn.Close() // the kernel destroys the queue with its socket
		<-q.done
		return nil, err
	}
	if err := q.bind(); err != nil {
		return fail(err)
	}
	if !withRules {
		q.rules = nil
		return q, nil
	}
	ctx := context.Background()
	leftovers, err := q.rules.install(ctx)
	if err != nil {
		return fail(err)
	}
	if leftovers > 0 {
		log.Warn("gate: removed rules left behind by an earlier ftrun", "rules", leftovers)
	}
	return q, nil
}

// dial opens the netlink socket inside the namespace at netns.
func dial(netns string) (*netlink.Conn, error) {
	nc := &netlink.Config{MessageBufferSize: 64 << 10}
	if netns != "" {
		f, err := os.Open(netns)
		if err != nil {
			return nil, fmt.Errorf("gate: open network namespace %s: %w", netns, err)
		}
		defer f.Close()
		nc.NetNS = int(f.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, nc)
	switch {
	case err == nil:
		return conn, nil
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return nil, fmt.Errorf("gate: the kernel lacks nfnetlink: modprobe nfnetlink_queue: %w", err)
	case errors.Is(err, unix.EPERM):
		return nil, fmt.Errorf("gate: entering network namespace %q was refused: run ftrun as root: %w", netns, err)
	default:
		return nil, fmt.Errorf("gate: open netfilter netlink socket in %q: %w", netns, err)
	}
}

// setRecvBuffer sets the socket's receive buffer, beyond net.core.rmem_max when
// allowed (SO_RCVBUFFORCE needs CAP_NET_ADMIN).
func setRecvBuffer(conn *netlink.Conn, bytes int) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, bytes)
	}); err != nil {
		return fmt.Errorf("raw socket: %w", err)
	}
	if serr == nil {
		return nil
	}
	if err := conn.SetReadBuffer(bytes); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %v; SO_RCVBUF: %w", serr, err)
	}
	return nil
}

// bind binds the queue and configures it; on a configuration failure it unbinds.
func (q *NFQueue) bind() error {
	m, err := bindMsg(q.cfg.Queue)
	if err != nil {
		return err
	}
	// A bind is not retried: a second bind of our own queue would answer EBUSY.
	if err := q.do(m, false); err != nil {
		switch {
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.EPERM) && os.Geteuid() == 0:
			return fmt.Errorf("gate: NFQUEUE queue %d in network namespace %q is already bound by another process: stop it or choose another queue number: %w", q.cfg.Queue, q.cfg.NetNS, err)
		case errors.Is(err, unix.EPERM):
			return fmt.Errorf("gate: binding NFQUEUE queue %d was refused: run ftrun as root (CAP_NET_ADMIN), or the queue is bound by another process: %w", q.cfg.Queue, err)
		case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EPROTONOSUPPORT):
			return fmt.Errorf("gate: the kernel lacks NFQUEUE: modprobe nfnetlink_queue xt_NFQUEUE: %w", err)
		default:
			return fmt.Errorf("gate: bind NFQUEUE queue %d: %w", q.cfg.Queue, err)
		}
	}
	m, err = paramsMsg(q.cfg.Queue, q.cfg.MaxPackets)
	if err == nil {
		err = q.do(m, true)
	}
	if err != nil {
		if m, uerr := unbindMsg(q.cfg.Queue); uerr == nil {
			_ = q.do(m, true)
		}
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("gate: the kernel cannot queue GSO packets whole (NFQA_CFG_F_GSO needs Linux 3.10 or later): %w", err)
		}
		return fmt.Errorf("gate: configure NFQUEUE queue %d: %w", q.cfg.Queue, err)
	}
	return nil
}

// do sends m and waits for the kernel's acknowledgement, routed back by the reader.
// When retry is set (idempotent requests) it resends after errAckLost.
func (q *NFQueue) do(m netlink.Message, retry bool) error {
	for attempt := 0; ; attempt++ {
		err := q.doOnce(m)
		if errors.Is(err, errAckLost) && retry && attempt < requestRetries {
			continue
		}
		return err
	}
}

func (q *NFQueue) doOnce(m netlink.Message) error {
	seq := q.seq.Add(1)
	if seq == 0 {
		seq = q.seq.Add(1) // 0 would let the library pick one
	}
	m.Header.Sequence = seq
	ch := make(chan error, 1)

	q.mu.Lock()
	if q.readErr != nil {
		err := q.readErr
		q.mu.Unlock()
		return err
	}
	q.pending[seq] = ch
	q.mu.Unlock()

	if _, err := q.conn.Send(m); err != nil {
		q.mu.Lock()
		delete(q.pending, seq)
		q.mu.Unlock()
		return fmt.Errorf("gate: send to the kernel: %w", err)
	}
	select {
	case err := <-ch:
		return err
	case <-q.done:
		select {
		case err := <-ch: // answered just before the reader stopped
			return err
		default:
		}
		q.mu.Lock()
		defer q.mu.Unlock()
		delete(q.pending, seq)
		return q.readErr
	}
}

// verdict applies verdict to every queued packet whose id is not after upTo. The
// kernel answers ENOENT when no such packet is queued any more: they are gone either
// way (a retried verdict already applied, or the kernel dropped them when their device
// went down), which is what the caller wants.
func (q *NFQueue) verdict(verdict uint32, upTo uint32) error {
	m, err := verdictBatchMsg(q.cfg.Queue, verdict, upTo)
	if err != nil {
		return err
	}
	if err := q.do(m, true); err != nil && !errors.Is(err, unix.ENOENT) {
		return err
	}
	return nil
}

// read is the one reader goroutine: it records arrivals and routes acknowledgements
// until the socket is closed or fails.
func (q *NFQueue) read() {
	defer close(q.done)
	for {
		msgs, err := q.conn.Receive()
		if err != nil {
			if q.closing.Load() {
				q.stop(ErrClosed)
				return
			}
			var oe *netlink.OpError
			switch {
			case errors.As(err, &oe) && oe.Sequence != 0:
				// The kernel refused one of our requests.
				q.complete(oe.Sequence, oe.Err)
			case errors.Is(err, unix.ENOBUFS):
				// The receive buffer overflowed: the kernel dropped packets (the
				// ledger sees the gap in ids) and maybe acknowledgements.
				q.mu.Lock()
				q.overruns++
				q.failPendingLocked(errAckLost)
				q.mu.Unlock()
				q.log.Warn("gate: socket receive buffer overflowed; the kernel dropped packets (TCP will retransmit them)")
			default:
				q.stop(fmt.Errorf("gate: reading NFQUEUE queue %d stopped: %w", q.cfg.Queue, err))
				q.log.Error("gate: reader stopped; held packets stay held until Close", "err", err)
				return
			}
			continue
		}
		for _, m := range msgs {
			q.handle(m)
		}
	}
}

// handle processes one message from the kernel.
func (q *NFQueue) handle(m netlink.Message) {
	switch m.Header.Type {
	case netlink.Error:
		// An acknowledgement with error 0 (errors come back from Receive as OpError).
		q.complete(m.Header.Sequence, nil)
	case msgType(nfqnlMsgPacket):
		p, err := decodePacket(m.Data)
		if err != nil {
			// Still queued in the kernel; the next batch verdict covers it. The
			// ledger counts it as lost.
			q.log.Warn("gate: undecodable packet message", "err", err)
			return
		}
		q.mu.Lock()
		rose, err := q.led.arrive(p.id, p.length)
		q.mu.Unlock()
		if err != nil {
			q.log.Error("gate: packet out of order", "err", err)
			return
		}
		if rose {
			select {
			case q.pressured <- struct{}{}:
			default:
			}
		}
		select {
		case q.waiting <- struct{}{}:
		default:
		}
	}
}

// complete hands the answer to request seq to its waiter, if any is still waiting.
func (q *NFQueue) complete(seq uint32, err error) {
	q.mu.Lock()
	ch := q.pending[seq]
	delete(q.pending, seq)
	q.mu.Unlock()
	if ch != nil {
		ch <- err
	}
}

func (q *NFQueue) failPendingLocked(err error) {
	for seq, ch := range q.pending {
		ch <- err
		delete(q.pending, seq)
	}
}

// stop records why the reader stopped and fails every waiting request.
func (q *NFQueue) stop(err error) {
	q.mu.Lock()
	q.readErr = err
	q.failPendingLocked(err)
	q.mu.Unlock()
}

// Cut implements Gate.
func (q *NFQueue) Cut(epoch uint64) {
	q.opMu.Lock()
	defer q.opMu.Unlock()
	q.mu.Lock()
	used := q.led.cut(epoch)
	q.mu.Unlock()
	if used != epoch {
		q.log.Warn("gate: cut went backwards; packets assigned to the later epoch", "asked", epoch, "used", used)
	}
}

// Release implements Gate.
func (q *NFQueue) Release(epoch uint64) error {
	q.opMu.Lock()
	defer q.opMu.Unlock()
	if q.closed {
		return ErrClosed
	}
	q.mu.Lock()
	p := q.led.planRelease(epoch)
	q.mu.Unlock()
	if p.need {
		if err := q.verdict(nfAccept, p.upTo); err != nil {
			return fmt.Errorf("gate: release epoch %d (%d packets, ids through %d): %w", epoch, p.packets, p.upTo, err)
		}
	}
	q.mu.Lock()
	q.led.commit(p)
	q.mu.Unlock()
	return nil
}

// Discard implements Gate. It first makes a round trip to the kernel so that every
// packet already queued has been recorded: none sent by the lost state is left behind.
func (q *NFQueue) Discard() error {
	q.opMu.Lock()
	defer q.opMu.Unlock()
	if q.closed {
		return ErrClosed
	}
	if err := q.barrier(); err != nil {
		return fmt.Errorf("gate: discard: wait for queued packets: %w", err)
	}
	q.mu.Lock()
	p := q.led.planDiscard()
	q.mu.Unlock()
	if p.need {
		if err := q.verdict(nfDrop, p.upTo); err != nil {
			return fmt.Errorf("gate: discard (%d packets, ids through %d): %w", p.packets, p.upTo, err)
		}
	}
	q.mu.Lock()
	q.led.commit(p)
	q.mu.Unlock()
	return nil
}

// barrier makes a round trip to the kernel: once it returns, every packet queued
// before it has been recorded by the reader.
func (q *NFQueue) barrier() error {
	m, err := barrierMsg(q.cfg.Queue)
	if err == nil {
		err = q.do(m, true)
	}
	return err
}

// Stats implements Gate.
func (q *NFQueue) Stats() Stats {
	q.mu.Lock()
	defer q.mu.Unlock()
	st := q.led.stats()
	st.Overruns = q.overruns
	return st
}

// Pressure implements Gate.
func (q *NFQueue) Pressure() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.led.pressure()
}

// Pressured implements Gate.
func (q *NFQueue) Pressured() <-chan struct{} { return q.pressured }

// Uncut implements Gate.
func (q *NFQueue) Uncut() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.led.uncut()
}

// Waiting implements Gate.
func (q *NFQueue) Waiting() <-chan struct{} { return q.waiting }

// Close unbinds the queue, which makes the kernel drop every packet still held, stops
// and awaits the reader, closes the socket, and only then removes the rules (in
// between, packets hitting the rule find no listener and are dropped). Output sent
// after Close is not gated.
func (q *NFQueue) Close() error {
	q.opMu.Lock()
	defer q.opMu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	var errs []error

	m, err := unbindMsg(q.cfg.Queue)
	if err == nil {
		err = q.do(m, true)
	}
	if err != nil && !errors.Is(err, unix.ENODEV) {
		// Closing the socket destroys the queue and drops its packets anyway.
		q.log.Warn("gate: unbind failed; closing the socket drops the held packets instead", "err", err)
	}
	q.mu.Lock()
	q.led.commit(q.led.planDiscard())
	q.mu.Unlock()

	q.closing.Store(true)
	if err := q.conn.Close(); err != nil {
		errs = append(errs, fmt.Errorf("gate: close netlink socket: %w", err))
	}
	<-q.done

	if q.rules == nil {
		return errors.Join(errs...)
	}
	if err := q.rules.remove(context.Background()); err != nil {
		errs = append(errs, fmt.Errorf("gate: remove NFQUEUE rules for queue %d: %w", q.cfg.Queue, err))
	}
	return errors.Join(errs...)
}

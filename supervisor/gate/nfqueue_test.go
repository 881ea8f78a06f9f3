package gate

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"golang.org/x/sys/unix"
)

// These tests use the real kernel: two network namespaces A and B joined by a veth,
// 198.19.77.1/24 in A and 198.19.77.2/24 in B. The gate holds A's output.

const (
	addrA = "198.19.77.1"
	addrB = "198.19.77.2"
	// quiet is how long a test waits to conclude that a held packet did not get out.
	quiet = 300 * time.Millisecond
	// arrival bounds the wait for a packet that must get out.
	arrival = 3 * time.Second
)

var nsCounter atomic.Int32

// pair is the two namespaces of one test.
type pair struct{ a, b string } // paths under /run/netns

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and binds an NFQUEUE queue")
	}
	for _, tool := range []string{"ip", "iptables", "ip6tables", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: run scripts/setup", tool)
		}
	}
}

func run(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(argv, " "), err, out)
	}
	return string(out)
}

// newPair creates namespaces A and B joined by a veth, with IPv6 off so that the
// kernel's own neighbour discovery does not add packets to the counts.
func newPair(t *testing.T) pair {
	t.Helper()
	id := fmt.Sprintf("ftgt%d%d", os.Getpid()%100000, nsCounter.Add(1))
	nsA, nsB := id+"a", id+"b"
	for _, ns := range []string{nsA, nsB} {
		run(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
		run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	}
	run(t, "ip", "link", "add", nsA, "netns", nsA, "type", "veth", "peer", "name", nsB, "netns", nsB)
	run(t, "ip", "-n", nsA, "addr", "add", addrA+"/24", "dev", nsA)
	run(t, "ip", "-n", nsB, "addr", "add", addrB+"/24", "dev", nsB)
	run(t, "ip", "-n", nsA, "link", "set", nsA, "up")
	run(t, "ip", "-n", nsB, "link", "set", nsB, "up")
	return pair{a: "/run/netns/" + nsA, b: "/run/netns/" + nsB}
}

// inNetNS runs fn on a locked OS thread moved into the namespace at path; sockets fn
// creates live there. The thread goes back to its namespace afterwards, or, if that
// fails, stays locked so that it dies with its goroutine.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		target, err := os.Open(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("setns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err)) // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// listener receives UDP datagrams in a namespace; a goroutine it owns feeds got.
type listener struct {
	conn *net.UDPConn
	got  chan string
	wg   sync.WaitGroup
}

func listen(t *testing.T, ns, addr string) *listener {
	t.Helper()
	l := &listener{got: make(chan string, 1024)}
	err := inNetNS(ns, func() error {
		c, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		l.conn = c
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, ns, err)
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		buf := make([]byte, 2048)
		for {
			n, err := l.conn.Read(buf)
			if err != nil {
				return // closed
			}
			l.got <- string(buf[:n])
		}
	}()
	t.Cleanup(func() { _ = l.conn.Close(); l.wg.Wait() })
	return l
}

// expect waits for exactly want, in order, then for quiet without anything more.
func (l *listener) expect(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	deadline := time.After(arrival)
	for len(got) < len(want) {
		select {
		case s := <-l.got:
			got = append(got, s)
		case <-deadline:
			t.Fatalf("received %q, want %q", got, want)
		}
	}
	select {
	case s := <-l.got:
		t.Fatalf("received %q then %q, want only %q", got, s, want)
	case <-time.After(quiet):
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("received %q, want %q", got, want)
	}
}

// expectNone checks that nothing arrives for quiet.
func (l *listener) expectNone(t *testing.T) {
	t.Helper()
	select {
	case s := <-l.got:
		t.Fatalf("received %q while it must be held", s)
	case <-time.After(quiet):
	}
}

// sender sends UDP datagrams from a socket created in a namespace.
type sender struct{ conn *net.UDPConn }

func dialFrom(t *testing.T, ns, to string) *sender {
	t.Helper()
	s := &sender{}
	err := inNetNS(ns, func() error {
		c, err := net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(to)))
		s.conn = c
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", to, ns, err)
	}
	t.Cleanup(func() { _ = s.conn.Close() })
	return s
}

// send sends each message; messages are 4 bytes so that every packet is 32 bytes long
// (IPv4 20 + UDP 8 + 4).
func (s *sender) send(t *testing.T, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if len(m) != 4 {
			t.Fatalf("message %q: want 4 bytes", m)
		}
		if _, err := s.conn.Write([]byte(m)); err != nil {
			t.Fatalf("send %q: %v", m, err)
		}
	}
}

func openGate(t *testing.T, cfg Config) *NFQueue {
	t.Helper()
	g, err := OpenNFQueue(cfg)
	if err != nil {
		t.Fatalf("OpenNFQueue: %v", err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// waitHeld waits until the gate has recorded n held packets, and checks it stays so.
func waitHeld(t *testing.T, g *NFQueue, n int) Stats {
	t.Helper()
	deadline := time.Now().Add(arrival)
	for g.Stats().HeldPackets < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	st := g.Stats()
	if st.HeldPackets != n {
		t.Fatalf("held %d packets, want %d (stats %+v)", st.HeldPackets, n, st)
	}
	return st
}

// ruleCount counts the gate's rules for queue in the namespace, per tool.
func ruleCount(t *testing.T, ns string, queue uint16) (v4, v6 int) {
	t.Helper()
	needle := fmt.Sprintf("NFQUEUE --queue-num %d", queue)
	for _, tool := range []string{"iptables", "ip6tables"} {
		out := run(t, "nsenter", "--net="+ns, "--", tool, "-w", "-S", "OUTPUT")
		n := strings.Count(out, needle)
		if !strings.Contains(out, "! -o lo") && n > 0 {
			t.Errorf("%s rule does not exempt loopback:\n%s", tool, out)
		}
		if strings.Contains(out, "queue-bypass") {
			t.Errorf("%s rule bypasses the queue:\n%s", tool, out)
		}
		if tool == "iptables" {
			v4 = n
		} else {
			v6 = n
		}
	}
	return v4, v6
}

func TestNFQueueHoldsOutputUntilRelease(t *testing.T) {
	needRoot(t)
	p := newPair(t)
	const queue = 4711
	clock := clockwork.NewFakeClock()
	g := openGate(t, Config{NetNS: p.a, Queue: queue, Clock: clock})

	if v4, v6 := ruleCount(t, p.a, queue); v4 != 1 || v6 != 1 {
		t.Fatalf("rules installed: %d IPv4, %d IPv6, want one of each", v4, v6)
	}
	// The socket can hold the whole kernel queue (the kernel doubles what is set).
	if rb, err := g.conn.ReadBuffer(); err != nil || rb < DefaultMaxPackets*recvBufferPerPacket {
		t.Fatalf("socket receive buffer = %d (%v), want at least %d", rb, err, DefaultMaxPackets*recvBufferPerPacket)
	}

	inB := listen(t, p.b, addrB+":7000")
	inA := listen(t, p.a, addrA+":7001")
	loA := listen(t, p.a, "127.0.0.1:7002")
	aToB := dialFrom(t, p.a, addrB+":7000")
	bToA := dialFrom(t, p.b, addrA+":7001")
	aToLo := dialFrom(t, p.a, "127.0.0.1:7002")

	// Epoch 1's output is held.
	aToB.send(t, "e1-0", "e1-1", "e1-2")
	inB.expectNone(t)
	st := waitHeld(t, g, 3)
	if st.HeldBytes != 3*32 {
		t.Fatalf("held %d bytes, want %d", st.HeldBytes, 3*32)
	}
	clock.Advance(5 * time.Second)
	if age := g.Stats().OldestAge; age != 5*time.Second {
		t.Fatalf("oldest age %v, want 5s", age)
	}

	// Incoming traffic and loopback are not delayed while output is held.
	bToA.send(t, "in-0")
	inA.expect(t, "in-0")
	aToLo.send(t, "lo-0")
	loA.expect(t, "lo-0")
	if n := g.Stats().HeldPackets; n != 3 {
		t.Fatalf("held %d packets after incoming and loopback traffic, want 3", n)
	}

	// Cut(1), then more output: Release(1) lets out exactly the first batch.
	g.Cut(1)
	aToB.send(t, "e2-0", "e2-1")
	waitHeld(t, g, 5)
	if err := g.Release(1); err != nil {
		t.Fatalf("Release(1): %v", err)
	}
	inB.expect(t, "e1-0", "e1-1", "e1-2")
	st = g.Stats()
	want := Stats{HeldPackets: 2, HeldBytes: 64, ReleasedPackets: 3, ReleasedBytes: 96, CutEpoch: 1, ReleasedEpoch: 1,
		MaxPackets: DefaultMaxPackets, MaxBytes: DefaultMaxBytes}
	if st != want {
		t.Fatalf("stats after Release(1) =\n %+v, want\n %+v", st, want)
	}

	// Releasing again, or an epoch not yet cut, lets nothing out.
	if err := g.Release(1); err != nil {
		t.Fatalf("second Release(1): %v", err)
	}
	if err := g.Release(2); err != nil {
		t.Fatalf("Release(2) before Cut(2): %v", err)
	}
	inB.expectNone(t)

	g.Cut(2)
	if err := g.Release(2); err != nil {
		t.Fatalf("Release(2): %v", err)
	}
	inB.expect(t, "e2-0", "e2-1")
	if st := g.Stats(); st.HeldPackets != 0 || st.ReleasedPackets != 5 || g.Pressure() {
		t.Fatalf("stats after Release(2) = %+v, want nothing held and 5 released", st)
	}

	// Discard drops what is held, even packets the reader may not have recorded yet.
	aToB.send(t, "d--0", "d--1", "d--2")
	if err := g.Discard(); err != nil {
		t.Fatalf("Discard: %v", err)
	}
	if st := g.Stats(); st.HeldPackets != 0 || st.DroppedPackets != 3 || st.DroppedBytes != 96 {
		t.Fatalf("stats after Discard = %+v, want 3 dropped (96 bytes), none held", st)
	}
	g.Cut(3)
	if err := g.Release(3); err != nil {
		t.Fatalf("Release(3): %v", err)
	}
	inB.expectNone(t)

	// Output after a Discard is gated as before.
	aToB.send(t, "e4-0")
	inB.expectNone(t)
	waitHeld(t, g, 1)
	g.Cut(4)
	if err := g.Release(4); err != nil {
		t.Fatalf("Release(4): %v", err)
	}
	inB.expect(t, "e4-0")

	// Close with packets held: they never get out, and the rules are gone.
	aToB.send(t, "c--0", "c--1")
	waitHeld(t, g, 2)
	g.Cut(5)
	if err := g.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	inB.expectNone(t)
	if st := g.Stats(); st.DroppedPackets != 5 || st.HeldPackets != 0 {
		t.Fatalf("stats after Close = %+v, want 5 dropped, none held", st)
	}
	if v4, v6 := ruleCount(t, p.a, queue); v4 != 0 || v6 != 0 {
		t.Fatalf("rules left after Close: %d IPv4, %d IPv6", v4, v6)
	}
	if buf := stacks(); strings.Contains(buf, "(*NFQueue).read") {
		t.Fatalf("the reader goroutine outlived Close:\n%s", buf)
	}
	if err := g.Release(5); !errors.Is(err, ErrClosed) {
		t.Fatalf("Release after Close = %v, want ErrClosed", err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// Without the gate, output flows again.
	aToB.send(t, "free")
	inB.expect(t, "free")
}

// stacks returns every goroutine's stack.
func stacks() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

func TestNFQueuePressureAndBound(t *testing.T) {
	needRoot(t)
	p := newPair(t)
	inB := listen(t, p.b, addrB+":7000")
	aToB := dialFrom(t, p.a, addrB+":7000")

	t.Run("packets", func(t *testing.T) {
		g := openGate(t, Config{NetNS: p.a, Queue: 4712, MaxPackets: 8})
		aToB.send(t, "p--1", "p--2", "p--3", "p--4", "p--5")
		waitHeld(t, g, 5)
		if g.Pressure() {
			t.Fatal("pressure at 5 of 8 packets")
		}
		select {
		case <-g.Pressured():
			t.Fatal("Pressured fired at 5 of 8 packets")
		default:
		}
		aToB.send(t, "p--6")
		waitHeld(t, g, 6)
		if !g.Pressure() {
			t.Fatal("no pressure at 6 of 8 packets")
		}
		select {
		case <-g.Pressured():
		case <-time.After(arrival):
			t.Fatal("Pressured did not fire at 6 of 8 packets")
		}

		// The kernel queue holds at most 8: the rest is dropped, never let out.
		for _, m := range []string{"p--7", "p--8", "p--9", "p-10"} {
			_, _ = aToB.conn.Write([]byte(m)) // the kernel may refuse the last ones
		}
		waitHeld(t, g, 8)
		g.Cut(1)
		if err := g.Release(1); err != nil {
			t.Fatalf("Release: %v", err)
		}
		inB.expect(t, "p--1", "p--2", "p--3", "p--4", "p--5", "p--6", "p--7", "p--8")
		if g.Pressure() {
			t.Fatal("pressure after release")
		}
		if err := g.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	})

	t.Run("bytes", func(t *testing.T) {
		g := openGate(t, Config{NetNS: p.a, Queue: 4713, MaxPackets: 64, MaxBytes: 320})
		aToB.send(t, "b--1", "b--2", "b--3", "b--4", "b--5", "b--6", "b--7")
		waitHeld(t, g, 7)
		if g.Pressure() {
			t.Fatal("pressure at 224 of 320 bytes")
		}
		aToB.send(t, "b--8")
		waitHeld(t, g, 8)
		select {
		case <-g.Pressured():
		case <-time.After(arrival):
			t.Fatal("Pressured did not fire at 256 of 320 bytes")
		}
		if err := g.Discard(); err != nil {
			t.Fatalf("Discard: %v", err)
		}
		if g.Pressure() {
			t.Fatal("pressure after discard")
		}
		if err := g.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		inB.expectNone(t)
	})
}

func TestNFQueueAlreadyBound(t *testing.T) {
	needRoot(t)
	p := newPair(t)
	g := openGate(t, Config{NetNS: p.a, Queue: 4714})
	_, err := OpenNFQueue(Config{NetNS: p.a, Queue: 4714})
	if err == nil || !strings.Contains(err.Error(), "already bound by another process") {
		t.Fatalf("second open = %v, want an already-bound error", err)
	}
	t.Logf("second open: %v", err)
	if !errors.Is(err, unix.EBUSY) && !errors.Is(err, unix.EPERM) {
		t.Fatalf("second open = %v, want it to wrap EBUSY or EPERM", err)
	}
	// The failed open left the first gate's rules alone.
	if v4, v6 := ruleCount(t, p.a, 4714); v4 != 1 || v6 != 1 {
		t.Fatalf("rules after the failed open: %d IPv4, %d IPv6, want one of each", v4, v6)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

func TestNFQueueRemovesLeftoverRules(t *testing.T) {
	needRoot(t)
	p := newPair(t)
	// A dead ftrun left its rule behind: output is dropped (no listener, no bypass).
	run(t, "nsenter", "--net="+p.a, "--", "iptables", "-w", "-I", "OUTPUT", "!", "-o", "lo", "-j", "NFQUEUE", "--queue-num", "4715")
	inB := listen(t, p.b, addrB+":7000")
	aToB := dialFrom(t, p.a, addrB+":7000")
	_, _ = aToB.conn.Write([]byte("dead"))
	inB.expectNone(t)

	g := openGate(t, Config{NetNS: p.a, Queue: 4715})
	if v4, v6 := ruleCount(t, p.a, 4715); v4 != 1 || v6 != 1 {
		t.Fatalf("rules: %d IPv4, %d IPv6, want exactly one of each", v4, v6)
	}
	aToB.send(t, "live")
	waitHeld(t, g, 1)
	g.Cut(1)
	if err := g.Release(1); err != nil {
		t.Fatal(err)
	}
	inB.expect(t, "live")
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if v4, v6 := ruleCount(t, p.a, 4715); v4 != 0 || v6 != 0 {
		t.Fatalf("rules left after Close: %d IPv4, %d IPv6", v4, v6)
	}
}

func TestOpenNFQueueBadNetNS(t *testing.T) {
	_, err := OpenNFQueue(Config{NetNS: "/nonexistent/ftgt/ns", Queue: 1})
	if err == nil || !strings.Contains(err.Error(), "open network namespace") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("OpenNFQueue = %v, want a missing-namespace error", err)
	}
	t.Logf("bad namespace: %v", err)
}

// TestNFQueueOverrun stalls the reader until the socket's receive buffer overflows: the
// kernel drops packets (never lets them out), the gate counts the overflow and the
// packets lost, and the packets it did record are released as usual.
func TestNFQueueOverrun(t *testing.T) {
	needRoot(t)
	p := newPair(t)
	inB := listen(t, p.b, addrB+":7000")
	aToB := dialFrom(t, p.a, addrB+":7000")
	g := openGate(t, Config{NetNS: p.a, Queue: 4716, MaxPackets: 256})
	if err := g.conn.SetReadBuffer(1); err != nil { // the kernel's minimum: a few messages
		t.Fatal(err)
	}

	const sent = 64
	g.mu.Lock() // the reader blocks on its first arrival
	for i := range sent {
		_, _ = fmt.Fprintf(aToB.conn, "o%03d", i) // the kernel refuses the ones it drops
	}
	g.mu.Unlock()
	// The gap in ids shows once a later packet arrives.
	deadline := time.Now().Add(arrival)
	for g.Stats().Overruns == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	aToB.send(t, "last")

	st := g.Stats()
	for st.HeldPackets+int(st.Lost) < sent+1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		st = g.Stats()
	}
	if st.Overruns == 0 || st.Lost == 0 || st.HeldPackets+int(st.Lost) != sent+1 {
		t.Fatalf("stats = %+v, want an overrun, and held + lost = %d", st, sent+1)
	}
	t.Logf("held %d, lost %d, overruns %d", st.HeldPackets, st.Lost, st.Overruns)

	g.Cut(1)
	if err := g.Release(1); err != nil {
		t.Fatalf("Release after an overrun: %v", err)
	}
	got := 0
	timeout := time.After(arrival)
	for got < st.HeldPackets {
		select {
		case <-inB.got:
			got++
		case <-timeout:
			t.Fatalf("received %d packets, want the %d held", got, st.HeldPackets)
		}
	}
	inB.expectNone(t) // the lost ones never get out
}

package gate

import (
	"bufio"
	"net"
	"testing"
	"time"
)

// The dump lock holds incoming TCP (a client's request on an established connection)
// while locked and lets it in on unlock, without disturbing what the output gate holds:
// adding and removing its rule changes no netfilter hook, so the kernel flushes nothing.
func TestDumpLockHoldsIncomingTCP(t *testing.T) {
	needRoot(t)
	p := newPair(t)
	g := openGate(t, Config{NetNS: p.a})
	l, err := OpenDumpLock(Config{NetNS: p.a})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })

	// A TCP server in A, a client in B.
	var ln net.Listener
	if err := inNetNS(p.a, func() (err error) { ln, err = net.Listen("tcp4", addrA+":7070"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	got := make(chan string, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			got <- sc.Text()
		}
	}()
	defer func() { ln.Close(); <-done }()
	var c net.Conn
	if err := inNetNS(p.b, func() (err error) { c, err = net.DialTimeout("tcp4", addrA+":7070", 300*time.Millisecond); return err }); err == nil {
		// The handshake's SYN-ACK is output of A: the gate holds it. Release it.
		t.Fatal("connected although the gate holds A's SYN-ACK")
	}
	// Connect with the gate letting A's output out as it comes.
	stop := make(chan struct{})
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		for e := uint64(1); ; e++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			g.Cut(e)
			_ = g.Release(e)
		}
	}()
	if err := inNetNS(p.b, func() (err error) { c, err = net.DialTimeout("tcp4", addrA+":7070", 5*time.Second); return err }); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	expectLine(t, got, "one")

	if err := l.Lock(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-got:
		t.Fatalf("received %q while the dump lock holds incoming TCP", s)
	case <-time.After(quiet):
	}
	if l.Held() == 0 {
		t.Fatal("the dump lock holds nothing")
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	expectLine(t, got, "two") // in well under a retransmission timeout
	close(stop)
	<-pumped

	// Output held by the gate survives a lock and an unlock.
	u := listen(t, p.b, addrB+":7071")
	s := dialFrom(t, p.a, addrB+":7071")
	held := settledHeld(g) // A's ACKs of "two", if any
	s.send(t, "kept")
	waitHeld(t, g, held+1)
	if err := l.Lock(); err != nil {
		t.Fatal(err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	if st := g.Stats(); st.HeldPackets != held+1 || st.DroppedPackets != 0 {
		t.Fatalf("the gate's held output changed across the dump lock: %+v", st)
	}
	g.Cut(1 << 20)
	if err := g.Release(1 << 20); err != nil {
		t.Fatal(err)
	}
	u.expect(t, "kept")
}

// settledHeld is the gate's held count once it has not changed for longer than
// Linux's longest delayed ACK (200 ms): stray ACKs of earlier traffic are in by then.
func settledHeld(g *NFQueue) int {
	n := g.Stats().HeldPackets
	for stable := time.Now(); time.Since(stable) < 250*time.Millisecond; time.Sleep(10 * time.Millisecond) {
		if m := g.Stats().HeldPackets; m != n {
			n, stable = m, time.Now()
		}
	}
	return n
}

func expectLine(t *testing.T, got <-chan string, want string) {
	t.Helper()
	select {
	case s := <-got:
		if s != want {
			t.Fatalf("received %q, want %q", s, want)
		}
	case <-time.After(150 * time.Millisecond):
		t.Fatalf("%q did not arrive within 150ms", want)
	}
}

package standby_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/ship"
	"github.com/ftrun/ftrun/transport/standby"
)

// flakyListener fails its first fails Accepts the way a process out of file
// descriptors does.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// serveWith runs a Server over ln with cfg's limits; it stops with the test.
func serveWith(t *testing.T, c creds, ln net.Listener, cfg standby.Config) (*standby.Server, *logBuf) {
	t.Helper()
	store, err := standby.OpenStore(filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	lb := &logBuf{}
	cfg.Store, cfg.TLS, cfg.Host = store, c.standby.Server(), "standby-host"
	cfg.Logger = slog.New(slog.NewTextHandler(io.MultiWriter(lb, testWriter{t}), nil))
	srv, err := standby.NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, lb
}

// Accept failing (out of file descriptors) never ends Serve: it is logged, retried
// with backoff, and while it lasts the standby does not count the silence of its
// primaries against them.
func TestServeRetriesAcceptErrors(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &flakyListener{Listener: inner}
	srv, lb := serveWith(t, c, ln, standby.Config{})
	p := newPrimary(t, "svc")
	p.dial(t, inner.Addr().String(), c.primary.Client())
	if err := p.shipSet(t, 1, p.commit(t, 1, map[string][]byte{"core-1.img": []byte("x")})); err != nil {
		t.Fatal(err)
	}
	heard := srv.LastHeard("svc")
	p.ship.Close()
	ln.fails.Store(4)
	// A connection to wake Accept: it fails four times first.
	q := newPrimary(t, "svc")
	q.dial(t, inner.Addr().String(), c.primary.Client())
	lb.waitFor(t, "cannot accept connections")
	if !strings.Contains(lb.String(), "takes over nothing until it can hear them again") {
		t.Errorf("the log does not say the standby stops taking over:\n%s", lb.String())
	}
	if got := srv.LastHeard("svc"); !got.After(heard) {
		t.Errorf("LastHeard %v did not move past %v while Accept failed", got, heard)
	}
	if err := q.shipSet(t, 2, q.commit(t, 2, map[string][]byte{"core-1.img": []byte("y")})); err != nil {
		t.Fatalf("after the accept errors: %v", err)
	}
}

// Connections that never authenticate hold a slot each, at most a few per host: the
// next one from that host is closed at once, and a primary still gets in. Over the
// cap in all, the standby counts itself impaired.
func TestUnauthenticatedConnectionsCapped(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, lb := serveWith(t, c, ln, standby.Config{MaxUnauthenticated: 3, MaxUnauthenticatedPerHost: 2})
	p := newPrimary(t, "svc")
	p.dial(t, ln.Addr().String(), c.primary.Client())
	if err := p.shipSet(t, 1, p.commit(t, 1, map[string][]byte{"core-1.img": []byte("x")})); err != nil {
		t.Fatal(err)
	}
	heard := srv.LastHeard("svc")
	var idle []net.Conn
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 2 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	over, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer over.Close()
	over.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := over.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Fatalf("a third connection from one host: read %v, want it closed", err)
	}
	lb.waitFor(t, "cap 2 per host")
	if got := srv.LastHeard("svc"); !got.Equal(heard) {
		t.Errorf("one host over its own cap impaired the standby (LastHeard %v, was %v)", got, heard)
	}
	// The authenticated primary is unaffected.
	if err := p.shipSet(t, 2, p.commit(t, 2, map[string][]byte{"core-1.img": []byte("y")})); err != nil {
		t.Fatal(err)
	}
	// From another address (127.0.0.2 is loopback too): the cap in all is reached.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	for range 2 {
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	lb.waitFor(t, "turning connections away")
	if got := srv.LastHeard("svc"); !got.After(heard) {
		t.Errorf("LastHeard %v did not move while the standby turned connections away", got)
	}
}

// A certificate may ship only the services it names, and only into its quota.
func TestCertificateServesOnlyItsServices(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	pr := filepath.Join(t.TempDir(), "a")
	copyCAFiles(t, c, pr)
	onlyA := keygenWith(t, pr, auth.KeygenOptions{Name: "host-a", Roles: []string{auth.RolePrimary}, Services: []string{"a", "a2", "a3"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, lb := serveWith(t, c, ln, standby.Config{Quota: standby.Quota{Services: 2}})
	ok := newPrimary(t, "a")
	ok.dial(t, ln.Addr().String(), onlyA.Client())
	if err := ok.shipSet(t, 1, ok.commit(t, 1, map[string][]byte{"core-1.img": []byte("x")})); err != nil {
		t.Fatal(err)
	}
	bad := newPrimary(t, "b")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := bad.ship.Dial(ctx, ln.Addr().String(), onlyA.Client()); err == nil {
		t.Fatal("a Hello for service b was accepted from a certificate naming a, a2, a3")
	}
	lb.waitFor(t, `may not serve service \"b\"`)
	if got := srv.Status(); len(got) != 1 {
		t.Errorf("standby knows %d services, want 1: %v", len(got), got)
	}
	second := newPrimary(t, "a2")
	second.dial(t, ln.Addr().String(), onlyA.Client())
	third := newPrimary(t, "a3")
	if err := third.ship.Dial(ctx, ln.Addr().String(), onlyA.Client()); err == nil {
		t.Fatal("a third service was accepted with a quota of two")
	}
	lb.waitFor(t, "--quota-services")
}

// One certificate's epochs past its disk quota are refused for it alone: another
// certificate's service on the same standby goes on being acked.
func TestDiskQuotaPerCertificate(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	other := filepath.Join(t.TempDir(), "b")
	copyCAFiles(t, c, other)
	hostB := keygenWith(t, other, auth.KeygenOptions{Name: "host-b", Roles: []string{auth.RolePrimary}, Services: []string{"b"}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, lb := serveWith(t, c, ln, standby.Config{Quota: standby.Quota{Bytes: 256 << 10}})
	big := newPrimary(t, "a")
	big.dial(t, ln.Addr().String(), c.primary.Client())
	if err := big.shipSet(t, 1, big.commit(t, 1, map[string][]byte{"core-1.img": make([]byte, 64<<10)})); err != nil {
		t.Fatal(err)
	}
	err = big.shipSet(t, 2, big.commit(t, 2, map[string][]byte{"core-1.img": make([]byte, 512<<10)}))
	if !errors.Is(err, ship.ErrStandbyFull) || !strings.Contains(err.Error(), "--quota-bytes") {
		t.Fatalf("an epoch past the quota: %v, want ErrStandbyFull naming the quota", err)
	}
	lb.waitFor(t, `certificate \"primary\" would hold`)
	small := newPrimary(t, "b")
	small.dial(t, ln.Addr().String(), hostB.Client())
	for e := uint64(1); e <= 3; e++ {
		if err := small.shipSet(t, e, small.commit(t, e, map[string][]byte{"core-1.img": make([]byte, 128<<10)})); err != nil {
			t.Fatalf("another certificate's epoch %d: %v", e, err)
		}
	}
}

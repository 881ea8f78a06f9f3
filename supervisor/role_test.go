package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/ship"
)

func TestDecideRole(t *testing.T) {
	fresh := Claim{Name: "a", Nonce: 1}
	cases := []struct {
		name string
		in   RoleInput
		want string
	}{
		{"peer live", RoleInput{Peer: PeerLive}, RoleStandby},
		{"peer live, was primary", RoleInput{Peer: PeerLive, Last: RolePrimary}, RoleStandby},
		{"peer live beats --force-primary", RoleInput{Peer: PeerLive, ForcePrimary: true}, RoleStandby}, // never two copies
		// The peer took over while this host's ftrun was gone: its copy counts, the
		// orphan here is killed (chooseRole).
		{"peer live, program still runs here", RoleInput{Peer: PeerLive, Own: Claim{Running: true, Epoch: 40}}, RoleStandby},
		{"peer standby, was standby", RoleInput{Peer: PeerStandby, Last: RoleStandby}, RolePrimary},
		{"peer standby", RoleInput{Peer: PeerStandby}, RolePrimary},
		{"unreachable", RoleInput{Peer: PeerUnreachable}, RolePrimary},
		{"unreachable, was primary", RoleInput{Peer: PeerUnreachable, Last: RolePrimary}, RolePrimary},
		{"unreachable, was standby", RoleInput{Peer: PeerUnreachable, Last: RoleStandby}, RoleStandby},
		{"unreachable, was standby, forced", RoleInput{Peer: PeerUnreachable, Last: RoleStandby, ForcePrimary: true}, RolePrimary},
		{"unreachable, program still runs here", RoleInput{Peer: PeerUnreachable, Last: RoleStandby, Own: Claim{Running: true}}, RolePrimary},

		// Both deciding at once (a symmetric pair booting together, or both restarted
		// after both died): the newest epoch runs the program.
		{"booting, newer here", RoleInput{Peer: PeerBooting, Own: Claim{Epoch: 9, Name: "b"}, PeerClaim: Claim{Epoch: 8, Name: "a"}}, RolePrimary},
		{"booting, newer there", RoleInput{Peer: PeerBooting, Own: Claim{Epoch: 8, Name: "a"}, PeerClaim: Claim{Epoch: 9, Name: "b"}}, RoleStandby},
		{"booting, newer there, was primary", RoleInput{Peer: PeerBooting, Last: RolePrimary, Own: Claim{Epoch: 8}, PeerClaim: Claim{Epoch: 9}}, RoleStandby},
		{"booting, --force-primary does not beat a newer epoch", RoleInput{Peer: PeerBooting, ForcePrimary: true, Own: Claim{Epoch: 8}, PeerClaim: Claim{Epoch: 9}}, RoleStandby},
		{"booting, fresh pair, priority", RoleInput{Peer: PeerBooting, Own: Claim{Priority: 1, Name: "z"}, PeerClaim: Claim{Name: "a"}}, RolePrimary},
		{"booting, fresh pair, smaller name", RoleInput{Peer: PeerBooting, Own: fresh, PeerClaim: Claim{Name: "b"}}, RolePrimary},
		{"booting, fresh pair, larger name", RoleInput{Peer: PeerBooting, Own: Claim{Name: "b"}, PeerClaim: fresh}, RoleStandby},
		{"booting, shared certificate, node", RoleInput{Peer: PeerBooting, Own: Claim{Name: "n", Node: "x"}, PeerClaim: Claim{Name: "n", Node: "y"}}, RolePrimary},
		{"booting, shared certificate and node, nonce", RoleInput{Peer: PeerBooting, Own: Claim{Nonce: 7}, PeerClaim: Claim{Nonce: 3}}, RoleStandby},
		// The peer lies: a claimed newer epoch never makes this host give up a
		// program that still runs here.
		{"booting, liar claims newer epoch against a running program", RoleInput{Peer: PeerBooting, Own: Claim{Running: true, Epoch: 5, Name: "z"}, PeerClaim: Claim{Epoch: 1 << 60, Priority: 1 << 30, Name: "a"}}, RolePrimary},
		{"booting, liar claims running and newer epoch against a running program, rank decides", RoleInput{Peer: PeerBooting, Own: Claim{Running: true, Epoch: 5, Name: "a"}, PeerClaim: Claim{Running: true, Epoch: 1 << 60, Name: "b"}}, RolePrimary},
		{"booting, program runs there", RoleInput{Peer: PeerBooting, Own: Claim{Epoch: 50}, PeerClaim: Claim{Running: true, Epoch: 3}}, RoleStandby},
		{"booting, peer echoes this host's claim", RoleInput{Peer: PeerBooting, Own: fresh, PeerClaim: fresh}, RolePrimary},
	}
	for _, c := range cases {
		got := DecideRole(c.in)
		if got.Role != c.want || got.Reason == "" {
			t.Errorf("%s: DecideRole(%+v) = %+v, want role %s with a reason", c.name, c.in, got, c.want)
		}
	}
}

// Two honest hosts deciding at once see each other's claim and reach opposite
// roles, whatever their claims: never two copies, never none.
func TestDecideRoleSymmetric(t *testing.T) {
	var claims []Claim
	for _, running := range []bool{false, true} {
		for _, epoch := range []uint64{0, 7, 8} {
			for _, prio := range []int{0, 1} {
				for _, name := range []string{"a", "b"} {
					for _, node := range []string{"x", "y"} {
						for _, nonce := range []uint64{1, 2} {
							claims = append(claims, Claim{running, epoch, prio, name, node, nonce})
						}
					}
				}
			}
		}
	}
	for _, a := range claims {
		for _, b := range claims {
			if a == b {
				continue
			}
			for _, lastA := range []string{"", RolePrimary, RoleStandby} {
				for _, lastB := range []string{"", RolePrimary, RoleStandby} {
					da := DecideRole(RoleInput{Peer: PeerBooting, Last: lastA, Own: a, PeerClaim: b})
					db := DecideRole(RoleInput{Peer: PeerBooting, Last: lastB, Own: b, PeerClaim: a})
					if (da.Role == RolePrimary) == (db.Role == RolePrimary) {
						t.Fatalf("claims %+v and %+v: %s and %s (%q / %q)", a, b, da.Role, db.Role, da.Reason, db.Reason)
					}
				}
			}
		}
	}
}

func TestClaimRoundTrip(t *testing.T) {
	c := Claim{Running: true, Epoch: 1<<63 + 5, Priority: -3, Node: "host a&b=c", Nonce: 42}
	got, ok := claimOf([]string{"file-delta", encodeClaim(c)})
	if !ok || got != c {
		t.Fatalf("claimOf(encodeClaim(%+v)) = %+v, %v", c, got, ok)
	}
	for _, bad := range []string{"boot?running=maybe&epoch=1&priority=0&nonce=1", "boot?epoch=-1", "boot?%zz"} {
		if _, ok := claimOf([]string{bad}); ok {
			t.Errorf("claimOf(%q) accepted a malformed claim", bad)
		}
	}
	if _, ok := claimOf([]string{"file-delta"}); ok {
		t.Error("a Hello without a claim has one")
	}
}

// pairTLS issues two certificates of one CA, both roles, for hosts named a and b.
func pairTLS(t *testing.T) (a, b *auth.Config) {
	t.Helper()
	root := t.TempDir()
	da, db := filepath.Join(root, "a"), filepath.Join(root, "b")
	opts := auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}
	opts.Name = "host-a"
	if err := auth.Keygen(da, opts); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(db, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{auth.CACertFile, auth.CAKeyFile} {
		data, err := os.ReadFile(filepath.Join(da, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(db, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts.Name = "host-b"
	if err := auth.Keygen(db, opts); err != nil {
		t.Fatal(err)
	}
	ca, err := auth.LoadConfig(da)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := auth.LoadConfig(db)
	if err != nil {
		t.Fatal(err)
	}
	return ca, cb
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// bootHost is one side of negotiate over real TLS on loopback, as chooseRole runs it.
type bootHost struct {
	keys   *auth.Config
	listen string
	own    Claim
	last   string
}

func (h bootHost) boot(ctx context.Context, peer string, delay, wait time.Duration) (RoleDecision, error) {
	time.Sleep(delay)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x, err := listenExchange(h.listen, h.keys.Server(), "f2-svc", h.own, log)
	if err != nil {
		return RoleDecision{}, err
	}
	ask := func(ctx context.Context) (PeerAnswer, Claim, error) {
		return askOnce(ctx, peer, h.keys.Client(), "f2-svc", "test", h.own)
	}
	d, _, _ := negotiate(ctx, clockwork.NewRealClock(), wait, ask, x, RoleInput{Last: h.last, Own: h.own})
	if d.Role == RoleStandby {
		x.close()
		return d, nil
	}
	// A primary goes on answering "live" until the test ends.
	go func() { <-ctx.Done(); x.close() }()
	return d, nil
}

// Two hosts of a symmetric pair booting at the same instant, or one while the other
// is mid-boot (asking, its wait nearly over), or the second after the first already
// runs the program: exactly one of them runs it, and the one with the newer epoch
// when both had to compare.
func TestNegotiateOneCopy(t *testing.T) {
	ka, kb := pairTLS(t)
	cases := []struct {
		name           string
		delayA, delayB time.Duration
		waitA, waitB   time.Duration
		epochA, epochB uint64
		lastA, lastB   string
		wantA          string // "" when either may win
	}{
		{"same instant, fresh pair", 0, 0, 3 * time.Second, 3 * time.Second, 0, 0, "", "", ""},
		{"same instant, both were standby", 0, 0, 3 * time.Second, 3 * time.Second, 0, 0, RoleStandby, RoleStandby, ""},
		{"same instant, newer epoch on B", 0, 0, 3 * time.Second, 3 * time.Second, 10, 12, RolePrimary, RoleStandby, RoleStandby},
		{"B boots while A asks", 0, 700 * time.Millisecond, 3 * time.Second, 3 * time.Second, 12, 10, "", "", RolePrimary},
		{"B boots as A's wait ends", 0, 900 * time.Millisecond, time.Second, 3 * time.Second, 5, 9, "", "", ""},
		{"B boots after A decided alone", 0, 1500 * time.Millisecond, 500 * time.Millisecond, 3 * time.Second, 5, 9, "", "", RolePrimary},
	}
	for _, c := range cases {
		for round := range 3 {
			t.Run(fmt.Sprintf("%s/%d", c.name, round), func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				la, lb := freeAddr(t), freeAddr(t)
				a := bootHost{keys: ka, listen: la, own: Claim{Epoch: c.epochA, Name: "host-a", Nonce: bootNonce()}, last: c.lastA}
				b := bootHost{keys: kb, listen: lb, own: Claim{Epoch: c.epochB, Name: "host-b", Nonce: bootNonce()}, last: c.lastB}
				var wg sync.WaitGroup
				var da, db RoleDecision
				var ea, eb error
				wg.Add(2)
				go func() { defer wg.Done(); da, ea = a.boot(ctx, lb, c.delayA, c.waitA) }()
				go func() { defer wg.Done(); db, eb = b.boot(ctx, la, c.delayB, c.waitB) }()
				wg.Wait()
				if ea != nil || eb != nil {
					t.Fatal(ea, eb)
				}
				if (da.Role == RolePrimary) == (db.Role == RolePrimary) {
					t.Fatalf("A %s (%s), B %s (%s): want exactly one primary", da.Role, da.Reason, db.Role, db.Reason)
				}
				if c.wantA != "" && da.Role != c.wantA {
					t.Fatalf("A %s (%s), want %s", da.Role, da.Reason, c.wantA)
				}
			})
		}
	}
}

// A peer whose TLS handshake or Hello stalls is unreachable, not waited for.
func TestAskStalledPeer(t *testing.T) {
	ka, _ := pairTLS(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	start := time.Now()
	ans, _, err := askOnce(context.Background(), ln.Addr().String(), ka.Client(), "f2-svc", "test", Claim{})
	if ans != PeerUnreachable || err == nil {
		t.Fatalf("stalled peer: %s, %v", ans, err)
	}
	if d := time.Since(start); d > 4*exchangeTimeout {
		t.Fatalf("ask hung for %s", d)
	}
}

// A host that runs the program answers a booting peer "live", but leaves a live
// copy's link (a plain primary Hello, no claim) without an answer: after a healed
// partition only the other side refuses, so one copy fences, not both. A claim that
// arrives after the decision is not recorded.
func TestExchangeAnswersAfterDecision(t *testing.T) {
	ka, kb := pairTLS(t)
	addr := freeAddr(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x, err := listenExchange(addr, ka.Server(), "f2-svc", Claim{Epoch: 3}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer x.close()
	x.decide(func(*Claim) RoleDecision { return RoleDecision{Role: RolePrimary} })
	ctx := context.Background()
	if ans, _, err := askOnce(ctx, addr, kb.Client(), "f2-svc", "b", Claim{Epoch: 1 << 60}); ans != PeerLive {
		t.Fatalf("booting peer asking a primary: %s (%v), want live", ans, err)
	}
	x.mu.Lock()
	heard := x.heard
	x.mu.Unlock()
	if heard != nil {
		t.Fatalf("a claim after the decision was recorded: %+v", *heard)
	}
	sh := ship.New(ship.Config{Service: "f2-svc", Host: "b"})
	defer sh.Close()
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	err = sh.Dial(dctx, addr, kb.Client())
	if err == nil || errors.Is(err, ship.ErrPeerLive) {
		t.Fatalf("a live copy's link dialling a primary: %v, want no answer", err)
	}
	if ans, _, _ := askOnce(ctx, addr, kb.Client(), "other-svc", "b", Claim{}); ans != PeerUnreachable {
		t.Fatalf("a question about another service: %s, want no answer", ans)
	}
}

// Two live copies meeting after a partition: the later take-over stays, the other
// stops; a copy that never took over, or a tie, stops.
func TestYields(t *testing.T) {
	for _, c := range []struct {
		own, peer uint64
		want      bool
	}{
		{0, 5, true}, {0, 0, true}, {5, 5, true}, {4, 9, true}, {9, 4, false}, {1, 0, true},
	} {
		if got := yields(c.own, c.peer); got != c.want {
			t.Errorf("yields(%d, %d) = %v, want %v", c.own, c.peer, got, c.want)
		}
	}
}

// A flood of connections that never finish their handshake holds at most maxAnswers
// answers; once they time out, a deciding peer is answered again, and close waits for
// every answer without hanging.
func TestExchangeFlood(t *testing.T) {
	ka, kb := pairTLS(t)
	addr := freeAddr(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	x, err := listenExchange(addr, ka.Server(), "f2-svc", Claim{Epoch: 3}, log)
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 3 * maxAnswers {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	deadline := time.Now().Add(4 * exchangeTimeout)
	for {
		ans, claim, err := askOnce(context.Background(), addr, kb.Client(), "f2-svc", "b", Claim{})
		if ans == PeerBooting && claim.Epoch == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer after the flood: %s %v", ans, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	done := make(chan struct{})
	go func() { x.close(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * exchangeTimeout):
		t.Fatal("close hung")
	}
}

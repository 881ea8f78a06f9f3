package standby_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ftrun/ftrun/transport/ship"
)

// A service this host took over is never fed by its old primary again: its open
// connection is closed, an epoch it sends is not acknowledged, and when it connects
// again it is told the service is live here (which the shipper reports as
// ErrPeerLive), so the old primary can fence its copy.
func TestClaimRefusesOldPrimary(t *testing.T) {
	c, _, srv, p := connectedPrimary(t)
	files := map[string][]byte{"core-1.img": pattern(3000, 1), "pages-1.img": pattern(64<<10, 2)}
	if err := p.shipSet(t, 1, p.commit(t, 1, files)); err != nil {
		t.Fatal(err)
	}
	if err := srv.Claim("svc"); err != nil {
		t.Fatal(err)
	}
	if !srv.Live("svc") {
		t.Fatal("Live after Claim is false")
	}
	files["pages-1.img"] = pattern(64<<10, 3)
	if err := p.shipSet(t, 2, p.commit(t, 2, files)); err == nil {
		t.Fatal("epoch 2 was acknowledged after the service went live on the standby")
	}
	if got := srv.store.LastCommitted("svc"); got != 1 {
		t.Fatalf("standby holds epoch %d, want 1: nothing may be committed once live", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.ship.Dial(ctx, srv.addr, c.primary.Client())
	if !errors.Is(err, ship.ErrPeerLive) {
		t.Fatalf("dial after Claim: %v, want ErrPeerLive", err)
	}
	// The refusal says which epoch the copy here went live from: the one it held.
	var pe *ship.PeerLiveError
	if !errors.As(err, &pe) || pe.LiveSince != 1 {
		t.Fatalf("dial after Claim: %v, want a PeerLiveError live since epoch 1", err)
	}
	srv.log.waitFor(t, "refusing the service's old primary")
	// Unclaimed (the copy here ended), the service takes its primary again, and the
	// old silence counts for nothing until it is heard.
	srv.Unclaim("svc")
	if srv.Live("svc") || !srv.LastHeard("svc").IsZero() {
		t.Fatalf("after Unclaim: live %v, last heard %v; want not live, not heard", srv.Live("svc"), srv.LastHeard("svc"))
	}
	p.dial(t, srv.addr, c.primary.Client())
	// Another service on the same standby is not affected.
	q := newPrimary(t, "other")
	q.dial(t, srv.addr, c.primary.Client())
}

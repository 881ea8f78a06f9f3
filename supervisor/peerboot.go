package supervisor

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/frame"
)

// exchangeTimeout bounds one boot exchange (TLS handshake, Hello, answer) on either
// side: a peer that stalls it is treated as unreachable, never waited for.
const exchangeTimeout = 2 * time.Second

// maxAnswers bounds the answers under way at once: a pair has one peer, and anything
// beyond a few connections is a flood, turned away.
const maxAnswers = 8

// exchange is this host's side of the boot of a symmetric pair (both hosts run the
// same `ftrun run --standby PEER --listen ADDR`): it answers the peer on the listen
// address while this host decides its role, and, once this host runs the program,
// for as long as it does. A peer that asks while this host is deciding leaves its
// claim here and learns this host's; the decision then takes that claim into account
// under the same lock that makes every later answer say what was decided, so a peer
// either counts in the decision or hears its outcome — never a stale "deciding".
type exchange struct {
	svc string
	own Claim
	log *slog.Logger
	ln  net.Listener
	wg  sync.WaitGroup

	mu    sync.Mutex
	state string // "" while deciding, then RolePrimary or RoleStandby
	heard *Claim // a deciding peer's claim, left when it asked here
	asked chan struct{}
}

// listenExchange starts answering on addr with TLS conf (the server side of the
// pair's mutual TLS).
func listenExchange(addr string, conf *tls.Config, svc string, own Claim, log *slog.Logger) (*exchange, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("answer the peer on %q: %w", addr, err)
	}
	x := &exchange{svc: svc, own: own, log: log, ln: tls.NewListener(ln, conf), asked: make(chan struct{})}
	slots := make(chan struct{}, maxAnswers)
	x.wg.Add(1)
	go func() {
		defer x.wg.Done()
		for {
			c, err := x.ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				// Out of descriptors, say: retry soon rather than spin.
				time.Sleep(100 * time.Millisecond)
				continue
			}
			select {
			case slots <- struct{}{}:
			default:
				c.Close()
				continue
			}
			x.wg.Add(1)
			go func() {
				defer x.wg.Done()
				defer func() { <-slots }()
				defer c.Close()
				x.answer(c.(*tls.Conn))
			}()
		}
	}()
	return x, nil
}

// close stops answering and waits for every answer under way.
func (x *exchange) close() {
	x.ln.Close()
	x.wg.Wait()
}

// answer serves one connection. Only a deciding peer's question is answered: a live
// copy's link that finds this host running the program too is left to find out from
// the other side (this host's own link is refused there and fences this copy), so
// that a healed partition never fences both.
func (x *exchange) answer(c *tls.Conn) {
	c.SetDeadline(time.Now().Add(exchangeTimeout))
	if err := c.Handshake(); err != nil {
		return
	}
	id := auth.PeerIdentity(c.ConnectionState())
	h, err := readHello(c)
	if err != nil || h.Service != x.svc || !id.MayServe(h.Service) {
		return
	}
	claim, ok := claimOf(h.Features)
	if !ok {
		return
	}
	claim.Name = id.Name
	x.mu.Lock()
	var reply *frame.Hello
	switch x.state {
	case "":
		x.heard = &claim
		select {
		case <-x.asked:
		default:
			close(x.asked)
		}
		reply = &frame.Hello{Version: frame.Version, Service: x.svc, Role: frame.HelloRoleBooting, LastCommitted: x.own.Epoch,
			Features: []string{encodeClaim(x.own)}}
	case RolePrimary:
		reply = &frame.Hello{Version: frame.Version, Service: x.svc, Role: frame.HelloRoleLive, LastCommitted: x.own.Epoch}
	}
	x.mu.Unlock()
	if reply == nil {
		return
	}
	x.log.Info("boot: answered the peer", "peer", id.Name, "remote", c.RemoteAddr().String(), "answer", reply.Role,
		"peer_epoch", claim.Epoch, "peer_running", claim.Running)
	_ = frame.NewWriter(c).WritePayload(0, reply)
}

// decide runs f with the claim a deciding peer left here (nil for none) and makes
// every later answer say f's outcome.
func (x *exchange) decide(f func(heard *Claim) RoleDecision) RoleDecision {
	x.mu.Lock()
	defer x.mu.Unlock()
	d := f(x.heard)
	x.state = d.Role
	return d
}

// askedCh is closed once a deciding peer has asked here.
func (x *exchange) askedCh() <-chan struct{} {
	if x == nil {
		return nil
	}
	return x.asked
}

// askOnce asks the peer at addr once what it is. A standby (`ftrun standby`, or a
// `ftrun run` serving as the live copy's standby) answers as to any primary; a host
// running the service answers "live"; a host deciding too answers with its claim,
// whose Name is that of its verified certificate.
func askOnce(ctx context.Context, addr string, conf *tls.Config, svc, host string, own Claim) (PeerAnswer, Claim, error) {
	ctx, cancel := context.WithTimeout(ctx, exchangeTimeout)
	defer cancel()
	d := tls.Dialer{Config: conf}
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return PeerUnreachable, Claim{}, err
	}
	defer nc.Close()
	c := nc.(*tls.Conn)
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	hello := &frame.Hello{Version: frame.Version, Service: svc, Host: host, Role: frame.RolePrimary.String(), Features: []string{encodeClaim(own)}}
	if err := frame.NewWriter(c).WritePayload(0, hello); err != nil {
		return PeerUnreachable, Claim{}, err
	}
	h, err := readHello(c)
	if err != nil {
		return PeerUnreachable, Claim{}, fmt.Errorf("waiting for the peer's Hello: %w", err)
	}
	if h.Service != svc {
		return PeerUnreachable, Claim{}, fmt.Errorf("the peer answered for service %q, not %q", h.Service, svc)
	}
	switch h.Role {
	case frame.HelloRoleLive:
		return PeerLive, Claim{}, fmt.Errorf("the service is live on the peer (host %q, holding epoch %d)", h.Host, h.LastCommitted)
	case frame.HelloRoleBooting:
		claim, ok := claimOf(h.Features)
		if !ok {
			return PeerUnreachable, Claim{}, errors.New("the peer says it is deciding but states no claim")
		}
		claim.Name = auth.PeerIdentity(c.ConnectionState()).Name
		return PeerBooting, claim, nil
	case frame.RoleStandby.String():
		return PeerStandby, Claim{}, nil
	}
	return PeerUnreachable, Claim{}, fmt.Errorf("the peer answered as %q", h.Role)
}

func readHello(c net.Conn) (frame.Hello, error) {
	var h frame.Hello
	f, err := frame.NewReader(c, frame.DefaultLimits()).Next()
	if err != nil {
		return h, err
	}
	if f.Type != frame.TypeHello {
		return h, fmt.Errorf("first frame is %s, not Hello", f.Type)
	}
	return h, h.UnmarshalBinary(f.Payload)
}

// encodeClaim is the claim's Feature. Name is left out: the receiver takes it from
// the certificate.
func encodeClaim(c Claim) string {
	v := url.Values{}
	v.Set("running", strconv.FormatBool(c.Running))
	v.Set("epoch", strconv.FormatUint(c.Epoch, 10))
	v.Set("priority", strconv.Itoa(c.Priority))
	v.Set("node", c.Node)
	v.Set("nonce", strconv.FormatUint(c.Nonce, 10))
	return frame.FeatureBootClaim + v.Encode()
}

// claimOf finds and parses the claim among a Hello's Features; a malformed one is no
// claim (the peer is then treated as unreachable).
func claimOf(features []string) (Claim, bool) {
	for _, f := range features {
		q, ok := strings.CutPrefix(f, frame.FeatureBootClaim)
		if !ok {
			continue
		}
		v, err := url.ParseQuery(q)
		if err != nil {
			return Claim{}, false
		}
		var c Claim
		var e1, e2, e3, e4 error
		c.Running, e1 = strconv.ParseBool(v.Get("running"))
		c.Epoch, e2 = strconv.ParseUint(v.Get("epoch"), 10, 64)
		c.Priority, e3 = strconv.Atoi(v.Get("priority"))
		c.Nonce, e4 = strconv.ParseUint(v.Get("nonce"), 10, 64)
		c.Node = v.Get("node")
		return c, errors.Join(e1, e2, e3, e4) == nil
	}
	return Claim{}, false
}

// certName is the common name of conf's own certificate, as the peer's TLS sees it.
func certName(conf *tls.Config) string {
	if conf == nil || len(conf.Certificates) == 0 || len(conf.Certificates[0].Certificate) == 0 {
		return ""
	}
	cert, err := x509.ParseCertificate(conf.Certificates[0].Certificate[0])
	if err != nil {
		return ""
	}
	return auth.IdentityOf(cert).Name
}

func bootNonce() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.BigEndian.Uint64(b[:])
}

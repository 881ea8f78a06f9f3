package standby

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/internal/syncbuf"
	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/frame"
	"github.com/ftrun/ftrun/transport/progress"
	"github.com/ftrun/ftrun/transport/svcname"
)

// These tests speak the protocol frame by frame over a pipe (no TLS, which would
// refuse a damaged record before the frame layer saw it), to reach what the Reader
// and the Sequencer refuse and the standby's answers to a bad base.

// LogBuf is a concurrency-safe log sink the tests read back (exported for the
// external test package too).
type LogBuf = syncbuf.Buffer

// rawPeer is a hand-driven primary on one end of a pipe to serveConn.
type rawPeer struct {
	t    *testing.T
	c    net.Conn
	w    *frame.Writer
	got  chan frame.Frame
	done chan struct{} // closed when the standby's side of the conversation ended
	srvd chan struct{} // closed when serveConn returned
	log  *LogBuf
	srv  *Server
}

func newRaw(t *testing.T, store *Store, lim frame.Limits, opts ...func(*Config)) *rawPeer {
	t.Helper()
	a, b := net.Pipe()
	lb := &LogBuf{}
	cfg := Config{Store: store, TLS: &tls.Config{}, Logger: slog.New(slog.NewTextHandler(lb, nil)), Limits: lim}
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &rawPeer{t: t, c: a, w: frame.NewWriter(a), got: make(chan frame.Frame, 64), done: make(chan struct{}), srvd: make(chan struct{}), log: lb, srv: srv}
	go func() {
		defer close(p.srvd)
		defer b.Close()
		srv.serveConn(ctx, b, rawIdentity, func() {})
	}()
	go func() {
		defer close(p.done)
		r := frame.NewReader(a, frame.Limits{})
		for {
			f, err := r.Next()
			if err != nil {
				return
			}
			p.got <- f
		}
	}()
	t.Cleanup(func() {
		cancel()
		a.Close()
		<-p.srvd
		<-p.done
	})
	return p
}

func (p *rawPeer) send(epoch uint64, pl frame.Payload) {
	p.t.Helper()
	if err := p.w.WritePayload(epoch, pl); err != nil {
		p.t.Fatalf("send %s: %v", pl.Type(), err)
	}
}

func (p *rawPeer) expect(typ frame.Type) frame.Frame {
	p.t.Helper()
	select {
	case f := <-p.got:
		if f.Type != typ {
			p.t.Fatalf("got %s (epoch %d), want %s", f.Type, f.Epoch, typ)
		}
		return f
	case <-time.After(5 * time.Second):
		p.t.Fatalf("no %s from the standby; log:\n%s", typ, p.log.String())
	}
	return frame.Frame{}
}

// closed waits for the standby to drop the connection and returns its log.
func (p *rawPeer) closed() string {
	p.t.Helper()
	select {
	case <-p.srvd:
	case <-time.After(5 * time.Second):
		p.t.Fatalf("standby kept the connection; log:\n%s", p.log.String())
	}
	return p.log.String()
}

func (p *rawPeer) hello(service string) uint64 {
	p.t.Helper()
	p.send(0, &frame.Hello{Version: frame.Version, Service: service, Host: "raw", Role: "primary"})
	f := p.expect(frame.TypeHello)
	var h frame.Hello
	if err := h.UnmarshalBinary(f.Payload); err != nil {
		p.t.Fatal(err)
	}
	return h.LastCommitted
}

// fixture is a committed image set made the primary's way: files plus the manifest.
type fixture struct {
	files    map[string][]byte
	manifest []byte
}

func makeFixture(t *testing.T, epoch uint64, files map[string][]byte) fixture {
	t.Helper()
	st, err := checkpoint.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p, err := st.Begin(epoch)
	if err != nil {
		t.Fatal(err)
	}
	for n, d := range files {
		if err := os.WriteFile(filepath.Join(p.Dir, n), d, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set, err := p.Commit(&checkpoint.Manifest{Service: "svc"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := os.ReadFile(filepath.Join(set.Dir, checkpoint.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	return fixture{files: files, manifest: m}
}

// sendEpoch sends fx as epoch: whole files, or with base != 0 a delta carrying only
// the files named in only.
func (p *rawPeer) sendEpoch(epoch, base uint64, fx fixture, only ...string) {
	p.t.Helper()
	names := only
	if base == 0 {
		names = nil
		for n := range fx.files {
			names = append(names, n)
		}
		slices.Sort(names)
	}
	p.send(epoch, &frame.EpochBegin{Full: base == 0, BaseEpoch: base, Files: uint32(len(names))})
	for _, n := range names {
		p.send(epoch, &frame.ImageData{Name: n, Data: fx.files[n], Last: true})
	}
	p.send(epoch, &frame.EpochCommit{Manifest: fx.manifest})
}

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := OpenStore(filepath.Join(t.TempDir(), "root"))
	if err != nil {
		t.Fatal(err)
	}
	s.NoSync = true
	return s
}

func storeEpochs(t *testing.T, s *Store, service string) []uint64 {
	t.Helper()
	sets, err := s.Sets(service)
	if err != nil {
		t.Fatal(err)
	}
	var out []uint64
	for _, set := range sets {
		out = append(out, set.Epoch)
	}
	return out
}

// A delta against a base the standby does not hold as its newest gets a
// ResyncRequest at once; its frames are dropped, its commit nacked BadBase, and the
// full epoch that follows is committed.
func TestDeltaAgainstWrongBase(t *testing.T) {
	store := openStore(t)
	p := newRaw(t, store, frame.Limits{})
	if got := p.hello("svc"); got != 0 {
		t.Fatalf("fresh standby says it has epoch %d", got)
	}
	fx1 := makeFixture(t, 1, map[string][]byte{"a.img": []byte("one"), "b.img": []byte("bee")})
	p.sendEpoch(1, 0, fx1)
	p.expect(frame.TypeAck)
	fx2 := makeFixture(t, 2, map[string][]byte{"a.img": []byte("two"), "b.img": []byte("bee")})
	p.sendEpoch(2, 1, fx2, "a.img")
	p.expect(frame.TypeAck)

	fx3 := makeFixture(t, 3, map[string][]byte{"a.img": []byte("three"), "b.img": []byte("bee")})
	p.sendEpoch(3, 1, fx3, "a.img") // base 1, but the newest here is 2
	f := p.expect(frame.TypeResyncRequest)
	var rr frame.ResyncRequest
	if err := rr.UnmarshalBinary(f.Payload); err != nil || rr.HaveEpoch != 2 {
		t.Fatalf("resync request %+v, %v", rr, err)
	}
	f = p.expect(frame.TypeNack)
	var n frame.Nack
	if err := n.UnmarshalBinary(f.Payload); err != nil || n.Code != frame.NackBadBase || n.Epoch != 3 {
		t.Fatalf("nack %+v, %v", n, err)
	}
	// A delta sent before the primary saw the request is dropped too.
	fx4 := makeFixture(t, 4, map[string][]byte{"a.img": []byte("four"), "b.img": []byte("bee")})
	p.sendEpoch(4, 2, fx4, "a.img")
	p.expect(frame.TypeNack)
	if got := storeEpochs(t, store, "svc"); !slices.Equal(got, []uint64{2, 1}) {
		t.Fatalf("epochs %v, want [2 1]", got)
	}
	fx5 := makeFixture(t, 5, map[string][]byte{"a.img": []byte("five"), "b.img": []byte("bee")})
	p.sendEpoch(5, 0, fx5)
	p.expect(frame.TypeAck)
	if got := storeEpochs(t, store, "svc"); !slices.Equal(got, []uint64{5, 2}) {
		t.Fatalf("epochs %v, want [5 2]", got)
	}
}

// Frames the Reader or the Sequencer refuses end the connection with one log line
// naming the cause, and leave the committed epoch as it was.
func TestBadFramesCloseConnection(t *testing.T) {
	fx1 := makeFixture(t, 1, map[string][]byte{"a.img": []byte("one")})
	fx2 := makeFixture(t, 2, map[string][]byte{"a.img": []byte("two")})
	// raw encodes frames with a private writer, for damage before they are sent.
	raw := func(startSeq int, frames ...frame.Payload) []byte {
		var buf bytes.Buffer
		w := frame.NewWriter(&buf)
		for i := 1; i < startSeq; i++ {
			w.WritePayload(0, &frame.Heartbeat{})
		}
		buf.Reset()
		for _, f := range frames {
			if err := w.WritePayload(2, f); err != nil {
				t.Fatal(err)
			}
		}
		return buf.Bytes()
	}
	cases := []struct {
		name string
		lim  frame.Limits
		// after Hello (seq 1) and epoch 1 (seq 2-4), send these
		run  func(p *rawPeer)
		want string
	}{
		{"flipped byte", frame.Limits{}, func(p *rawPeer) {
			b := raw(5, &frame.EpochBegin{Full: true, Files: 1}, &frame.ImageData{Name: "a.img", Data: fx2.files["a.img"], Last: true})
			b[len(b)-6] ^= 0x01
			p.c.Write(b)
		}, "checksum mismatch"},
		{"replayed frame", frame.Limits{}, func(p *rawPeer) {
			p.c.Write(raw(4, &frame.EpochBegin{Full: true, Files: 1}))
		}, "sequence replayed"},
		{"dropped frame", frame.Limits{}, func(p *rawPeer) {
			p.c.Write(raw(6, &frame.EpochBegin{Full: true, Files: 1}))
		}, "sequence gap"},
		{"oversized frame", frame.Limits{MaxPayload: 1024}, func(p *rawPeer) {
			p.send(2, &frame.EpochBegin{Full: true, Files: 1})
			var buf bytes.Buffer
			w := frame.NewWriterLimits(&buf, frame.Limits{MaxPayload: 1 << 20})
			for range 5 {
				w.WritePayload(0, &frame.Heartbeat{})
			}
			buf.Reset()
			w.WritePayload(2, &frame.ImageData{Name: "a.img", Data: make([]byte, 4096), Last: true})
			p.c.Write(buf.Bytes())
		}, "payload too large"},
		{"commit without begin", frame.Limits{}, func(p *rawPeer) {
			p.send(2, &frame.EpochCommit{Manifest: fx2.manifest})
		}, "epoch protocol violation"},
		{"replayed epoch", frame.Limits{}, func(p *rawPeer) {
			p.send(1, &frame.EpochBegin{Full: true, Files: 1})
		}, "already committed epoch 1"},
		{"second hello", frame.Limits{}, func(p *rawPeer) {
			p.send(0, &frame.Hello{Version: frame.Version, Service: "svc", Role: "primary"})
		}, "got Hello"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			store := openStore(t)
			p := newRaw(t, store, tc.lim)
			p.hello("svc")
			p.sendEpoch(1, 0, fx1)
			p.expect(frame.TypeAck)
			tc.run(p)
			log := p.closed()
			lines := strings.Split(strings.TrimSpace(log), "\n")
			last := lines[len(lines)-1]
			if !strings.Contains(last, "closing connection") || !strings.Contains(last, tc.want) {
				t.Errorf("last log line %q does not say %q", last, tc.want)
			}
			if got := storeEpochs(t, store, "svc"); !slices.Equal(got, []uint64{1}) {
				t.Errorf("epochs %v, want [1]", got)
			}
			if got := store.LastCommitted("svc"); got != 1 {
				t.Errorf("last committed %d", got)
			}
			ents, _ := os.ReadDir(filepath.Join(store.Root(), "svc", epochsDir))
			if len(ents) != 1 {
				t.Errorf("epochs dir holds %d entries, want 1", len(ents))
			}
		})
	}
}

// A service name that could leave the root is refused before anything is created.
func TestBadServiceName(t *testing.T) {
	for _, name := range []string{"", ".", "..", "a/b", "../x", "a b", strings.Repeat("x", 200)} {
		if svcname.Check(name) == nil {
			t.Errorf("%q accepted", name)
		}
	}
	for _, name := range []string{"redis", "counter.rb", "a_b-C.9"} {
		if err := svcname.Check(name); err != nil {
			t.Errorf("%q refused: %v", name, err)
		}
	}
	store := openStore(t)
	p := newRaw(t, store, frame.Limits{})
	p.send(0, &frame.Hello{Version: frame.Version, Service: "../evil", Role: "primary"})
	if log := p.closed(); !strings.Contains(log, "invalid service name") {
		t.Errorf("log: %s", log)
	}
	ents, _ := os.ReadDir(store.Root())
	if len(ents) != 0 {
		t.Errorf("root holds %d entries", len(ents))
	}
}

// An epoch on its way in shows in Status with the bytes so far, and one that takes
// long is reported in the log while it arrives and once it is in.
func TestReceivingProgress(t *testing.T) {
	p := newRaw(t, openStore(t), frame.Limits{}, func(c *Config) { c.ProgressEvery = time.Nanosecond })
	p.hello("svc")
	fx := makeFixture(t, 1, map[string][]byte{"a.img": bytes.Repeat([]byte{1}, 1<<20), "b.img": bytes.Repeat([]byte{2}, 1<<20)})
	p.send(1, &frame.EpochBegin{Full: true, Files: 2})
	p.send(1, &frame.ImageData{Name: "a.img", Data: fx.files["a.img"], Last: true})
	deadline := time.Now().Add(5 * time.Second)
	var rx *progress.Transfer
	for rx == nil || rx.Done < 1<<20 {
		if time.Now().After(deadline) {
			t.Fatalf("Status shows no epoch on its way in: %+v", rx)
		}
		time.Sleep(5 * time.Millisecond)
		rx = p.srv.Status()["svc"].Receiving
	}
	if rx.Epoch != 1 || !rx.Full {
		t.Errorf("receiving %+v, want the full epoch 1", rx)
	}
	p.send(1, &frame.ImageData{Name: "b.img", Data: fx.files["b.img"], Last: true})
	p.send(1, &frame.EpochCommit{Manifest: fx.manifest})
	p.expect(frame.TypeAck)
	if rx := p.srv.Status()["svc"].Receiving; rx != nil {
		t.Errorf("still receiving after the ack: %+v", rx)
	}
	// A connection that ends mid-epoch leaves nothing on its way in.
	p.send(2, &frame.EpochBegin{Full: true, Files: 2})
	p.send(2, &frame.ImageData{Name: "a.img", Data: fx.files["a.img"], Last: true})
	p.c.Close()
	p.closed()
	if rx := p.srv.Status()["svc"].Receiving; rx != nil {
		t.Errorf("still receiving after the connection ended: %+v", rx)
	}
	log := p.log.String()
	if !strings.Contains(log, `msg="standby: receiving"`) || !strings.Contains(log, `msg="standby: epoch received"`) || !strings.Contains(log, "epoch 1 (full): 2.0 MiB") {
		t.Errorf("no progress in the log:\n%s", log)
	}
}

// rawIdentity is what a raw peer's certificate would say: a primary of any service.
var rawIdentity = auth.Identity{Name: "raw", Roles: []string{auth.RolePrimary}, Services: []string{auth.AnyService}}

// A primary that asks for them (FeatureAckPhases) gets the commit's phases in its
// Acks; one that does not, an older one, gets the plain 8-byte Ack it can read.
func TestAckCarriesPhasesOnlyWhenAsked(t *testing.T) {
	for _, asks := range []bool{false, true} {
		store := openStore(t)
		p := newRaw(t, store, frame.Limits{})
		h := &frame.Hello{Version: frame.Version, Service: "svc", Host: "raw", Role: "primary"}
		if asks {
			h.Features = []string{frame.FeatureAckPhases}
		}
		p.send(0, h)
		p.expect(frame.TypeHello)
		fx1 := makeFixture(t, 1, map[string][]byte{"a.img": bytes.Repeat([]byte{1}, 64<<10), "b.img": []byte("bee")})
		p.sendEpoch(1, 0, fx1)
		p.expect(frame.TypeAck)
		fx2 := makeFixture(t, 2, map[string][]byte{"a.img": bytes.Repeat([]byte{2}, 64<<10), "b.img": []byte("bee")})
		p.sendEpoch(2, 1, fx2, "a.img")
		f := p.expect(frame.TypeAck)
		var a frame.Ack
		if err := a.UnmarshalBinary(f.Payload); err != nil || a.Epoch != 2 {
			t.Fatalf("ack %+v, %v", a, err)
		}
		switch {
		case !asks && (a.Phases != nil || len(f.Payload) != 8):
			t.Fatalf("a primary that did not ask got %d bytes, phases %+v", len(f.Payload), a.Phases)
		case asks && a.Phases == nil:
			t.Fatal("a primary that asked got no phases")
		case asks && (a.Phases.VerifyNs == 0 || a.Phases.DurableNs == 0):
			t.Fatalf("phases %+v: verify and durable took no time at all", *a.Phases)
		}
	}
}

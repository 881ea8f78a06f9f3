package standby_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/ship"
	"github.com/ftrun/ftrun/transport/standby"
)

// Three epochs: a full set, then two deltas; the standby ends up with the newest two,
// byte-identical to the primary's, verified and private.
func TestShipThreeEpochs(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	root := filepath.Join(t.TempDir(), "root")
	srv := startServer(t, root, c)
	p := newPrimary(t, "redis")
	p.dial(t, srv.addr, c.primary.Client())

	files := map[string][]byte{
		"core-1.img":  pattern(3000, 1),
		"mm-1.img":    pattern(100, 2),
		"pages-1.img": pattern(300<<10, 3),
		"empty.img":   {},
	}
	dirs := map[uint64]string{}
	var stats []ship.Stats
	for epoch := uint64(1); epoch <= 3; epoch++ {
		switch epoch {
		case 2:
			files["pages-1.img"] = pattern(300<<10, 4)
		case 3:
			files["core-1.img"] = pattern(2000, 5)
			files["files.img"] = pattern(10, 6)
		}
		dirs[epoch] = p.commit(t, epoch, files)
		if err := p.shipSet(t, epoch, dirs[epoch]); err != nil {
			t.Fatalf("epoch %d: %v", epoch, err)
		}
		stats = append(stats, p.ship.LastStats())
		if got := srv.store.LastCommitted("redis"); got != epoch {
			t.Fatalf("standby's last committed is %d after shipping %d", got, epoch)
		}
		sameSet(t, dirs[epoch], setDir(t, srv.store, "redis", epoch))
	}
	if got := epochs(t, srv.store, "redis"); !slices.Equal(got, []uint64{3, 2}) {
		t.Errorf("standby keeps epochs %v, want [3 2]", got)
	}
	sameSet(t, dirs[2], setDir(t, srv.store, "redis", 2))
	if !stats[0].Full || stats[1].Full || stats[2].Full {
		t.Errorf("full/delta: %+v, want full then two deltas", stats)
	}
	// Epoch 3 changed only the small files: the delta carries a fraction of the set.
	if stats[2].Bytes*10 > stats[0].Bytes {
		t.Errorf("delta of epoch 3 sent %d bytes, the full set %d", stats[2].Bytes, stats[0].Bytes)
	}
	if p.ship.Acked() != 3 {
		t.Errorf("shipper acked %d", p.ship.Acked())
	}

	// Heartbeats both ways: the standby answers with its committed epoch.
	if err := p.ship.Heartbeat(context.Background()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.ship.StandbyCommitted() != 3 || p.ship.LastHeard().IsZero() {
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat answer: standby committed %d", p.ship.StandbyCommitted())
		}
		time.Sleep(5 * time.Millisecond)
	}
	st := srv.Status()["redis"]
	if st.LastCommitted != 3 || st.BytesReceived < uint64(stats[0].Bytes) || st.LastHeard.IsZero() || st.Connections != 1 {
		t.Errorf("status %+v", st)
	}
	if srv.LastHeard("redis").IsZero() || !srv.LastHeard("nobody").IsZero() {
		t.Errorf("LastHeard: redis %v, nobody %v", srv.LastHeard("redis"), srv.LastHeard("nobody"))
	}
}

// A restarted standby reloads what it committed; the shipper reconnects and goes on
// with deltas. A standby that lost its newest epoch gets a full set instead of a
// delta against a base it lacks, both when the loss shows at reconnect (Hello) and
// when it shows only once a delta arrives (ResyncRequest).
func TestRestartReloadsAndResyncs(t *testing.T) {
	c, root, srv, p := connectedPrimary(t)
	files := map[string][]byte{"a.img": pattern(5000, 1), "b.img": pattern(7000, 2)}
	ship1 := func(epoch uint64, wantFull bool) string {
		t.Helper()
		files["a.img"] = pattern(5000, byte(epoch))
		dir := p.commit(t, epoch, files)
		if err := p.shipSet(t, epoch, dir); err != nil {
			t.Fatalf("epoch %d: %v", epoch, err)
		}
		if st := p.ship.LastStats(); st.Full != wantFull {
			t.Fatalf("epoch %d sent full=%v, want %v", epoch, st.Full, wantFull)
		}
		sameSet(t, dir, setDir(t, srv.store, "svc", epoch))
		return dir
	}
	ship1(1, true)
	ship1(2, false)

	// Restart: a new Server on the same root reloads epoch 2; deltas continue.
	p.ship.Close()
	srv.stop()
	srv = startServer(t, root, c)
	if got := srv.store.LastCommitted("svc"); got != 2 {
		t.Fatalf("restarted standby reloaded epoch %d, want 2", got)
	}
	p.dial(t, srv.addr, c.primary.Client())
	ship1(3, false)

	// Lost while down: the Hello shows it, the next epoch goes full.
	p.ship.Close()
	srv.stop()
	if err := os.RemoveAll(setDir(t, srv.store, "svc", 3)); err != nil {
		t.Fatal(err)
	}
	srv = startServer(t, root, c)
	if got := srv.store.LastCommitted("svc"); got != 2 {
		t.Fatalf("standby reloaded epoch %d, want 2", got)
	}
	p.dial(t, srv.addr, c.primary.Client())
	ship1(4, true)
	ship1(5, false)

	// Lost while connected: the delta's base fails its check, the standby asks for a
	// resync and commits nothing from the wrong base; the next epoch is full.
	if err := os.Remove(filepath.Join(setDir(t, srv.store, "svc", 5), "b.img")); err != nil {
		t.Fatal(err)
	}
	dir6 := p.commit(t, 6, files)
	err := p.shipSet(t, 6, dir6)
	if !errors.Is(err, ship.ErrResync) {
		t.Fatalf("delta against a damaged base: %v, want ErrResync", err)
	}
	srv.log.waitFor(t, "code=BadBase")
	if d := setDir(t, srv.store, "svc", 6); d != "" {
		t.Fatalf("epoch 6 committed from a damaged base")
	}
	ship1(7, true)
	if got := epochs(t, srv.store, "svc"); !slices.Equal(got, []uint64{7, 5}) {
		t.Errorf("epochs %v, want [7 5]", got)
	}

	// Damaged while the standby was down: it reloads epoch 7 as its newest, which
	// matches what the primary acked, so a delta comes; the base fails its check at
	// EpochBegin and the standby asks for a full epoch before any image arrives.
	p.ship.Close()
	srv.stop()
	if err := os.WriteFile(filepath.Join(setDir(t, srv.store, "svc", 7), "b.img"), []byte("rot"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv = startServer(t, root, c)
	p.dial(t, srv.addr, c.primary.Client())
	dir8 := p.commit(t, 8, files)
	if err := p.shipSet(t, 8, dir8); !errors.Is(err, ship.ErrResync) {
		t.Fatalf("delta against a rotten base: %v, want ErrResync", err)
	}
	if p.ship.LastStats().Full {
		t.Fatalf("epoch 8 was expected to go as a delta")
	}
	srv.log.waitFor(t, "asking for a full one")
	srv.log.waitFor(t, "does not verify")
	if d := setDir(t, srv.store, "svc", 8); d != "" {
		t.Fatalf("epoch 8 committed from a rotten base")
	}
	ship1(9, true)
}

// A proxy that flips one byte of the primary's stream: TLS refuses the record, the
// standby logs why and drops the connection, and what it committed stays as it was.
func TestCorruptedWire(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	root := filepath.Join(t.TempDir(), "root")
	srv := startServer(t, root, c)

	p := newPrimary(t, "svc")
	p.dial(t, srv.addr, c.primary.Client())
	files := map[string][]byte{"a.img": pattern(200<<10, 1)}
	dir1 := p.commit(t, 1, files)
	if err := p.shipSet(t, 1, dir1); err != nil {
		t.Fatal(err)
	}
	p.ship.Close()

	prx := startProxy(t, srv.addr, 64<<10) // well inside epoch 2's image data
	p.dial(t, prx, c.primary.Client())
	files["a.img"] = pattern(200<<10, 2)
	dir2 := p.commit(t, 2, files)
	err := p.shipSet(t, 2, dir2)
	if err == nil || !errors.Is(err, ship.ErrNotConnected) {
		t.Fatalf("ship over a corrupting link: %v, want a lost connection", err)
	}
	srv.log.waitFor(t, "closing connection")
	srv.log.waitFor(t, "bad record MAC")
	assertOnlyEpoch1(t, srv.store, root, dir1)
}

// startProxy forwards to addr, flipping the byte at offset flipAt of the
// client-to-server stream. It lives until the test ends.
func startProxy(t *testing.T, addr string, flipAt int) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			a, err := ln.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", addr)
			if err != nil {
				a.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, a, b)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer b.Close()
				buf := make([]byte, 4096)
				off := 0
				for {
					n, err := a.Read(buf)
					if n > 0 {
						if flipAt >= off && flipAt < off+n {
							buf[flipAt-off] ^= 0x40
						}
						off += n
						if _, werr := b.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			go func() {
				defer wg.Done()
				defer a.Close()
				io.Copy(a, b)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// assertNoPending checks that no unfinished epoch directory was left behind.
func assertNoPending(t *testing.T, root, service string) {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(root, service, "epochs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name()[0] == '.' {
			t.Errorf("pending directory %s left behind", e.Name())
		}
	}
}

// A manifest that does not match the files sent (the primary's image was truncated
// after it was committed): Nack corrupt, resync, nothing committed.
func TestManifestMismatch(t *testing.T) {
	_, root, srv, p := connectedPrimary(t)

	dir1 := p.commit(t, 1, map[string][]byte{"a.img": pattern(4000, 1), "b.img": pattern(9000, 2)})
	if err := p.shipSet(t, 1, dir1); err != nil {
		t.Fatal(err)
	}
	dir2 := p.commit(t, 2, map[string][]byte{"a.img": pattern(4000, 3), "b.img": pattern(9000, 4)})
	if err := os.Truncate(filepath.Join(dir2, "b.img"), 5000); err != nil {
		t.Fatal(err)
	}
	err := p.shipSet(t, 2, dir2)
	if !errors.Is(err, ship.ErrResync) {
		t.Fatalf("truncated image: %v, want ErrResync", err)
	}
	srv.log.waitFor(t, "Corrupt")
	assertOnlyEpoch1(t, srv.store, root, dir1)

	// The connection stays usable and the next epoch is sent whole.
	dir3 := p.commit(t, 3, map[string][]byte{"a.img": pattern(4000, 5), "b.img": pattern(9000, 6)})
	if err := p.shipSet(t, 3, dir3); err != nil {
		t.Fatal(err)
	}
	if !p.ship.LastStats().Full {
		t.Errorf("epoch after a resync was not full")
	}
	sameSet(t, dir3, setDir(t, srv.store, "svc", 3))
}

// A client whose certificate comes from another CA never gets past TLS.
func TestWrongCA(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	root := filepath.Join(t.TempDir(), "root")
	srv := startServer(t, root, c)
	other := keygen(t, filepath.Join(t.TempDir(), "other"), "intruder")
	// The intruder trusts the standby's CA (it only lacks a certificate from it).
	tc := other.Client()
	tc.RootCAs = c.primary.Client().RootCAs
	// Present it even though the standby's CA list does not name its issuer (Go's
	// client would otherwise send none): the test is about a forged identity.
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tc.Certificates[0], nil
	}

	p := newPrimary(t, "svc")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.ship.Dial(ctx, srv.addr, tc)
	if err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
	t.Logf("dial: %v", err)
	srv.log.waitFor(t, "TLS handshake failed")
	srv.log.waitFor(t, "unknown authority")
	if got := srv.store.Services(); len(got) != 0 {
		t.Errorf("services %v after a refused client", got)
	}
	if _, err := os.Stat(filepath.Join(root, "svc")); !os.IsNotExist(err) {
		t.Errorf("refused client created a service dir: %v", err)
	}
}

// A standby whose disk is full nacks DiskFull; the epoch before stays intact and the
// pending directory is gone.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	noLeaks(t)
	c := newCreds(t)
	mnt := t.TempDir()
	if out, err := runCmd("mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", mnt); err != nil {
		t.Skipf("cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := runCmd("umount", mnt); err != nil {
			t.Errorf("umount: %v %s", err, out)
		}
	})
	root := filepath.Join(mnt, "root")
	srv := startServer(t, root, c)
	p := newPrimary(t, "svc")
	p.dial(t, srv.addr, c.primary.Client())

	dir1 := p.commit(t, 1, map[string][]byte{"a.img": pattern(100<<10, 1)})
	if err := p.shipSet(t, 1, dir1); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 4<<20)
	rand.Read(big)
	dir2 := p.commit(t, 2, map[string][]byte{"a.img": pattern(100<<10, 2), "pages-1.img": big})
	err := p.shipSet(t, 2, dir2)
	if !errors.Is(err, ship.ErrStandbyFull) {
		t.Fatalf("4 MB onto 2 MB: %v, want ErrStandbyFull", err)
	}
	srv.log.waitFor(t, "DiskFull")
	assertOnlyEpoch1(t, srv.store, root, dir1)

	// The standby still holds epoch 1, so the next (small) epoch may be a delta.
	dir3 := p.commit(t, 3, map[string][]byte{"a.img": pattern(100<<10, 3)})
	if err := p.shipSet(t, 3, dir3); err != nil {
		t.Fatal(err)
	}
	if p.ship.LastStats().Full {
		t.Errorf("epoch after a full disk was sent whole; the base was still there")
	}
	sameSet(t, dir3, setDir(t, srv.store, "svc", 3))
	p.ship.Close()
	srv.stop()
}

// Three primaries at once, each its own service: each gets its own directory and
// exactly its own epochs.
func TestThreePrimaries(t *testing.T) {
	noLeaks(t)
	c := newCreds(t)
	root := filepath.Join(t.TempDir(), "root")
	srv := startServer(t, root, c)
	services := []string{"redis", "memcached", "counter.rb"}
	type result struct {
		dirs map[uint64]string
		err  error
	}
	results := make([]result, len(services))
	prims := make([]*primary, len(services))
	for i, name := range services {
		prims[i] = newPrimary(t, name)
		prims[i].dial(t, srv.addr, c.primary.Client())
	}
	var wg sync.WaitGroup
	for i, name := range services {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := prims[i]
			res := result{dirs: map[uint64]string{}}
			defer func() { results[i] = res }()
			for epoch := uint64(1); epoch <= 4; epoch++ {
				files := map[string][]byte{
					"core.img":  []byte(fmt.Sprintf("%s epoch %d", name, epoch)),
					"pages.img": pattern(100<<10, byte(i)),
				}
				pd, err := p.store.Begin(epoch)
				if err != nil {
					res.err = err
					return
				}
				for n, d := range files {
					os.WriteFile(filepath.Join(pd.Dir, n), d, 0o600)
				}
				set, err := pd.Commit(&checkpoint.Manifest{Service: name})
				if err != nil {
					res.err = err
					return
				}
				res.dirs[epoch] = set.Dir
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				err = p.ship.Ship(ctx, epoch, set.Dir)
				cancel()
				if err != nil {
					res.err = fmt.Errorf("%s epoch %d: %w", name, epoch, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	for i, name := range services {
		if results[i].err != nil {
			t.Fatal(results[i].err)
		}
		if got := epochs(t, srv.store, name); !slices.Equal(got, []uint64{4, 3}) {
			t.Errorf("%s: epochs %v, want [4 3]", name, got)
		}
		for _, e := range []uint64{3, 4} {
			d := setDir(t, srv.store, name, e)
			sameSet(t, results[i].dirs[e], d)
			core, _ := os.ReadFile(filepath.Join(d, "core.img"))
			if want := fmt.Sprintf("%s epoch %d", name, e); !bytes.Equal(core, []byte(want)) {
				t.Errorf("%s epoch %d holds %q", name, e, core)
			}
		}
	}
	if got := srv.store.Services(); !slices.Equal(got, []string{"counter.rb", "memcached", "redis"}) {
		t.Errorf("services %v", got)
	}
}

// A Ship whose context is cancelled drops its connection (a half-sent epoch is never
// continued); the standby commits nothing, and after a new Dial shipping goes on.
func TestShipCancelled(t *testing.T) {
	c, _, srv, p := connectedPrimary(t)
	dir1 := p.commit(t, 1, map[string][]byte{"a.img": pattern(1<<20, 1)})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.ship.Ship(ctx, 1, dir1); !errors.Is(err, context.Canceled) || !errors.Is(err, ship.ErrNotConnected) {
		t.Fatalf("cancelled Ship: %v", err)
	}
	if err := p.ship.Heartbeat(context.Background()); !errors.Is(err, ship.ErrNotConnected) {
		t.Fatalf("heartbeat on a dropped link: %v", err)
	}
	if got := epochs(t, srv.store, "svc"); len(got) != 0 {
		t.Fatalf("epochs %v after a cancelled Ship", got)
	}
	p.dial(t, srv.addr, c.primary.Client())
	dir2 := p.commit(t, 2, map[string][]byte{"a.img": pattern(1<<20, 2)})
	if err := p.shipSet(t, 2, dir2); err != nil {
		t.Fatal(err)
	}
	sameSet(t, dir2, setDir(t, srv.store, "svc", 2))
}

// assertOnlyEpoch1 checks that the standby still holds exactly epoch 1 of "svc", byte
// for byte as the primary had it, and no half-written epoch.
func assertOnlyEpoch1(t *testing.T, store *standby.Store, root, dir1 string) {
	t.Helper()
	if got := epochs(t, store, "svc"); !slices.Equal(got, []uint64{1}) {
		t.Fatalf("epochs %v, want only [1]", got)
	}
	assertNoPending(t, root, "svc")
	sameSet(t, dir1, setDir(t, store, "svc", 1))
}

// The Shipper learns the standby's commit phases from its Ack and records where the
// epoch's time went on its own side, in order.
func TestShipStatsCarryPhases(t *testing.T) {
	_, _, _, p := connectedPrimary(t)
	for e := uint64(1); e <= 2; e++ {
		if err := p.shipSet(t, e, p.commit(t, e, map[string][]byte{"a.img": pattern(100<<10, byte(e))})); err != nil {
			t.Fatal(err)
		}
		st := p.ship.LastStats()
		if st.Standby == nil || st.Standby.VerifyNs == 0 {
			t.Fatalf("epoch %d: standby phases %+v", e, st.Standby)
		}
		marks := []time.Time{st.Started, st.Diffed, st.Sent, st.Answered}
		for i := 1; i < len(marks); i++ {
			if marks[i].IsZero() || marks[i].Before(marks[i-1]) {
				t.Fatalf("epoch %d: marks out of order: %v", e, marks)
			}
		}
	}
}

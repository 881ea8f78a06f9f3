package standby_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/ship"
	"github.com/ftrun/ftrun/transport/standby"
)

// noLeaks fails the test if goroutines started during it are still running once
// every other cleanup has run. Register it first so that its cleanup runs last.
func noLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	t.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > before {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				n := runtime.Stack(buf, true)
				t.Errorf("goroutines leaked: %d before, %d after\n%s", before, runtime.NumGoroutine(), buf[:n])
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// creds holds one deployment's credentials: a standby and a primary from one CA.
type creds struct {
	standby, primary *auth.Config
	// caDir holds the CA's certificate and key.
	caDir string
}

// copyCAFiles gives dst the CA of c, to issue another certificate there.
func copyCAFiles(t testing.TB, c creds, dst string) {
	t.Helper()
	if err := os.MkdirAll(dst, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{auth.CACertFile, auth.CAKeyFile} {
		data, err := os.ReadFile(filepath.Join(c.caDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// keygen issues a certificate with both roles, for any service.
func keygen(t testing.TB, dir, name string) *auth.Config {
	t.Helper()
	return keygenWith(t, dir, auth.KeygenOptions{Name: name, Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}})
}

func keygenWith(t testing.TB, dir string, opts auth.KeygenOptions) *auth.Config {
	t.Helper()
	if err := auth.Keygen(dir, opts); err != nil {
		t.Fatal(err)
	}
	c, err := auth.LoadConfig(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newCreds(t testing.TB) creds {
	t.Helper()
	base := t.TempDir()
	sb := filepath.Join(base, "standby")
	c := creds{standby: keygenWith(t, sb, auth.KeygenOptions{Name: "standby", Roles: []string{auth.RoleStandby}}), caDir: sb}
	pr := filepath.Join(base, "primary")
	if err := os.MkdirAll(pr, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{auth.CACertFile, auth.CAKeyFile} {
		data, err := os.ReadFile(filepath.Join(sb, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(pr, f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c.primary = keygenWith(t, pr, auth.KeygenOptions{Name: "primary", Roles: []string{auth.RolePrimary}, Services: []string{auth.AnyService}})
	return c
}

// logBuf is the package's LogBuf, with a wait.
type logBuf struct{ standby.LogBuf }

func (b *logBuf) waitFor(t *testing.T, sub string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(b.String(), sub) {
		if time.Now().After(deadline) {
			t.Fatalf("log never said %q; log:\n%s", sub, b.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

type server struct {
	*standby.Server
	store *standby.Store
	addr  string
	log   *logBuf
	stop  func()
}

// startServer runs a standby on 127.0.0.1:0 over the store at root until the test
// ends (or stop is called), and checks that Serve returns.
func startServer(t testing.TB, root string, c creds) *server {
	t.Helper()
	return startServerWith(t, root, c, nil)
}

// startServerWith is startServer with setup run on the store before it serves.
func startServerWith(t testing.TB, root string, c creds, setup func(*standby.Store)) *server {
	t.Helper()
	store, err := standby.OpenStore(root)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(store)
	}
	lb := &logBuf{}
	srv, err := standby.NewServer(standby.Config{
		Store:  store,
		TLS:    c.standby.Server(),
		Host:   "standby-host",
		Logger: slog.New(slog.NewTextHandler(io.MultiWriter(lb, testWriter{t}), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Serve did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return &server{Server: srv, store: store, addr: ln.Addr().String(), log: lb, stop: stop}
}

// testWriter sends log lines to t.Log until the test ends.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// primary is a primary's local image sets plus its shipper.
type primary struct {
	service string
	store   *checkpoint.Store
	ship    *ship.Shipper
}

func newPrimary(t testing.TB, service string) *primary {
	t.Helper()
	st, err := checkpoint.OpenStore(filepath.Join(t.TempDir(), "checkpoints"))
	if err != nil {
		t.Fatal(err)
	}
	st.NoSync = true
	p := &primary{service: service, store: st, ship: ship.New(ship.Config{Service: service, Host: "primary-host", ChunkSize: 64 << 10,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})}
	t.Cleanup(func() { p.ship.Close() })
	return p
}

func (p *primary) dial(t testing.TB, addr string, tc *tls.Config) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.ship.Dial(ctx, addr, tc); err != nil {
		t.Fatal(err)
	}
}

// connectedPrimary is the usual start of a test: a standby over a fresh store, and a
// primary of service "svc" connected to it; goroutine leaks fail the test.
func connectedPrimary(t *testing.T) (c creds, root string, srv *server, p *primary) {
	t.Helper()
	noLeaks(t)
	c = newCreds(t)
	root = filepath.Join(t.TempDir(), "root")
	srv = startServer(t, root, c)
	p = newPrimary(t, "svc")
	p.dial(t, srv.addr, c.primary.Client())
	return c, root, srv, p
}

// commit writes files as epoch's image set, committed the way the supervisor does.
func (p *primary) commit(t testing.TB, epoch uint64, files map[string][]byte) string {
	t.Helper()
	pd, err := p.store.Begin(epoch)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(pd.Dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set, err := pd.Commit(&checkpoint.Manifest{Service: p.service, Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	return set.Dir
}

func (p *primary) shipSet(t testing.TB, epoch uint64, dir string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.ship.Ship(ctx, epoch, dir)
}

// setDir is the standby's committed copy of epoch, "" if it has none.
func setDir(t testing.TB, s *standby.Store, service string, epoch uint64) string {
	t.Helper()
	sets, err := s.Sets(service)
	if err != nil {
		t.Fatal(err)
	}
	for _, set := range sets {
		if set.Epoch == epoch {
			return set.Dir
		}
	}
	return ""
}

func epochs(t testing.TB, s *standby.Store, service string) []uint64 {
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

// sameSet checks that the standby's copy holds exactly the primary's image files,
// byte for byte, verifies, and is private (dirs 0700, files 0600).
func sameSet(t testing.TB, primaryDir, standbyDir string) {
	t.Helper()
	if standbyDir == "" {
		t.Fatalf("standby has no copy of %s", primaryDir)
	}
	if _, err := checkpoint.VerifyDir(standbyDir); err != nil {
		t.Fatalf("standby copy does not verify: %v", err)
	}
	want, err := checkpoint.ReadManifest(primaryDir)
	if err != nil {
		t.Fatal(err)
	}
	got, err := checkpoint.ReadManifest(standbyDir)
	if err != nil {
		t.Fatal(err)
	}
	if got.Epoch != want.Epoch || len(got.Files) != len(want.Files) {
		t.Fatalf("manifest: got epoch %d with %d files, want epoch %d with %d", got.Epoch, len(got.Files), want.Epoch, len(want.Files))
	}
	ents, err := os.ReadDir(standbyDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != len(want.Files)+1 {
		t.Errorf("standby set has %d entries, want %d files and the manifest", len(ents), len(want.Files))
	}
	for _, f := range want.Files {
		a, err := os.ReadFile(filepath.Join(primaryDir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(standbyDir, f.Name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs: %d bytes on the primary, %d on the standby", f.Name, len(a), len(b))
		}
	}
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", e.Name(), fi.Mode().Perm())
		}
	}
	for dir := standbyDir; ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o700 {
			t.Errorf("%s has mode %v, want 0700", dir, fi.Mode().Perm())
		}
		if filepath.Base(dir) == "root" || dir == "/" {
			break
		}
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

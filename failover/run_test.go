package failover

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/ship"
)

// The loop end to end over real TLS on loopback: a primary ships an epoch and falls
// silent; the loop hands that epoch to GoLive once; the primary, back, is refused
// (ErrPeerLive) and the live copy is asked to announce its address again; status says
// live; Run returns once its context ends.
func TestRunHandsOverSilentPrimary(t *testing.T) {
	keys := t.TempDir()
	if err := auth.Keygen(keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		t.Fatal(err)
	}
	ac, err := auth.LoadConfig(keys)
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "standby")
	handoffs := make(chan Handoff, 4)
	announced := make(chan struct{}, 4)
	ready := make(chan string, 1)
	var status func() []StandbyStatus
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{Listen: "127.0.0.1:0", StateDir: root, TLS: ac.Server(), Host: "standby", Timeout: 300 * time.Millisecond,
			Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: ready, ControlSocket: "-",
			OnStatus: func(f func() []StandbyStatus) { status = f },
			GoLive: func(h Handoff) (Live, error) {
				handoffs <- h
				return Live{Announce: func() { announced <- struct{}{} }}, nil
			}})
	}()
	addr := <-ready

	store, err := checkpoint.OpenStore(filepath.Join(t.TempDir(), "checkpoints"))
	if err != nil {
		t.Fatal(err)
	}
	store.NoSync = true
	pd, err := store.Begin(1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pd.Dir, "core-1.img"), []byte("core"), 0o600); err != nil {
		t.Fatal(err)
	}
	set, err := pd.Commit(&checkpoint.Manifest{Service: "svc", Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	dial := func() (*ship.Shipper, error) {
		sh := ship.New(ship.Config{Service: "svc", Host: "primary", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer dcancel()
		return sh, sh.Dial(dctx, addr, ac.Client())
	}
	sh, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := sh.Ship(sctx, 1, set.Dir); err != nil {
		t.Fatal(err)
	}
	scancel()
	sh.Close() // the primary falls silent

	select {
	case h := <-handoffs:
		if h.Service != "svc" || h.Set.Epoch != 1 || h.LiveDir != filepath.Join(root, "svc", "live") {
			t.Fatalf("handoff %+v", h)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no take-over of the silent primary")
	}
	sh, err = dial()
	sh.Close()
	if !errors.Is(err, ship.ErrPeerLive) {
		t.Fatalf("the old primary dialing again: %v, want ErrPeerLive", err)
	}
	select {
	case <-announced:
	case <-time.After(5 * time.Second):
		t.Fatal("refusing the old primary did not announce the live copy")
	}
	if ss := status(); len(ss) != 1 || ss[0].Role != "live" {
		t.Fatalf("status %+v, want svc live", ss)
	}
	select {
	case h := <-handoffs:
		t.Fatalf("a second take-over: %+v", h)
	case <-time.After(500 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

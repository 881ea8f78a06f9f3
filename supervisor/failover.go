package supervisor

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftrun/ftrun/arbiter"
	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor/netplace"
	"github.com/ftrun/ftrun/transport/standby"
	"github.com/ftrun/ftrun/watchdog"
)

// takeoverCheck is how often a standby looks for silent primaries.
const takeoverCheck = 10 * time.Millisecond

// StandbyConfig is everything `ftrun standby` was told.
type StandbyConfig struct {
	Listen   string
	StateDir string
	TLS      *tls.Config
	Host     string
	// Timeout is how long a primary may be silent before the standby takes over.
	Timeout time.Duration
	// Interval is the checkpoint interval of a program the standby runs after taking over.
	Interval time.Duration
	Criu     *checkpoint.Criu
	Clock    clockwork.Clock
	Log      *slog.Logger
	// Ready, when set, receives the listening address once accepting.
	Ready chan<- string
	// Arbiter, when set, must hand this standby a service's key before it goes live.
	Arbiter arbiter.Arbiter
	// Bridge is this host's bridge on the clients' network, for programs that ran in a
	// network namespace of their own (--net) on their primary.
	Bridge string
	// MetricsAddr serves Prometheus metrics per service at /metrics ("" for none).
	MetricsAddr string
	// Peer is where a program this standby took over streams its epochs to (the old
	// primary's host, whose `ftrun run` serves as its standby once back); PeerTLS the
	// client side of the mutual TLS. "" leaves a live copy with local checkpoints only.
	Peer    string
	PeerTLS *tls.Config
	// Only, when set, is the one service this standby holds (a `ftrun run` serving as
	// the standby of its service's live copy elsewhere); primaries of others are
	// still received but never taken over.
	Only string
	// GoLive, when set, is handed the set to restore instead of a supervisor of its own
	// being started here; it owns lease from then on.
	// It returns what announces the service address again (see Supervisor.Reannounce).
	GoLive func(svc string, set checkpoint.Set, lease arbiter.Lease) (announce func(), err error)
	// OnStatus, when set, receives the function that reports what the standby holds.
	OnStatus func(func() []StandbyStatus)
	// ControlSocket answers `ftrun status` ("" for STATE_DIR/control.sock, "-" for none).
	ControlSocket string
}

// TakeOver is the pure failover rule (arbiter "none": the standby decides alone; a
// partition that leaves the primary alive can then give two live copies, which is the
// documented risk of running without an arbiter). A standby only takes over a service
// whose primary it has heard from since it started, that has a committed epoch, and
// whose primary has now been silent for longer than the timeout.
func TakeOver(now, lastHeard time.Time, timeout time.Duration, committed uint64, live bool) (bool, string) {
	switch {
	case live:
		return false, "already live"
	case committed == 0:
		return false, "no committed epoch"
	case lastHeard.IsZero():
		return false, "primary not heard since this standby started"
	}
	d := watchdog.NewDetector(timeout, lastHeard)
	if !d.Expired(now) {
		return false, "primary alive"
	}
	return true, fmt.Sprintf("primary silent for %s (timeout %s)", d.Silence(now).Round(time.Millisecond), timeout)
}

// RunStandby holds every primary's newest committed epoch and, when a primary goes
// silent, restores its epoch here and supervises the program with the same recovery
// ladder as a primary does.
func RunStandby(ctx context.Context, cfg StandbyConfig) error {
	if cfg.Timeout <= 0 {
		cfg.Timeout = HeartbeatTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	store, err := standby.OpenStore(cfg.StateDir)
	if err != nil {
		return err
	}
	var mu sync.Mutex // guards live, problems, failovers and announcers: the loop writes, the control socket and the server read
	announcers := map[string]func(){}
	refused := func(svc string) {
		mu.Lock()
		a := announcers[svc]
		mu.Unlock()
		if a != nil {
			a()
		}
	}
	srv, err := standby.NewServer(standby.Config{Store: store, TLS: cfg.TLS, Host: cfg.Host, Clock: cfg.Clock, Logger: cfg.Log, OnRefused: refused})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", cfg.Listen, err)
	}
	for _, svc := range store.Services() {
		cfg.Log.Info("holding committed epoch", "service", svc, "epoch", store.LastCommitted(svc))
	}
	cfg.Log.Info("standby listening", "addr", ln.Addr().String(), "state_dir", store.Root(), "takeover_after", cfg.Timeout)
	if cfg.Ready != nil {
		cfg.Ready <- ln.Addr().String()
	}

	inner, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var serveErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErr = srv.Serve(inner, ln)
	}()
	live := map[string]bool{}
	problems := map[string][]string{} // what would make a failover fail, per service
	failovers := map[string]int{}
	checked := map[string]bool{}
	errs := make(chan error, 16)
	acquiring := map[string]context.CancelFunc{} // loop-owned
	acquired := make(chan acquiredLease)
	status := func() []StandbyStatus {
		mu.Lock()
		defer mu.Unlock()
		var out []StandbyStatus
		for svc, st := range srv.Status() {
			ss := StandbyStatus{Service: svc, Role: "standby", Epoch: st.LastCommitted, LastHeard: st.LastHeard,
				Connected: st.Connections > 0, BytesReceived: st.BytesReceived, Receiving: st.Receiving}
			if !st.LastHeard.IsZero() {
				ss.Silence = cfg.Clock.Since(st.LastHeard)
			}
			if live[svc] {
				ss.Role, ss.LiveStateDir = "live", filepath.Join(store.Root(), svc, "live")
			}
			ss.Problems = problems[svc]
			out = append(out, ss)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Service < out[j].Service })
		return out
	}
	if cfg.OnStatus != nil {
		cfg.OnStatus(status)
	}
	if cfg.ControlSocket == "" {
		cfg.ControlSocket = filepath.Join(store.Root(), ControlSocket)
	}
	if cfg.ControlSocket != "-" {
		if err := serveStandbyControl(inner, &wg, cfg.ControlSocket, status); err != nil {
			cancel()
			wg.Wait()
			return err
		}
	}
	if cfg.MetricsAddr != "" {
		reg := prometheus.NewRegistry()
		reg.MustRegister(newStandbyCollector(status, func(svc string) int {
			mu.Lock()
			defer mu.Unlock()
			return failovers[svc]
		}))
		addr, err := serveRegistry(inner, &wg, cfg.MetricsAddr, reg)
		if err != nil {
			cancel()
			wg.Wait()
			return err
		}
		cfg.Log.Info("serving metrics", "addr", "http://"+addr+"/metrics")
	}
	// Checked often: the take-over decision itself is cheap, and every tick of delay
	// adds to the failover time a client sees.
	tick := cfg.Clock.NewTicker(takeoverCheck)
	defer tick.Stop()
	startLive := func(svc string, lease arbiter.Lease) {
		// From here on the old primary is refused and its epochs are never acked
		// again: the set chosen next is the last word.
		if err := claim(cfg.Clock, srv, svc); err != nil {
			cfg.Log.Error("cannot take over", "service", svc, "err", err)
			if lease != nil {
				lease.Release()
			}
			return
		}
		if cfg.GoLive != nil {
			sets, err := store.Sets(svc)
			if err == nil && len(sets) == 0 {
				err = errors.New("no committed epoch")
			}
			var announce func()
			if err == nil {
				announce, err = cfg.GoLive(svc, sets[0], lease)
			}
			if err != nil {
				cfg.Log.Error("cannot take over", "service", svc, "err", err)
				if lease != nil {
					lease.Release()
				}
				return
			}
			mu.Lock()
			live[svc] = true
			failovers[svc]++
			announcers[svc] = announce
			mu.Unlock()
			return
		}
		sup, err := goLive(cfg, store, svc, lease)
		if err != nil {
			cfg.Log.Error("cannot take over", "service", svc, "err", err)
			if lease != nil {
				lease.Release()
			}
			return
		}
		mu.Lock()
		live[svc] = true
		failovers[svc]++
		announcers[svc] = sup.Reannounce
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := sup.Run(inner); err != nil {
				var xe *ExitErr
				if !errors.As(err, &xe) || xe.Code != ExitOK {
					select {
					case errs <- fmt.Errorf("%s: %w", svc, err):
					default:
					}
				}
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			cancel()
			wg.Wait()
			return serveErr
		case err := <-errs:
			cfg.Log.Error("live program ended", "err", err)
		case a := <-acquired:
			delete(acquiring, a.svc)
			if a.err != nil {
				cfg.Log.Info("not taking over", "service", a.svc, "why", a.err)
				continue
			}
			cfg.Log.Warn("holding the arbiter's key: going live", "service", a.svc)
			startLive(a.svc, a.lease)
		case <-tick.Chan():
			for svc, st := range srv.Status() {
				if st.LastCommitted > 0 && !checked[svc] {
					checked[svc] = true
					miss := checkRestorable(store, svc, cfg.Bridge)
					mu.Lock()
					problems[svc] = miss
					mu.Unlock()
					if len(miss) > 0 {
						cfg.Log.Error(fmt.Sprintf("service cannot fail over to this host: %s (%d problem(s); `ftrun status` lists them)", miss[0], len(miss)), "service", svc)
					}
				}
				mu.Lock()
				isLive := live[svc]
				mu.Unlock()
				if cfg.Only != "" && svc != cfg.Only {
					continue
				}
				heard := st.LastHeard
				if st.Committing {
					// This standby is busy with the primary's epoch and reads none of its
					// heartbeats meanwhile: that silence is not the primary's.
					heard = cfg.Clock.Now()
				}
				ok, why := TakeOver(cfg.Clock.Now(), heard, cfg.Timeout, st.LastCommitted, isLive)
				if !ok {
					continue
				}
				if cfg.Arbiter == nil {
					cfg.Log.Warn("taking over: "+why, "service", svc, "epoch", st.LastCommitted)
					startLive(svc, nil)
					continue
				}
				if _, busy := acquiring[svc]; busy {
					continue
				}
				cfg.Log.Warn("primary looks gone ("+why+"): asking the arbiter for its key", "service", svc)
				actx, acancel := context.WithCancel(inner)
				acquiring[svc] = acancel
				wg.Add(1)
				go func() {
					defer wg.Done()
					lease, err := cfg.Arbiter.Acquire(actx, svc, cfg.Host)
					select {
					case acquired <- acquiredLease{svc: svc, lease: lease, err: err}:
					case <-inner.Done():
						if lease != nil {
							lease.Release()
						}
					}
				}()
			}
			// A primary heard again keeps its service: stop asking for its key.
			for svc, acancel := range acquiring {
				if st, ok := srv.Status()[svc]; ok {
					if alive, _ := TakeOver(cfg.Clock.Now(), st.LastHeard, cfg.Timeout, st.LastCommitted, false); !alive {
						acancel()
					}
				}
			}
		}
	}
}

// serveStandbyControl answers `ftrun status` on a standby until ctx ends.
func serveStandbyControl(ctx context.Context, wg *sync.WaitGroup, path string, status func() []StandbyStatus) error {
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("control socket %q: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		ln.Close()
		os.Remove(path)
	}()
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			var req Request
			resp := Response{OK: true}
			if err := json.NewDecoder(conn).Decode(&req); err != nil || req.Op != "status" {
				resp = Response{Error: fmt.Sprintf("a standby answers only status (got %q)", req.Op)}
			} else {
				resp.Standby = status()
			}
			_ = json.NewEncoder(conn).Encode(resp)
			conn.Close()
		}
	}()
	return nil
}

// goLive prepares a supervisor that restores svc's newest committed epoch. The epoch
// is linked (not copied) into the live supervisor's own checkpoint store, so the
// standby's copy stays as it was received.
// checkRestorable lists what this host lacks to restore svc's newest epoch: files the
// restore opens by path (binary, libraries) that are missing or differ, so that a
// mismatch shows when the service arrives, not at failover.
func checkRestorable(store *standby.Store, svc, bridge string) []string {
	sets, err := store.Sets(svc)
	if err != nil || len(sets) == 0 {
		return nil
	}
	m, err := checkpoint.ReadManifest(sets[0].Dir)
	if err != nil {
		return []string{err.Error()}
	}
	req, err := checkpoint.RequiredFiles(sets[0].Dir)
	if err != nil {
		return []string{err.Error()}
	}
	miss := checkpoint.MissingFiles(req, m.SyncRoots)
	if m.Net != nil {
		if bridge == "" {
			bridge = netplace.DefaultBridge
		}
		if _, err := net.InterfaceByName(bridge); err != nil {
			miss = append(miss, fmt.Sprintf("the program serves %s from its own network namespace, but this host has no bridge %q: create it on the clients' network, or pass --bridge", m.Net.Addr, bridge))
		}
	}
	return miss
}

// claim marks svc live in srv, waiting out an epoch being committed (which the
// take-over then restores).
func claim(clock clockwork.Clock, srv *standby.Server, svc string) error {
	var err error
	for range 1000 {
		if err = srv.Claim(svc); err == nil {
			return nil
		}
		clock.Sleep(5 * time.Millisecond)
	}
	return err
}

type acquiredLease struct {
	svc   string
	lease arbiter.Lease
	err   error
}

func goLive(cfg StandbyConfig, store *standby.Store, svc string, lease arbiter.Lease) (*Supervisor, error) {
	sets, err := store.Sets(svc)
	if err != nil || len(sets) == 0 {
		return nil, fmt.Errorf("no committed epoch for %q: %v", svc, err)
	}
	set := sets[0]
	// The live supervisor's restore verifies the set; reading it twice would only
	// lengthen the failover.
	m, err := checkpoint.ReadManifest(set.Dir)
	if err != nil {
		return nil, err
	}
	liveDir := filepath.Join(store.Root(), svc, "live")
	// Epochs an earlier live copy here took are stale: the service went on elsewhere
	// since, under the same epoch numbers.
	if err := os.RemoveAll(filepath.Join(liveDir, CheckpointsDir)); err != nil {
		return nil, fmt.Errorf("drop the stale live checkpoints of %q: %w", svc, err)
	}
	target := filepath.Join(liveDir, CheckpointsDir, filepath.Base(set.Dir))
	if err := linkSet(set.Dir, target); err != nil {
		return nil, err
	}
	spec, err := NetSpec(m.Service, m.Net, cfg.Bridge)
	if err != nil {
		return nil, err
	}
	return New(Config{
		Name: m.Service, Command: m.Command, StateDir: liveDir, WorkDir: "/",
		Interval: cfg.Interval, Criu: cfg.Criu, Clock: cfg.Clock, Log: cfg.Log.With("role", "live"),
		Lease: lease, Node: cfg.Host, Sync: m.SyncRoots, Net: spec, Failover: true,
		Standby: cfg.Peer, StandbyTLS: cfg.PeerTLS,
	})
}

func linkSet(from, to string) error {
	if _, err := os.Stat(to); err == nil {
		return nil
	}
	tmp := to + ".linking"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return err
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.Link(filepath.Join(from, e.Name()), filepath.Join(tmp, e.Name())); err != nil {
			return fmt.Errorf("link epoch into live store: %w", err)
		}
	}
	return os.Rename(tmp, to)
}

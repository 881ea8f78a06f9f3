package supervisor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/failover"
	"github.com/ftrun/ftrun/supervisor/netplace"
)

// HeartbeatTimeout is failover's take-over timeout, also how long the primary waits
// for a silent standby before it calls itself unprotected.
const HeartbeatTimeout = failover.DefaultTimeout

// LiveConfig is what a standby's live copies are run with.
type LiveConfig struct {
	// Interval is the checkpoint interval of a program the standby runs after taking over.
	Interval time.Duration
	Criu     *checkpoint.Criu
	Clock    clockwork.Clock
	Log      *slog.Logger
	Host     string
	// Bridge is this host's bridge for programs that ran with --net on their primary.
	Bridge string
	// Peer is where a live copy streams its epochs (the old primary's host, whose
	// `ftrun run` serves as its standby once back); PeerTLS the client side of the
	// mutual TLS. "" leaves a live copy with local checkpoints only.
	Peer    string
	PeerTLS *tls.Config
	// AckFromMemory is Config.AckFromMemory of a live copy's stream to its peer.
	AckFromMemory bool
	// EpochOnOutput is Config.EpochOnOutput of the live copy.
	EpochOnOutput bool
	// Incremental and FullEvery are Config's of the live copy.
	Incremental DirtyMode
	FullEvery   int
}

// LiveCopy is failover's GoLive for `ftrun standby`: it restores the handed-over epoch
// under a supervisor of its own, in the handoff's live dir, protected by the peer.
func LiveCopy(cfg LiveConfig) func(failover.Handoff) (failover.Live, error) {
	return func(h failover.Handoff) (failover.Live, error) {
		sup, err := liveSupervisor(cfg, h)
		if err != nil {
			return failover.Live{}, err
		}
		return liveOf(sup), nil
	}
}

// AdoptLive is failover's Adopt for `ftrun standby`: a copy that an earlier `ftrun
// standby` on this host took over and left running when it died is taken back, as
// `ftrun run` adopts its own program (the run record, the link and address wired
// anew, the output gate), unless the peer took the service over meanwhile: then the
// orphan is killed and this host serves as the peer's standby. The peer is asked
// first, as a booting symmetric host would be; its answer is decided by DecideRole
// with this host's running program as its claim. Without a run record whose program
// still runs, nothing is adopted.
func AdoptLive(cfg LiveConfig) func(svc, liveDir string) (failover.Live, bool) {
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	return func(svc, dir string) (failover.Live, bool) {
		rec, err := readRunRecord(dir)
		if err != nil || rec == nil {
			return failover.Live{}, false
		}
		cg, err := OpenCgroup(svc)
		if err != nil {
			return failover.Live{}, false
		}
		procs, err := cg.Procs()
		if err != nil || !recordAlive(rec, procs) {
			return failover.Live{}, false
		}
		log := cfg.Log.With("service", svc)
		own := Claim{Running: true, Name: certName(cfg.PeerTLS), Node: cfg.Host, Nonce: bootNonce()}
		in := RoleInput{Own: own}
		if cfg.Peer != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 2*exchangeTimeout)
			in.Peer, in.PeerClaim, err = askOnce(ctx, cfg.Peer, cfg.PeerTLS, svc, cfg.Host, own)
			cancel()
		}
		d := DecideRole(in)
		log.Info("found the live copy an earlier standby here left running: "+d.Reason, "pid", rec.Pid, "peer", cfg.Peer,
			"answer", in.Peer.String(), "role", d.Role)
		if d.Role != RolePrimary {
			log.Warn("killing the live copy an earlier standby here left running: the peer's copy is the one that counts", "pid", rec.Pid)
			if err := killGroup(cg, cfg.Clock); err != nil {
				log.Error("cannot kill the orphaned live copy", "err", err)
			}
			return failover.Live{}, false
		}
		sup, err := adoptSupervisor(cfg, svc, dir)
		if err != nil {
			log.Error("cannot adopt the live copy; killing it, the peer takes over", "err", err)
			if err := killGroup(cg, cfg.Clock); err != nil {
				log.Error("cannot kill the orphaned live copy", "err", err)
			}
			return failover.Live{}, false
		}
		return liveOf(sup), true
	}
}

// adoptSupervisor prepares a supervisor that adopts the program running from live
// dir dir: the command, network and synced roots come from its newest checkpoint.
func adoptSupervisor(cfg LiveConfig, svc, dir string) (*Supervisor, error) {
	store, err := checkpoint.OpenStore(filepath.Join(dir, CheckpointsDir))
	if err != nil {
		return nil, err
	}
	sets, err := store.List()
	if err != nil {
		return nil, err
	}
	if len(sets) == 0 {
		return nil, fmt.Errorf("no checkpoint of %q in %q to learn its command from", svc, dir)
	}
	m, err := checkpoint.ReadManifest(sets[0].Dir)
	if err != nil {
		return nil, err
	}
	spec, err := NetSpec(svc, m.Net, cfg.Bridge)
	if err != nil {
		return nil, err
	}
	return New(cfg.config(svc, dir, m, spec))
}

// config is the supervisor's Config of a live copy of svc in dir, restored from a
// set with manifest m and placed on the network by spec.
func (cfg LiveConfig) config(svc, dir string, m *checkpoint.Manifest, spec *netplace.Spec) Config {
	return Config{
		Name: svc, Command: m.Command, StateDir: dir, WorkDir: "/",
		Interval: cfg.Interval, Criu: cfg.Criu, Clock: cfg.Clock, Log: cfg.Log.With("role", "live"),
		Node: cfg.Host, Sync: m.SyncRoots, Net: spec, Failover: true,
		Standby: cfg.Peer, StandbyTLS: cfg.PeerTLS, AckFromMemory: cfg.AckFromMemory, EpochOnOutput: cfg.EpochOnOutput,
		Incremental: cfg.Incremental, FullEvery: cfg.FullEvery,
	}
}

// liveOf runs sup as a standby's live copy.
func liveOf(sup *Supervisor) failover.Live {
	run := func(ctx context.Context) error {
		err := sup.Run(ctx)
		var xe *ExitErr
		if errors.As(err, &xe) && xe.Code == ExitOK {
			return nil
		}
		return err
	}
	return failover.Live{Run: run, Announce: sup.Reannounce}
}

// liveSupervisor prepares a supervisor that restores h's epoch. The epoch is linked
// (not copied) into the live supervisor's own checkpoint store, so the standby's copy
// stays as it was received.
func liveSupervisor(cfg LiveConfig, h failover.Handoff) (*Supervisor, error) {
	// The live supervisor's restore verifies the set; reading it twice would only
	// lengthen the failover.
	m, err := checkpoint.ReadManifest(h.Set.Dir)
	if err != nil {
		return nil, err
	}
	// Epochs an earlier live copy here took are stale: the service went on elsewhere
	// since, under the same epoch numbers.
	if err := os.RemoveAll(filepath.Join(h.LiveDir, CheckpointsDir)); err != nil {
		return nil, fmt.Errorf("drop the stale live checkpoints of %q: %w", h.Service, err)
	}
	// So is a program an earlier live copy here left running (its standby died and
	// it was not adopted): without its run record the boot takes it for a stray and
	// kills it before restoring the handed-over epoch, instead of adopting it.
	if err := os.Remove(filepath.Join(h.LiveDir, runFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("drop the stale run record of %q: %w", h.Service, err)
	}
	if err := linkSet(h.Set.Dir, filepath.Join(h.LiveDir, CheckpointsDir, filepath.Base(h.Set.Dir))); err != nil {
		return nil, err
	}
	// The service is the connection's, which its certificate names: never the
	// manifest's say (see transport/standby).
	spec, err := NetSpec(h.Service, m.Net, cfg.Bridge)
	if err != nil {
		return nil, err
	}
	c := cfg.config(h.Service, h.LiveDir, m, spec)
	c.Lease, c.LiveSince = h.Lease, h.Set.Epoch
	return New(c)
}

// linkSet hard-links the image set at from to to, whole or not at all.
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

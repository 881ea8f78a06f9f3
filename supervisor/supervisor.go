package supervisor

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/ftrun/ftrun/arbiter"
	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/internal/promserve"
	"github.com/ftrun/ftrun/supervisor/container"
	"github.com/ftrun/ftrun/supervisor/epochs"
	"github.com/ftrun/ftrun/supervisor/gate"
	"github.com/ftrun/ftrun/supervisor/logrelay"
	"github.com/ftrun/ftrun/supervisor/netplace"
	"github.com/ftrun/ftrun/supervisor/phase"
	"github.com/ftrun/ftrun/transport/ship"
	"github.com/ftrun/ftrun/transport/svcname"
	"github.com/ftrun/ftrun/watchdog"
)

// Exit codes of `ftrun run`, so scripts and systemd can tell outcomes apart. They lie in
// 150..199, the range the LSB init script specification reserves for applications, so
// that none of them can be mistaken for what the Go runtime (2 on a panic, on SIGABRT as
// systemd's watchdog sends it, or on SIGQUIT), a shell (126, 127, 128+N) or systemd
// itself (200..243) reports: a unit's RestartPreventExitStatus= can list them and still
// restart ftrun after a crash.
const (
	ExitOK      = 0   // the program finished cleanly, or ftrun was asked to stop
	ExitError   = 1   // ftrun itself failed
	ExitUsage   = 150 // bad flags or configuration
	ExitSetup   = 151 // the machine cannot run ftrun (CRIU, cgroups): `ftrun check` says why
	ExitGaveUp  = 152 // the recovery ladder gave up
	ExitLocked  = 153 // another ftrun supervises this state directory
	ExitProgram = 154 // --restart=never: the program failed (its own code is logged)
	ExitFenced  = 155 // the arbiter lease was lost: the program was frozen and killed
	// ExitSuperseded: the peer took the service over while this host was cut off
	// from it; this copy was frozen and killed (the peer's copy is the one).
	ExitSuperseded = 156
)

// ExitErr carries the exit code ftrun should end with.
type ExitErr struct {
	Code int
	Err  error
}

func (e *ExitErr) Error() string { return e.Err.Error() }
func (e *ExitErr) Unwrap() error { return e.Err }

// RestartPolicy decides what a clean exit (code 0) means, like systemd's Restart=.
type RestartPolicy string

const (
	RestartOnFailure RestartPolicy = "on-failure" // exit 0 ends supervision
	RestartAlways    RestartPolicy = "always"     // exit 0 is recovered like a crash
	RestartNever     RestartPolicy = "never"      // any exit ends supervision
)

// Health configures hang detection.
type Health struct {
	Probe  watchdog.Probe
	Config watchdog.HealthConfig
}

// Config is everything `ftrun run` was told.
type Config struct {
	Name              string
	Command           []string
	WorkDir           string
	Env               []string
	StateDir          string
	Interval          time.Duration
	Keep              int
	Restart           RestartPolicy
	Ladder            LadderPolicy
	NoFinalCheckpoint bool
	Discard           bool
	Health            *Health
	Criu              *checkpoint.Criu
	CriuTimeout       time.Duration
	NoSync            bool
	Clock             clockwork.Clock
	Log               *slog.Logger
	Notifier          *watchdog.Notifier
	// Standby is the standby's HOST:PORT ("" for local checkpoints only); StandbyTLS
	// the client side of the mutual TLS it requires.
	Standby    string
	StandbyTLS *tls.Config
	// AckFromMemory lets the standby ack an epoch once it holds it complete and
	// verified, before it is on its disk (`--standby-durability memory`).
	AckFromMemory bool
	// EpochOnOutput starts an epoch as soon as the gate holds output no epoch
	// explains and every earlier epoch's output is out, rather than at the next
	// --interval tick (`--epoch-on-output`).
	EpochOnOutput bool
	// Arbiter decides who may run the program (nil: no arbiter). Lease, when set, is
	// one already held (a standby going live); otherwise Run acquires one first.
	Arbiter arbiter.Arbiter
	Lease   arbiter.Lease
	Node    string
	// Sync are the program's state files and directories, captured with every
	// checkpoint and put back before every restore.
	Sync []string
	// MetricsAddr serves Prometheus metrics at /metrics ("" for none).
	MetricsAddr string
	// Net places the program in its own network namespace with a service address
	// (nil: the program shares ftrun's network). Commit says when its output may leave.
	Net    *netplace.Spec
	Commit CommitMode
	// ExtraFiles become the program's descriptors 3 and up at every fresh start
	// (--preserve-fds); ListenFds says they came from systemd's socket activation,
	// whose LISTEN_PID and LISTEN_FDS are then rewritten for the program.
	ExtraFiles []*os.File
	ListenFds  bool
	// StopTimeout is how long a stop without a final checkpoint waits between SIGTERM
	// and SIGKILL (0: DefaultStopTimeout).
	StopTimeout time.Duration
	// RuntimeDir takes CRIU's scratch and logs when the state directory is not
	// writable ("": /run/ftrun/NAME).
	RuntimeDir string
	// Failover marks a supervisor that takes over from a dead primary: its first
	// restore keeps the program's TCP connections, since no peer saw the program die.
	// Such a supervisor does not ask its peer at boot: it was decided already.
	Failover bool
	// LiveSince is the epoch a take-over restores (0: this copy did not take over),
	// told to the peer so that two live copies that meet agree which one stops.
	LiveSince uint64
	// User runs the program as this user ("NAME[:GROUP]"; "" keeps root). Programs that
	// drop privileges themselves need no --user.
	User string
	// Incremental is how dumps find the pages written since the last one ("" or
	// DirtyOff: every dump is full; DirtyAuto is resolved in New). FullEvery bounds
	// how many incremental dumps come in a row (0: DefaultFullEvery).
	Incremental DirtyMode
	FullEvery   int
	// Listen is where this host serves as the standby of the program's live copy on
	// the peer (Standby), when the boot finds the service live there; ListenTLS the
	// server side of the mutual TLS. "" makes ftrun exit (ExitSuperseded) instead.
	Listen    string
	ListenTLS *tls.Config
	// PeerWait bounds how long the boot tries to reach the peer (DefaultPeerWait).
	PeerWait time.Duration
	// TakeoverTimeout: silence of the live copy after which this host, serving as
	// its standby, takes over (HeartbeatTimeout).
	TakeoverTimeout time.Duration
	// ForcePrimary runs the program when the peer cannot be reached even though this
	// host was its standby last (see DecideRole).
	ForcePrimary bool
	// Symmetric: both hosts of the pair run the same `ftrun run --standby PEER
	// --listen ADDR`. While this host decides its role at boot, and while it runs
	// the program, it answers the peer on Listen, so that two hosts booting at once
	// pick one of them to run the program (see DecideRole).
	Symmetric bool
	// Priority ranks this host against its peer when both boot holding the same
	// epoch: the higher runs the program.
	Priority int
}

// event is anything the loop reacts to; every goroutine reports through one channel so
// that all state is owned by the loop.
type event struct {
	kind   string // "exit", "health", "request", "durable", "link"
	inc    int
	link   linkEvent
	set    checkpoint.Set
	err    error
	exit   ExitStatus
	health watchdog.Result
	req    *request
}

// Supervisor protects one program on this host.
type Supervisor struct {
	cfg    Config
	log    *slog.Logger
	clock  clockwork.Clock
	state  *stateDir
	store  *checkpoint.Store
	cg     *Cgroup
	cgYard string // CRIU's cgroup yard for dumps, "" for none (see makeCgroupYard)
	ladder *Ladder
	events chan event

	user                   *container.Cred  // --user, resolved
	warnedUnsynced         map[string]bool  // files outside --sync the log named already
	out                    *logrelay.Client // the output relay; nil: ftrun reads outR/errR itself
	outR, outW, errR, errW *os.File
	adoptedOut             []*os.File // read ends reopened for an adopted program
	relays                 relay
	retry                  clockwork.Timer
	onOutputPaused         clockwork.Timer // a checkpoint failed: held output starts no epoch until it fires

	wg sync.WaitGroup // every goroutine the supervisor starts
	// relRetry is the failed gate release being retried (zero: none), guarded by
	// retryMu (see releaseLater).
	retryMu  sync.Mutex
	relRetry pendingRelease
	ctx      context.Context
	cancel   context.CancelFunc

	// the current incarnation of the program
	inc          int
	pid          int
	alive        bool
	incCancel    context.CancelFunc
	killReason   string
	healthFail   int
	pending      *Attempt // a recovery waiting out its backoff
	nextEpoch    uint64
	ready        bool
	lastCkptErr  string // why the newest checkpoint failed or was skipped; "" when it committed
	startedAt    time.Time
	incSince     time.Time // when the current incarnation began
	incFresh     bool      // the current incarnation is a fresh start of the command
	incProtected bool      // a checkpoint of the current incarnation was committed
	st           Status
	shuttingDown bool
	// durability runs behind the epoch loop: one fsync at a time, newest set next
	syncing    bool
	syncNext   *checkpoint.Set
	link       *link
	stateFiles *syncedFiles
	// aside are the state files kept as the program left them at its crash, until a
	// checkpoint after the recovery holds newer ones (see setAsideSynced)
	aside   map[string]bool
	metrics *metrics
	// the newest committed set, whose unchanged state files the next one links
	lastManifest *checkpoint.Manifest
	lastSetDir   string
	// which dumps may be incremental, and the trackers of the program's writes
	incr *incremental
	// what each epoch's checkpoint recorded of its phases, until the standby acks it
	marks      map[uint64]phase.Local
	commitLats []time.Duration // recent checkpoint-start -> standby-ack latencies
	phases     *phase.Window   // recent epochs' phases
	// the program's own network (--net) and the gate that holds its output
	place    *netplace.Place
	gate     gate.Gate
	dumpLock *gate.DumpLock
	// rule decides when held output may leave; the loop, the link and the fsync
	// goroutine step it (see outputRule)
	rule    *outputRule
	ctlPath string // the control socket
}

// New checks the configuration and fills in defaults.
func New(cfg Config) (*Supervisor, error) {
	if len(cfg.Command) == 0 {
		return nil, errors.New("no command given: ftrun run [flags] -- CMD ARGS")
	}
	if cfg.Name == "" {
		cfg.Name = filepath.Base(cfg.Command[0])
	}
	// The name becomes a cgroup, a state directory and the standby's directory.
	if err := svcname.Check(cfg.Name); err != nil {
		return nil, fmt.Errorf("service name: %w (choose one with --name)", err)
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join("/var/lib/ftrun", cfg.Name)
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Keep <= 0 {
		cfg.Keep = 3
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.Restart == "" {
		cfg.Restart = RestartOnFailure
	}
	if cfg.Clock == nil {
		cfg.Clock = clockwork.NewRealClock()
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Criu == nil {
		cfg.Criu = &checkpoint.Criu{}
	}
	if cfg.Notifier == nil {
		cfg.Notifier = watchdog.NewNotifier()
	}
	if cfg.Ladder == (LadderPolicy{}) {
		cfg.Ladder = DefaultLadderPolicy
	}
	if cfg.Env == nil {
		cfg.Env = os.Environ()
	}
	if cfg.ListenFds {
		cfg.Env = listenEnv(cfg.Env, len(cfg.ExtraFiles))
	}
	var cred *container.Cred
	if cfg.User != "" {
		c, err := container.LookupUser(cfg.User)
		if err != nil {
			return nil, err
		}
		cred = c
	}
	if cfg.PeerWait <= 0 {
		cfg.PeerWait = DefaultPeerWait
	}
	if cfg.TakeoverTimeout <= 0 {
		cfg.TakeoverTimeout = HeartbeatTimeout
	}
	if cfg.Net != nil {
		if err := cfg.Net.Validate(); err != nil {
			return nil, err
		}
	}
	commit, err := resolveCommit(cfg.Commit, cfg.Net != nil, cfg.Standby != "")
	if err != nil {
		return nil, err
	}
	cfg.Commit = commit
	abs, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	cfg.StateDir = abs
	var criuPath string
	if cfg.Criu != nil {
		criuPath = cfg.Criu.Path
	}
	if cfg.Incremental != "" {
		if cfg.Incremental, err = ChooseDirtyMode(cfg.Incremental, criuPath); err != nil {
			return nil, err
		}
	}
	log := cfg.Log.With("service", cfg.Name)
	return &Supervisor{
		incr:   newIncremental(cfg.Incremental, cfg.FullEvery, log),
		cfg:    cfg,
		log:    log,
		clock:  cfg.Clock,
		ladder: NewLadder(cfg.Ladder),
		// Buffered: the link reports every ack and must not wait for the loop, which
		// spends most of a short epoch inside a checkpoint.
		events:  make(chan event, 64),
		metrics: newMetrics(cfg.Name),
		aside:   map[string]bool{},
		user:    cred,
		rule:    newOutputRule(cfg.Commit, cfg.Standby != ""),
	}, nil
}

// Run supervises until ctx is cancelled (then it takes a final checkpoint and stops the
// program) or until recovery gives up. The error is an *ExitErr when ftrun should exit
// with a particular code.
func (s *Supervisor) Run(ctx context.Context) (err error) {
	s.ctx, s.cancel = context.WithCancel(context.Background())
	defer func() {
		s.cancel()
		s.wg.Wait()
	}()
	if err := s.open(); err != nil {
		return err
	}
	defer s.close()

	s.startedAt = s.clock.Now()
	s.st = Status{Service: s.cfg.Name, Role: RolePrimary, State: StateStarting, Protection: "local checkpoints",
		Command: s.cfg.Command, Since: s.startedAt, StateDir: s.cfg.StateDir, Commit: string(s.cfg.Commit)}
	if s.cfg.Net != nil {
		s.st.Addr = s.cfg.Net.Addr.String()
	}

	if err := s.serveControl(); err != nil {
		return err
	}
	if s.cfg.MetricsAddr != "" {
		addr, err := promserve.Serve(s.ctx, &s.wg, s.cfg.MetricsAddr, s.metrics.reg)
		if err != nil {
			return &ExitErr{Code: ExitUsage, Err: err}
		}
		s.log.Info("serving metrics", "addr", "http://"+addr+"/metrics")
	}
	if len(s.cfg.Sync) > 0 {
		sf, err := newSyncedFiles(s.cfg.Sync)
		if err != nil {
			return &ExitErr{Code: ExitUsage, Err: err}
		}
		s.stateFiles = sf
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sf.run(s.ctx)
		}()
	}
	if s.cfg.Standby != "" {
		s.st.Peer = s.cfg.Standby
	}
	if s.cfg.Standby != "" && !s.cfg.Failover && s.cfg.Lease == nil {
		// Before anything is restored or started: is the service live on the peer?
		stopped, err := s.chooseRole(ctx)
		if err != nil || stopped {
			return err
		}
	}
	if s.cfg.Standby != "" {
		host, _ := os.Hostname()
		s.link = newLink(s.cfg.Standby, s.cfg.StandbyTLS, ship.Config{Service: s.cfg.Name, Host: host, LiveSince: s.cfg.LiveSince,
			AckFromMemory: s.cfg.AckFromMemory, Clock: s.clock, Logger: s.log.With("standby", s.cfg.Standby)})
		s.st.Peer = s.cfg.Standby
		s.step(epochs.LinkDown{Why: "connecting to standby " + s.cfg.Standby})
		s.st.Protection = s.protectionText(s.rule.protection())
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.link.run(s.ctx, func(ev linkEvent) { s.send(s.ctx, event{kind: "link", link: s.linkStep(ev)}) })
		}()
	}
	var lost <-chan struct{}
	if s.cfg.Lease == nil && s.cfg.Arbiter != nil {
		s.log.Info("waiting for the arbiter's key before running the program")
		lease, err := s.cfg.Arbiter.Acquire(ctx, s.cfg.Name, s.cfg.Node)
		if err != nil {
			return &ExitErr{Code: ExitFenced, Err: fmt.Errorf("arbiter: %w", err)}
		}
		s.cfg.Lease = lease
		s.log.Info("holding the arbiter's key: this node runs the program")
	}
	if s.cfg.Lease != nil {
		lost = s.cfg.Lease.Lost()
		defer s.cfg.Lease.Release()
	}
	if err := s.boot(); err != nil {
		return err
	}

	ticker := s.clock.NewTicker(s.cfg.Interval)
	defer ticker.Stop()
	var wdog <-chan time.Time
	if iv := s.cfg.Notifier.WatchdogInterval(); iv > 0 {
		t := s.clock.NewTicker(iv)
		defer t.Stop()
		wdog = t.Chan()
	}

	for {
		select {
		case <-ctx.Done():
			return s.shutdown()
		case <-lost:
			return s.fence(ExitFenced, "lost the arbiter lease: freezing and killing the program; another node may run it now", arbiter.ErrLeaseLost)
		case <-ticker.Chan():
			// What happened meanwhile comes first: a checkpoint keeps the loop busy
			// for most of a short epoch.
			if err := s.drainEvents(); err != nil {
				return err
			}
			if s.alive {
				s.tryCheckpoint(false)
			}
		case <-s.pressured():
			// Held output nears the gate's bound: commit an epoch now rather than let
			// the kernel drop the program's packets.
			if s.alive {
				s.log.Debug("output gate nearly full: checkpointing early")
				s.tryCheckpoint(false)
			}
		case <-s.outputWaiting():
			if s.epochDue() {
				s.tryCheckpoint(false)
			}
		case <-s.onOutputResumes():
			s.onOutputPaused = nil
			if s.epochDue() {
				s.tryCheckpoint(false)
			}
		case <-wdog:
			s.pingWatchdog()
		case <-s.retryChan():
			s.retry = nil
			if s.pending != nil {
				a := *s.pending
				s.pending = nil
				a.Delay = 0 // waited out
				if err := s.carryOut(a); err != nil {
					return err
				}
			}
		case ev := <-s.events:
			if err := s.handle(ev); err != nil {
				return err
			}
			// An ack (or, under --commit local, a durable epoch) may have let the
			// last epoch in flight out while output waits for the next.
			if (ev.kind == "link" || ev.kind == "durable") && s.epochDue() {
				s.tryCheckpoint(false)
			}
		}
	}
}

func (s *Supervisor) open() error {
	st, err := lockStateDir(s.cfg.StateDir)
	if err != nil {
		if errors.Is(err, ErrLocked) {
			return &ExitErr{Code: ExitLocked, Err: err}
		}
		return err
	}
	s.state = st
	s.removeStaleScratch()
	store, err := checkpoint.OpenStore(st.path(CheckpointsDir))
	if err != nil {
		st.close()
		return err
	}
	store.NoSync = s.cfg.NoSync
	s.store = store
	cg, err := OpenCgroup(s.cfg.Name)
	if err != nil {
		st.close()
		return &ExitErr{Code: ExitSetup, Err: err}
	}
	s.cg = cg
	// Only on hosts with v1 hierarchies (hybrid), where it was measured and tested: on
	// a pure cgroup2 host under systemd, with the yard, the systemd suite's unit
	// stopped pinging its watchdog right after its first checkpoint, for a reason not
	// yet known.
	if CgroupMode() != "v2" {
		s.cgYard = makeCgroupYard(st.path(cgroupYardDir), cg.Mount, cg.Placement.Unit != "")
	}
	if kp := s.cfg.Criu.KernelProbe(); strings.HasPrefix(kp, "not cached") {
		s.log.Warn("CRIU's kernel probe is " + kp + ": every checkpoint probes the kernel anew (see ftrun check)")
	} else {
		s.log.Debug("CRIU's kernel probe is " + kp)
	}
	if pl := cg.Placement; pl.Note != "" {
		s.log.Warn(pl.Note)
	} else if pl.Unit != "" {
		s.log.Info("placing the program in the systemd unit's delegated cgroup", "cgroup", cg.Group, "unit", pl.Unit)
	}
	if err := s.openOutput(); err != nil {
		st.close()
		return err
	}
	latest, err := store.Latest()
	if err != nil {
		st.close()
		return err
	}
	s.nextEpoch = latest + 1
	return nil
}

func (s *Supervisor) close() {
	s.incr.close()
	if s.alive {
		s.leaveNet()
	} else {
		s.dropNet()
	}
	s.outW.Close()
	s.errW.Close()
	s.closeOutput()
	for _, f := range s.adoptedOut {
		f.Close()
	}
	s.relays.wait()
	os.Remove(s.ctlPath)
	s.state.close()
}

// boot carries out DecideBoot.
func (s *Supervisor) boot() error {
	rec, err := readRunRecord(s.cfg.StateDir)
	if err != nil {
		s.log.Warn("ignoring damaged run record", "err", err)
	}
	procs, err := s.cg.Procs()
	if err != nil {
		return err
	}
	sets, err := s.store.List()
	if err != nil {
		return err
	}
	alive := recordAlive(rec, procs)
	d := DecideBoot(BootInput{Record: rec, RecordAlive: alive, CgroupProcs: len(procs), Checkpoints: len(sets), Discard: s.cfg.Discard})
	s.log.Info("boot: "+d.Reason, "action", d.Action.String(), "checkpoints", len(sets))
	if d.Action != BootFresh && len(sets) > 0 {
		if m, err := checkpoint.ReadManifest(sets[0].Dir); err == nil && !SameCommand(m.Command, s.cfg.Command) {
			return &ExitErr{Code: ExitUsage, Err: fmt.Errorf("state dir %q holds checkpoints of %q, not %q: use --discard to drop them, or another --state-dir",
				s.cfg.StateDir, m.Command, s.cfg.Command)}
		}
	}
	if d.KillStrays {
		if err := s.killAll(); err != nil {
			return err
		}
	}
	if d.DropCheckpoints {
		for _, set := range sets {
			if err := s.store.Remove(set); err != nil {
				return err
			}
		}
	}
	switch d.Action {
	case BootAdopt:
		if err := s.placeNet(rec.Pid, false); err != nil {
			s.log.Error("cannot take back the running program's network; restoring it instead", "err", err)
			if err := s.killAll(); err != nil {
				return err
			}
			return s.carryOut(s.ladder.Failed(s.candidates(), "the running program's network could not be adopted"))
		}
		s.adopt(rec)
		return nil
	case BootRestore:
		return s.carryOut(s.ladder.Failed(s.candidates(), "ftrun started and the program is gone"))
	default:
		return s.carryOut(Attempt{Rung: RungFresh, Reason: d.Reason})
	}
}

// recordAlive says whether the program rec names still runs, in this service's cgroup
// (procs), as the very process recorded (not a later one under a reused pid).
func recordAlive(rec *RunRecord, procs []int) bool {
	if rec == nil || rec.Pid <= 0 {
		return false
	}
	start, err := procStartTime(rec.Pid)
	return err == nil && start == rec.StartTime && slices.Contains(procs, rec.Pid)
}

// runningProgram is the program an earlier ftrun left running, if any.
func (s *Supervisor) runningProgram() (*RunRecord, bool) {
	rec, err := readRunRecord(s.cfg.StateDir)
	if err != nil {
		return nil, false
	}
	procs, err := s.cg.Procs()
	if err != nil {
		return nil, false
	}
	return rec, recordAlive(rec, procs)
}

func (s *Supervisor) adopt(rec *RunRecord) {
	// Relay the adopted program's output again. Its output relay outlived the previous
	// ftrun and reads on; a program whose pipes are not the relay's (the relay died
	// too) lost their reader, but new ends of the same pipes open through /proc: a
	// new relay takes them, or else ftrun reads them itself.
	if s.out != nil && !s.relayed(rec.Pid, 1) && !s.relayed(rec.Pid, 2) {
		if err := s.out.Rehome(rec.Pid); err != nil {
			s.log.Warn("the program's output relay died with the previous ftrun, and no new one takes its pipes: ftrun reads them itself", "err", err)
		} else {
			s.outW, s.errW = s.out.Stdout, s.out.Stderr
			s.log.Warn("the program's output relay died with the previous ftrun: a new one reads its pipes (what it wrote meanwhile failed)")
		}
	}
	for fd, stream := range map[int]string{1: "stdout", 2: "stderr"} {
		if s.relayed(rec.Pid, fd) {
			continue
		}
		if f, err := reopenPipe(rec.Pid, fd); err == nil {
			s.relays.start(s.log, stream, f)
			s.adoptedOut = append(s.adoptedOut, f)
		}
	}
	s.st.Adoptions++
	s.incarnation(rec.Pid, "adopted")
}

// incarnation starts watching a new (started, restored or adopted) program.
func (s *Supervisor) incarnation(pid int, how string) {
	if s.incCancel != nil {
		s.incCancel()
	}
	s.inc++
	s.pid, s.alive, s.killReason, s.healthFail = pid, true, "", 0
	s.incSince = s.clock.Now()
	s.incFresh, s.incProtected = how == "started", false
	s.st.Pid, s.st.State = pid, StateRunning
	s.metrics.up.Set(1)
	ctx, cancel := context.WithCancel(s.ctx)
	s.incCancel = cancel
	inc := s.inc
	start, _ := procStartTime(pid)
	if err := s.state.writeRunRecord(&RunRecord{Service: s.cfg.Name, Command: s.cfg.Command, Pid: pid, StartTime: start,
		Phase: PhaseRunning, Since: s.clock.Now(), Ftrun: os.Getpid()}); err != nil {
		s.log.Warn("cannot record the running program; a restarted ftrun may not adopt it", "err", err)
	}
	s.log.Info("program "+how, "pid", pid)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		st, err := waitExit(ctx, pid)
		if err != nil {
			return
		}
		s.send(ctx, event{kind: "exit", inc: inc, exit: st})
	}()
	if h := s.cfg.Health; h != nil {
		results := make(chan watchdog.Result)
		checker := &watchdog.Checker{Probe: h.Probe, Config: h.Config, Clock: s.clock}
		s.wg.Add(2)
		go func() {
			defer s.wg.Done()
			_ = checker.Run(ctx, results)
		}()
		go func() {
			defer s.wg.Done()
			for {
				select {
				case r := <-results:
					s.send(ctx, event{kind: "health", inc: inc, health: r})
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	s.notifyStatus()
}

// drainEvents handles the events already waiting, without blocking.
func (s *Supervisor) drainEvents() error {
	for {
		select {
		case ev := <-s.events:
			if err := s.handle(ev); err != nil {
				return err
			}
		default:
			return nil
		}
	}
}

func (s *Supervisor) send(ctx context.Context, ev event) {
	select {
	case s.events <- ev:
	case <-ctx.Done():
	}
}

func (s *Supervisor) handle(ev event) error {
	switch ev.kind {
	case "exit":
		if ev.inc != s.inc || !s.alive {
			return nil
		}
		return s.exited(ev.exit)
	case "health":
		if ev.inc != s.inc || !s.alive {
			return nil
		}
		s.observeHealth(ev.health)
	case "request":
		s.serve(ev.req)
	case "durable":
		s.synced(ev.set, ev.err)
	case "announce":
		if p := s.place; p != nil && s.alive {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				if err := p.Announce(5, 200*time.Millisecond); err != nil {
					s.log.Warn("gratuitous ARP", "err", err)
				}
			}()
			s.log.Info("announcing the service address again: the peer's old copy was refused")
		}
	case "link":
		if ev.link.superseded {
			return s.fence(ExitSuperseded, "the service is live on the peer ("+ev.link.why+"): freezing and killing this copy; the peer's copy is the one",
				errors.New("superseded: the service went live on the peer"))
		}
		s.linkChanged(ev.link)
		s.gateStats()
	}
	return nil
}

// linkStep feeds what the link learnt to the output rule, on the link's goroutine,
// and carries out the release it makes due there and then: the loop may be inside the
// next checkpoint. It returns ev with what the loop reports of it.
func (s *Supervisor) linkStep(ev linkEvent) linkEvent {
	var e epochs.Event
	switch {
	case ev.superseded:
		return ev
	case ev.err != nil:
		e = epochs.Nacked{Epoch: ev.failed, Full: errors.Is(ev.err, ship.ErrStandbyFull)}
	case ev.shipped > 0:
		e = epochs.Acked{Epoch: ev.shipped}
	case ev.up:
		e = epochs.LinkUp{}
	default:
		e = epochs.LinkDown{Why: ev.why}
	}
	t := s.clock.Now()
	rd := s.step(e)
	if ev.shipped > 0 {
		ev.released = s.clock.Since(t)
	}
	ev.protection = rd.Protection
	return ev
}

// linkChanged follows the standby link: whether the program is protected by a
// standby (as the output rule decided when the link stepped it), and how far the
// standby is behind.
func (s *Supervisor) linkChanged(ev linkEvent) {
	if ev.shipped > 0 {
		s.metrics.shipped.Add(float64(ev.stats.Bytes))
		s.metrics.standbyEp.Set(float64(ev.shipped))
		s.epochAcked(ev)
		s.st.StandbyEpoch = ev.shipped
		s.st.LastShippedBytes = ev.stats.Bytes
		s.st.LastShipFull = ev.stats.Full
		s.log.Debug("epoch acked by standby", "epoch", ev.shipped, "bytes", ev.stats.Bytes, "full", ev.stats.Full, "took", ev.stats.Duration)
	}
	if ev.err != nil && !errors.Is(ev.err, ship.ErrStandbyFull) {
		s.log.Warn("epoch not shipped; the next one will be", "err", ev.err)
	}
	if ev.protection != nil {
		protection := s.protectionText(*ev.protection)
		if strings.HasPrefix(protection, "unprotected") {
			s.log.Error("program is "+protection+"; it keeps running, checkpoints stay local", "epoch", s.st.Epoch)
		} else {
			s.log.Info("program is "+protection, "epoch", s.st.Epoch)
		}
		s.st.Protection = protection
		s.notifyStatus()
	}
	if strings.HasPrefix(s.st.Protection, "protected") && s.st.FailingSince.IsZero() {
		s.metrics.protected.Set(1)
	} else {
		s.metrics.protected.Set(0)
	}
	s.metrics.lag.Set(float64(s.st.Lag()))
}

// percentiles returns the median and the 99th percentile of ds.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2], s[min(len(s)-1, len(s)*99/100)]
}

// syncLater makes set durable in the background; while one fsync runs, only the newest
// set waits for the next.
func (s *Supervisor) syncLater(set checkpoint.Set) {
	if s.syncing {
		s.syncNext = &set
		return
	}
	s.syncing = true
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		err := s.store.Sync(set)
		if err == nil {
			// Released from here, at once: the loop may be inside the next checkpoint.
			s.step(epochs.Durable{Epoch: set.Epoch})
		}
		s.send(s.ctx, event{kind: "durable", set: set, err: err})
	}()
}

func (s *Supervisor) synced(set checkpoint.Set, err error) {
	s.syncing = false
	if err != nil {
		s.log.Error("checkpoint is committed but could not be made durable", "epoch", set.Epoch, "err", err)
		// Its pages may not be what was written: no later set copies them from it.
		s.incr.dropParent()
	} else {
		s.st.DurableEpoch = set.Epoch
		pins := s.rule.pins()
		if dropped, err := s.store.Prune(s.cfg.Keep, pins.Durable, pins.Acked); err != nil {
			s.log.Warn("prune old checkpoints", "err", err)
		} else if len(dropped) > 0 {
			s.log.Debug("pruned old checkpoints", "count", len(dropped))
		}
	}
	s.gateStats()
	if next := s.syncNext; next != nil {
		s.syncNext = nil
		s.syncLater(*next)
	}
}

func (s *Supervisor) observeHealth(r watchdog.Result) {
	s.healthFail = r.Consecutive
	if r.Err == nil {
		return
	}
	s.st.HealthFailures++
	s.log.Warn("health check failed", "consecutive", r.Consecutive, "err", r.Err)
	if r.Unhealthy {
		s.killReason = fmt.Sprintf("hung: health check failed %d times in a row (%v)", r.Consecutive, r.Err)
		s.log.Error("program does not answer: killing it", "reason", s.killReason, "pid", s.pid)
		if err := s.cg.Kill(); err != nil {
			s.log.Error("kill hung program", "err", err)
		}
	}
}

// daemonizedHint is logged when a freshly started program exits 0 before its first
// checkpoint.
const daemonizedHint = "the program exited 0 before its first checkpoint: if it is a daemon that forks into " +
	"the background, its forked process died with it (the program is PID 1 of its container, whose processes end " +
	"with it); run it in the foreground (nginx -g 'daemon off;', memcached without -d, redis-server --daemonize no, " +
	"postgres rather than pg_ctl)"

// exited reacts to the end of the current incarnation.
func (s *Supervisor) exited(st ExitStatus) error {
	s.alive = false
	s.metrics.up.Set(0)
	s.incCancel()
	s.st.Pid = 0
	reason := st.String()
	if s.killReason != "" {
		reason = s.killReason
	}
	// Anything the program left behind in its cgroup goes with it.
	if err := s.killAll(); err != nil {
		s.log.Warn("clean up after program", "err", err)
	}
	if st.Clean() && s.incFresh && !s.incProtected {
		// The kernel kills a PID namespace's processes with its first one, so a daemon
		// that forks into the background and exits ends here before any trace of its
		// child is left: only the timing says it may have.
		s.log.Warn(daemonizedHint)
	}
	switch {
	case st.Clean() && s.cfg.Restart != RestartAlways:
		s.log.Info("program finished cleanly", "status", reason)
		s.setPhase(PhaseFinished)
		s.st.State = StateStopped
		return &ExitErr{Code: ExitOK, Err: errors.New("program finished")}
	case s.cfg.Restart == RestartNever:
		s.log.Error("program ended and --restart=never", "status", reason)
		s.setPhase(PhaseFailed)
		return &ExitErr{Code: ExitProgram, Err: fmt.Errorf("program %s", reason)}
	}
	s.log.Error("program died", "status", reason)
	var a Attempt
	if st.Clean() {
		a = Attempt{Rung: RungFresh, Reason: "program exited 0 and --restart=always: starting it again"}
	} else {
		a = s.ladder.Crashed(s.clock.Now(), s.candidates())
	}
	return s.carryOut(a)
}

func (s *Supervisor) setPhase(p Phase) {
	rec, _ := readRunRecord(s.cfg.StateDir)
	if rec == nil {
		rec = &RunRecord{Service: s.cfg.Name, Command: s.cfg.Command}
	}
	rec.Phase, rec.Since = p, s.clock.Now()
	if err := s.state.writeRunRecord(rec); err != nil {
		s.log.Warn("write run record", "err", err)
	}
}

// newestEpoch is the newest committed checkpoint here, 0 if there is none.
func (s *Supervisor) newestEpoch() uint64 {
	if c := s.candidates(); len(c) > 0 {
		return c[0]
	}
	return 0
}

// candidates lists committed epochs, newest first.
func (s *Supervisor) candidates() []uint64 {
	sets, err := s.store.List()
	if err != nil {
		s.log.Error("list checkpoints", "err", err)
		return nil
	}
	out := make([]uint64, len(sets))
	for i, set := range sets {
		out[i] = set.Epoch
	}
	return out
}

// carryOut performs ladder attempts until one brings the program back, the ladder
// gives up, or an attempt must wait for its backoff.
func (s *Supervisor) carryOut(a Attempt) error {
	for {
		if a.Delay == 0 {
			s.metrics.recoveries.WithLabelValues(a.Rung.String()).Inc()
		}
		if a.Rung == RungGiveUp {
			s.log.Error("recovery gave up: "+a.Reason, "step", a.Rung.String())
			s.st.State = StateFailed
			s.setPhase(PhaseFailed)
			s.notifyStatus()
			return &ExitErr{Code: ExitGaveUp, Err: fmt.Errorf("recovery gave up: %s", a.Reason)}
		}
		if a.Delay > 0 {
			s.log.Warn("recovery: waiting before the next attempt", "delay", a.Delay, "step", a.Rung.String(), "reason", a.Reason)
			s.st.State = StateRecovering
			s.pending = &a
			s.armRetry(a.Delay)
			return nil
		}
		s.log.Info("recovery: "+a.Reason, "step", a.Rung.String(), "epoch", a.Epoch)
		s.st.State = StateRecovering
		var err error
		switch a.Rung {
		case RungRestore:
			takeover := s.cfg.Failover && s.st.Restores == 0 && s.st.FreshStarts == 0
			err = s.restore(a.Epoch, takeover)
		case RungFresh:
			err = s.fresh()
		}
		if err == nil {
			return nil
		}
		s.log.Error("recovery step failed", "step", a.Rung.String(), "epoch", a.Epoch, "err", err)
		if a.Rung == RungRestore {
			a = s.ladder.RestoreFailed(s.candidates(), a.Epoch, "restore failed", errors.Is(err, checkpoint.ErrCriuDied))
		} else {
			a = s.ladder.Failed(s.candidates(), fmt.Sprintf("%s failed", a.Rung))
		}
	}
}

// armRetry wakes the loop after d through a timer the loop owns; its channel is read
// in the loop, so no callback goroutine outlives Run.
func (s *Supervisor) armRetry(d time.Duration) {
	if s.retry != nil {
		s.retry.Stop()
	}
	s.retry = s.clock.NewTimer(d)
}

func (s *Supervisor) retryChan() <-chan time.Time {
	if s.retry == nil {
		return nil
	}
	return s.retry.Chan()
}

func (s *Supervisor) fresh() error {
	if err := s.killAll(); err != nil {
		return err
	}
	cg, err := s.cg.Open()
	if err != nil {
		return err
	}
	defer cg.Close()
	if err := s.placeNet(0, false); err != nil {
		return err
	}
	// Clients may remember another MAC for the address (an earlier --mac, another
	// service that had it): three announcements, in case the first is lost.
	if err := s.connectNet(3); err != nil {
		return err
	}
	s.putBackSynced()
	pid, err := startProgram(s.cfg.Command, s.cfg.WorkDir, s.cfg.Env, cg, s.outW, s.errW, s.cfg.ExtraFiles, s.enter(), s.user)
	if err != nil {
		return err
	}
	s.st.FreshStarts++
	s.incarnation(pid, "started")
	return nil
}

// restore brings back epoch: here after a failure, or on a standby taking over (the
// program's address moved hosts). Its TCP connections come back open or closed as
// keepConnections says.
func (s *Supervisor) restore(epoch uint64, takeover bool) error {
	dir := filepath.Join(s.store.Dir(), fmt.Sprintf("%016d", epoch))
	m, err := checkpoint.VerifyDir(dir)
	if err != nil {
		return fmt.Errorf("checkpoint epoch %d is unusable: %w", epoch, err)
	}
	if !SameCommand(m.Command, s.cfg.Command) {
		return fmt.Errorf("checkpoint epoch %d is of %q, not %q", epoch, m.Command, s.cfg.Command)
	}
	if err := s.killAll(); err != nil {
		return err
	}
	if f, how := staleFile(m.Unsynced, m.DumpStart); f != "" && !m.DumpStart.IsZero() {
		return fmt.Errorf("checkpoint epoch %d: %q, which the program writes (or works in) and --sync does not name, %s: "+
			"restoring would run older memory over newer data (name its directory with --sync)", epoch, f, how)
	}
	// The program's state files go back to epoch's before the program that has them
	// open does: CRIU checks the size of every open file.
	var roots []string
	if s.stateFiles != nil {
		roots = s.stateFiles.roots
	}
	s.setAsideSynced(m.Synced, m.Created)
	if err := restoreSynced(dir, roots, m.Synced); err != nil {
		return fmt.Errorf("checkpoint epoch %d: %w", epoch, err)
	}
	if s.stateFiles != nil {
		s.stateFiles.markAll()
		s.lastManifest = nil
	}
	if err := s.placeNet(0, takeover); err != nil {
		return err
	}
	start := s.clock.Now()
	// A set dumped without --net holds its connections closed, whatever this run's flags.
	keepTCP := keepConnections(s.cfg.Net != nil && m.Net != nil, s.cfg.Commit, takeover, s.newestEpoch() == epoch)
	pid, err := s.criuRestore(dir, m, keepTCP)
	if err != nil {
		return err
	}
	if err := s.cg.Gather(pid); err != nil {
		s.log.Warn("restored program is outside its cgroup", "err", err)
	}
	// Only now, with the sockets back, may the LAN reach the namespace. When the
	// address moved hosts, tell the switch and the clients' neighbour caches now,
	// and again in case the first announcement is lost.
	announce := 1
	if takeover {
		announce = 3
	}
	if err := s.connectNet(announce); err != nil {
		return err
	}
	s.st.Restores++
	s.incarnation(pid, fmt.Sprintf("restored from epoch %d in %s", epoch, s.clock.Since(start).Round(time.Millisecond)))
	if keepTCP {
		resend := takeover || epoch <= s.rule.safe()
		if !resend && s.cfg.Commit == CommitLocal && s.store.Sync(checkpoint.Set{Epoch: epoch, Dir: dir}) == nil {
			// The epoch was still on its way to disk; there now, its output may go.
			s.step(epochs.Durable{Epoch: epoch})
			resend = true
		}
		s.nudgePeers(dir, resend)
	}
	return nil
}

// criuRestore has CRIU restore the set in dir, its connections kept open or closed.
func (s *Supervisor) criuRestore(dir string, m *checkpoint.Manifest, keepTCP bool) (int, error) {
	inherit := map[string]*os.File{}
	if k := m.External["stdout"]; k != "" {
		inherit[k] = s.outW
	}
	if k := m.External["stderr"]; k != "" && inherit[k] == nil {
		inherit[k] = s.errW
	}
	work, err := s.scratchDir(restorePrefix)
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(work)
	// A place of its own is cut off from the LAN until connectNet, so no packet can
	// reach a connection CRIU has not restored yet: CRIU's network lock, which costs
	// an iptables-restore per connection or a libnftables table, is not needed.
	pid, err := s.cfg.Criu.Restore(checkpoint.Options{ImagesDir: dir, WorkDir: work, TCPEstablished: true, Inherit: inherit,
		TCPClose: !keepTCP, Enter: s.enter(), NetworkLockSkip: s.place != nil, Restored: s.cgroupProcs, MountNS: m.Container,
		CgroupRoot: s.cg.Group, SystemdMirror: s.cg.Placement.Unit != ""})
	if err != nil {
		return 0, s.restoreFailed(err, work)
	}
	return pid, nil
}

// killAll kills everything in the program's cgroup and waits until it is empty.
func (s *Supervisor) killAll() error { return killGroup(s.cg, s.clock) }

// killGroup SIGKILLs everything in cg, waits for it to be empty and renews it.
func killGroup(cg *Cgroup, clock clockwork.Clock) error {
	procs, err := cg.Procs()
	if err != nil {
		return err
	}
	if len(procs) == 0 {
		return cg.Renew()
	}
	if err := cg.Kill(); err != nil {
		return err
	}
	deadline := clock.Now().Add(5 * time.Second)
	for clock.Now().Before(deadline) {
		if procs, err := cg.Procs(); err == nil && len(procs) == 0 {
			return cg.Renew()
		}
		clock.Sleep(5 * time.Millisecond)
	}
	return fmt.Errorf("processes in cgroup %q survived SIGKILL for 5s", cg.Group)
}

// mayCheckpoint is the pure rule for whether the program's current state is worth
// keeping: a stopped or failing program would be restored stopped or failing.
func mayCheckpoint(alive bool, stoppedPid int, healthFailures int) (bool, string) {
	switch {
	case !alive:
		return false, "program not running"
	case stoppedPid != 0:
		return false, fmt.Sprintf("process %d is stopped (SIGSTOP?): not keeping a stopped state", stoppedPid)
	case healthFailures > 0:
		return false, fmt.Sprintf("health check failing (%d in a row): not keeping a state that may be hung", healthFailures)
	}
	return true, ""
}

// tryCheckpoint takes one checkpoint. final dumps without leaving the program running.
func (s *Supervisor) tryCheckpoint(final bool) (uint64, error) {
	procs, _ := s.cg.Procs()
	stopped, _ := anyStopped(procs)
	if ok, why := mayCheckpoint(s.alive, stopped, s.healthFail); !ok {
		return 0, s.checkpointSkipped(why)
	}
	s.clearCrtools(procs)
	epoch := s.nextEpoch
	pending, err := s.store.Begin(epoch)
	if err != nil {
		return 0, s.checkpointFailed(epoch, err)
	}
	ext := s.outputKeys()
	marks := phase.Local{Start: s.clock.Now()}
	var synced []checkpoint.SyncedFile
	unsynced := s.unsynced(procs)
	opts := s.dumpOptions(epoch, pending.Dir, final, &marks, &synced)
	s.incr.prepare(&opts, procs, s.inc, final)
	s.st.Incremental = s.incr.String()
	marks.CriuCalled = s.clock.Now()
	stats, err := s.cfg.Criu.Dump(opts)
	marks.CriuDone = s.clock.Now()
	if s.dumpLock != nil {
		if uerr := s.dumpLock.Unlock(); uerr != nil {
			s.log.Error("let in the program's incoming TCP after the dump", "err", uerr)
		}
	}
	if err != nil {
		s.dumpFailed()
		if s.keepFailedLog(pending.Dir) {
			err = fmt.Errorf("%w (CRIU log: %s)", err, s.state.path(failedDumpLog))
		}
		_ = pending.Abort()
		return 0, s.checkpointFailed(epoch, err)
	}
	settled, err := s.settleDump(pending.Dir, opts.ParentDir, epoch, stats.CriuImageSize)
	if err != nil {
		_ = pending.Abort()
		return 0, s.checkpointFailed(epoch, err)
	}
	m := &checkpoint.Manifest{Created: s.clock.Now(), Service: s.cfg.Name, Command: s.cfg.Command, Pid: s.pid, External: ext, Stats: stats,
		Synced: synced, Net: placementOf(s.cfg.Net), Container: true, Unsynced: unsynced, DumpStart: marks.Start}
	if s.stateFiles != nil {
		m.SyncRoots = s.stateFiles.roots
	}
	set, err := pending.Commit(m)
	if err != nil {
		if s.stateFiles != nil {
			s.stateFiles.markAll()
		}
		return 0, s.checkpointFailed(epoch, err)
	}
	s.incr.committed(set, s.inc, settled.written)
	if opts.ParentDir != "" {
		s.st.IncrementalCheckpoints++
		if settled.over {
			s.st.WrittenOver++
		}
	}
	s.st.LastCheckpointWritten, s.st.LastCheckpointChanged = settled.bytes, settled.changed
	s.metrics.written.Add(float64(settled.bytes))
	marks.Committed, marks.Freezing, marks.Frozen = s.clock.Now(), stats.Freezing, stats.Frozen
	return s.committed(set, m, stats, marks, final)
}

// settleDump readies a set CRIU has just written for its manifest: CRIU's log (100
// KiB and more at its default level) is no part of the state and moves out of the set,
// so it is neither checksummed, shipped nor kept per epoch; an incremental set is made
// standalone from its parent (parent, relative to dir), over a set the store is
// dropping where one serves (see retiredFor). criuBytes is what CRIU wrote into dir.
func (s *Supervisor) settleDump(dir, parent string, epoch uint64, criuBytes int64) (settled, error) {
	if err := os.Rename(filepath.Join(dir, checkpoint.DumpLog), s.state.path(lastDumpLog)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Debug("keep CRIU's dump log", "err", err)
		_ = os.Remove(filepath.Join(dir, checkpoint.DumpLog))
	}
	out := settled{bytes: criuBytes}
	if parent == "" {
		return out, nil
	}
	start := s.clock.Now()
	retired := s.retiredFor(epoch)
	st, err := delta.Materialize(dir, filepath.Join(dir, parent), retired)
	over := "none"
	if retired != nil {
		over = filepath.Base(retired.Dir)
		if rerr := os.RemoveAll(retired.Dir); rerr != nil {
			s.log.Warn("remove a retired checkpoint", "dir", retired.Dir, "err", rerr)
		}
	}
	if err != nil {
		return out, fmt.Errorf("incremental dump: %w", err)
	}
	s.log.Debug("incremental dump made standalone", "pages_dumped", st.Dumped, "pages_from_parent", st.FromParent,
		"pages_kept", st.Kept, "over", over, "bytes", st.Bytes, "took", s.clock.Since(start))
	out.written, out.over, out.bytes, out.changed = st.Written, st.Kept > 0, out.bytes+st.Bytes, int64(st.Dumped)*delta.PageSize
	return out, nil
}

// settled is what settleDump did to a set.
type settled struct {
	// written are the pages an incremental dump wrote, per pagemap (nil for a
	// full one); over says it was made standalone over a retired set.
	written map[string][]delta.CopyRun
	over    bool
	bytes   int64 // written into the store: CRIU's images and Materialize's copies
	changed int64 // the pages an incremental dump wrote
}

// retiredFor takes out of the store, for the commit of epoch to write over, a set
// the store would drop once epoch commits and whose pages are still right but for
// those the dumps since wrote (reusable); nil when none qualifies. Only a set older
// than the newest durable one qualifies: fsyncs run in epoch order, so no fsync is
// still working on it, nor will one. With a standby it must also be older than the
// standby's newest: none newer may be on its way to it. Were its removal lost in a
// crash, its manifest would refuse the written-over pages. Taking it before the
// commit means a commit that fails after that leaves the store one set short of
// --keep until the next one commits.
func (s *Supervisor) retiredFor(epoch uint64) *delta.Retired {
	sets, err := s.store.List()
	if err != nil || len(sets) == 0 {
		return nil
	}
	s.incr.forgetBefore(sets[len(sets)-1].Epoch)
	pins := s.rule.pins()
	below := retireBelow(pins, s.link != nil)
	if below == 0 {
		return nil
	}
	drop := checkpoint.Retain(append([]checkpoint.Set{{Epoch: epoch}}, sets...), s.cfg.Keep, pins.Durable, pins.Acked)
	set, since, ok := reusable(drop, s.incr.dumpParent, below, s.incr.history)
	if !ok {
		return nil
	}
	dir, err := s.store.Retire(set, false)
	if err != nil {
		s.log.Debug("retire a checkpoint to write over", "epoch", set.Epoch, "err", err)
		if dir != "" {
			_ = os.RemoveAll(dir)
		}
		return nil
	}
	return &delta.Retired{Dir: dir, Written: since}
}

// dumpOptions are the dump of epoch into dir. Its hooks mark when CRIU announced the
// dump and when it had the program frozen (see phase.Local); the post-dump one also
// cuts the output and captures the state files into *synced.
func (s *Supervisor) dumpOptions(epoch uint64, dir string, final bool, marks *phase.Local, synced *[]checkpoint.SyncedFile) checkpoint.Options {
	opts := checkpoint.Options{ImagesDir: dir, Pid: s.pid, LeaveRunning: !final,
		TCPEstablished: true, TCPClose: dumpClosesTCP(s.cfg.Net != nil), Timeout: s.cfg.CriuTimeout, Enter: s.enter(), MountNS: true,
		OwnCgroupsOnly: true, SystemdMirror: s.cg.Placement.Unit != "", CgroupYard: s.cgYard,
		LogLevel: dumpLogLevel(s.lastCkptErr != "")}
	opts.PostDump = func() (err error) {
		marks.PostDump = s.clock.Now()
		defer func() { marks.HooksDone = s.clock.Now() }()
		// The program is frozen: whatever it sent so far is explained by this
		// epoch, whatever it sends later by a later one.
		if s.gate != nil {
			s.gate.Cut(epoch)
		}
		s.step(epochs.Cut{Epoch: epoch})
		if s.stateFiles != nil {
			*synced, err = s.stateFiles.capture(dir, s.lastManifest, s.lastSetDir)
		}
		return err
	}
	opts.PreDump = func() error {
		marks.PreDump = s.clock.Now()
		return nil
	}
	s.st.TCPDump = tcpDumpText(s.cfg.Net != nil, s.dumpLock != nil)
	if l := s.dumpLock; l != nil {
		// ftrun holds the program's incoming TCP still itself, queued rather than
		// dropped (see gate.DumpLock), from CRIU's start until it lets the program go.
		opts.NetworkLockSkip = true
		opts.PreDump = func() error {
			marks.PreDump = s.clock.Now()
			return l.Lock()
		}
	}
	return opts
}

// dumpLogLevel is CRIU's verbosity for a dump: info (errors, warnings and CRIU's
// steps) while dumps succeed, as CRIU's debug lines (about 1700 writes for a small
// program, most of them while it is frozen) cost a tenth of the frozen time; debug
// after a failure, so that a failure that repeats leaves its whole story in
// last-failed-dump.log.
func dumpLogLevel(lastFailed bool) int {
	if lastFailed {
		return 4
	}
	return 3
}

// committed records a checkpoint just committed: status, metrics, the ladder, the
// background fsync (or, for the final one, an fsync now), the standby, systemd.
func (s *Supervisor) committed(set checkpoint.Set, m *checkpoint.Manifest, stats checkpoint.DumpStats, marks phase.Local, final bool) (uint64, error) {
	epoch := set.Epoch
	// Before the fsync starts: the rule hears of the commit before its durability.
	ready := s.step(epochs.Committed{Epoch: epoch})
	s.lastManifest, s.lastSetDir = m, set.Dir
	total := s.clock.Since(marks.Start)
	s.nextEpoch = epoch + 1
	s.lastCkptErr = ""
	s.resumeOnOutput()
	s.checkpointsOK()
	s.dropAside()
	s.ladder.Committed()
	s.st.Epoch, s.st.LastCheckpoint, s.st.LastFrozen, s.st.LastCheckpointTime = epoch, m.Created, stats.Frozen, total
	s.st.ImageBytes = m.Bytes()
	s.st.Checkpoints++
	s.metrics.checkpoints.WithLabelValues("ok").Inc()
	s.metrics.frozen.Observe(stats.Frozen.Seconds())
	s.metrics.ckptTime.Observe(total.Seconds())
	s.metrics.dumped.Add(float64(m.Bytes()))
	s.metrics.imageBytes.Set(float64(m.Bytes()))
	s.metrics.epoch.Set(float64(epoch))
	if s.link == nil || strings.HasPrefix(s.st.Protection, "protected") {
		s.metrics.protected.Set(1)
	}
	if s.link != nil {
		s.metrics.lag.Set(float64(s.st.Lag()))
	}
	s.st.LastError = ""
	s.log.Debug("checkpoint committed", "epoch", epoch, "frozen", stats.Frozen, "total", total, "bytes", m.Bytes(), "dir", set.Dir)
	if final {
		// ftrun is about to exit: nothing may stay behind in the page cache only.
		if err := s.store.Sync(set); err != nil {
			return 0, s.checkpointFailed(epoch, fmt.Errorf("final checkpoint not durable: %w", err))
		}
		s.step(epochs.Durable{Epoch: epoch})
		s.st.DurableEpoch = epoch
	} else {
		s.syncLater(set)
	}
	s.epochMarked(epoch, marks)
	if ready.Ship == epoch && s.link != nil {
		s.link.offer(set)
	}
	s.incProtected = true
	if !s.ready {
		s.ready = true
		s.log.Info("first checkpoint committed: program is protected", "epoch", epoch, "frozen", stats.Frozen, "bytes", m.Bytes())
		if err := s.cfg.Notifier.Ready(s.status().Summary()); err != nil {
			s.log.Warn("sd_notify READY", "err", err)
		}
	} else {
		s.notifyStatus()
	}
	return epoch, nil
}

// checkpointSkipped records a checkpoint not taken: it did not succeed either, and
// counts against the watchdog's tolerance like a failed one (see watchdog.ShouldPing).
func (s *Supervisor) checkpointSkipped(why string) error {
	s.lastCkptErr = "checkpoint skipped: " + why
	s.pauseOnOutput()
	s.checkpointsFailing("checkpoint skipped: " + why)
	s.metrics.checkpoints.WithLabelValues("skipped").Inc()
	s.log.Warn("checkpoint skipped: " + why)
	return errors.New(why)
}

// outputKeys names the program's stdout and stderr pipes the way CRIU does, so a
// restore can hand it ftrun's pipes in their place.
func (s *Supervisor) outputKeys() map[string]string {
	ext := map[string]string{}
	if k := externalKey(s.pid, 1); k != "" {
		ext["stdout"] = k
	}
	if k := externalKey(s.pid, 2); k != "" {
		ext["stderr"] = k
	}
	return ext
}

func (s *Supervisor) checkpointFailed(epoch uint64, err error) error {
	s.lastCkptErr = err.Error()
	// Output this dump cut waits for the next one, which cuts the same epoch again.
	s.step(epochs.Abandoned{Epoch: epoch})
	s.pauseOnOutput()
	s.metrics.checkpoints.WithLabelValues("failed").Inc()
	s.st.CheckpointFailures++
	s.st.LastError = err.Error()
	s.checkpointsFailing(err.Error())
	if errors.Is(err, checkpoint.ErrNoSpace) {
		err = fmt.Errorf("no space left on device in %q: free some space (earlier checkpoints are intact): %w", s.store.Dir(), err)
	}
	s.log.Error("checkpoint failed; earlier checkpoints are intact", "epoch", epoch, "err", err)
	s.notifyStatus()
	return fmt.Errorf("checkpoint failed; earlier checkpoints are intact: %w", err)
}

// CRIU's log of the newest dump, and of the newest one that failed, in the state dir.
const (
	// cgroupYardDir holds the links CRIU finds the cgroup hierarchies by (see makeCgroupYard).
	cgroupYardDir = "cgroup-yard"
	lastDumpLog   = "last-dump.log"
	failedDumpLog = "last-failed-dump.log"
)

// keepFailedLog saves CRIU's log of a failed dump next to the checkpoints; the image
// directory it was in is removed.
func (s *Supervisor) keepFailedLog(dir string) bool {
	data, err := os.ReadFile(filepath.Join(dir, checkpoint.DumpLog))
	if err != nil {
		return false
	}
	return os.WriteFile(s.state.path(failedDumpLog), data, 0o600) == nil
}

func (s *Supervisor) status() Status {
	s.gateStats()
	st := s.st
	st.Shipping = nil
	if s.link != nil {
		if tr, ok := s.link.shipper.Progress(); ok {
			st.Shipping = &tr
		}
	}
	if !st.LastCheckpoint.IsZero() {
		st.LastCheckpointAge = s.clock.Since(st.LastCheckpoint)
	}
	if !st.FailingSince.IsZero() {
		st.Protection = st.FailingProtection()
	}
	return st
}

// notifyStatus tells systemd the status line; while the watchdog is withheld it
// says why, so `systemctl status` shows the cause before the restart comes.
func (s *Supervisor) notifyStatus() {
	line := s.status().Summary()
	if ok, why := s.watchdogDecision(); !ok && s.cfg.Notifier.WatchdogInterval() > 0 {
		line += "; watchdog withheld: " + why
	}
	if err := s.cfg.Notifier.Status(line); err != nil {
		s.log.Debug("sd_notify STATUS", "err", err)
	}
}

// watchdogDecision gathers watchdog.ShouldPing's input from the loop's state.
func (s *Supervisor) watchdogDecision() (bool, string) {
	prog := watchdog.ProgramDown
	switch {
	case s.alive:
		prog = watchdog.ProgramRunning
	case s.st.State == StateRecovering:
		prog = watchdog.ProgramRecovering
	}
	since := s.startedAt
	if s.incSince.After(since) {
		since = s.incSince
	}
	return watchdog.ShouldPing(watchdog.WatchdogInput{
		Program: prog, LastCheckpointOK: s.st.LastCheckpoint, LastError: s.lastCkptErr,
		Since: since, Tolerance: watchdog.Tolerance(s.cfg.Interval, s.st.LastCheckpointTime),
		Now: s.clock.Now(),
	})
}

// pingWatchdog runs on the loop's own ticker, so a loop that is stuck (or a
// stopped ftrun) stops the pings as surely as a decision to withhold them.
func (s *Supervisor) pingWatchdog() {
	ok, why := s.watchdogDecision()
	if !ok {
		s.log.Warn("withholding systemd watchdog ping: " + why)
		s.notifyStatus()
		return
	}
	if err := s.cfg.Notifier.Watchdog(); err != nil {
		s.log.Debug("sd_notify WATCHDOG", "err", err)
	}
}

// fence stops a program this node may no longer run: another node may be running it
// now, so it is frozen at once (no further output, no further state) and killed,
// without a final checkpoint.
func (s *Supervisor) fence(code int, msg string, cause error) error {
	s.log.Error(msg)
	if err := s.cg.Freeze(); err != nil {
		s.log.Error("freeze", "err", err)
	}
	s.dropNet() // held output dies with the gate
	if err := s.killAll(); err != nil {
		s.log.Error("kill fenced program", "err", err)
	}
	if s.incCancel != nil {
		s.incCancel()
	}
	s.alive = false
	s.st.State = StateFailed
	s.setPhase(PhaseFailed)
	return &ExitErr{Code: code, Err: fmt.Errorf("%w: program frozen and killed", cause)}
}

// shutdown stops the program after a final checkpoint, so the next start resumes it.
func (s *Supervisor) shutdown() error {
	s.shuttingDown = true
	s.st.State = StateStopping
	if err := s.cfg.Notifier.Stopping("stopping: final checkpoint"); err != nil {
		s.log.Debug("sd_notify STOPPING", "err", err)
	}
	if s.alive {
		final := false
		if !s.cfg.NoFinalCheckpoint {
			if epoch, err := s.tryCheckpoint(true); err == nil {
				s.log.Info("final checkpoint committed; the next `ftrun run` resumes from it", "epoch", epoch)
				final = true
			}
		}
		if final {
			if err := s.killAll(); err != nil {
				s.log.Error("stop program", "err", err)
			}
		} else {
			s.stopProgram()
		}
		s.incCancel()
		s.alive = false
		s.setPhase(PhaseStopped)
	}
	s.st.State = StateStopped
	return nil
}

package supervisor

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ftrun/ftrun/failover"

	"golang.org/x/sys/unix"
)

// Files in a service's state directory.
const (
	lockFile       = "lock"
	runFile        = "run.json"
	CheckpointsDir = "checkpoints"
	ControlSocket  = failover.ControlSocket
)

// ErrLocked means another ftrun supervises this state directory.
var ErrLocked = errors.New("state directory in use")

// Phase is what the program was doing when the run record was last written.
type Phase string

const (
	PhaseRunning  Phase = "running"
	PhaseStopped  Phase = "stopped"  // stopped by ftrun after a final checkpoint: restore on next start
	PhaseFinished Phase = "finished" // exited 0 on its own: start fresh next time
	PhaseFailed   Phase = "failed"   // recovery gave up
)

// RunRecord is what a later ftrun needs to find the program this one supervised.
type RunRecord struct {
	Service   string    `json:"service"`
	Command   []string  `json:"command"`
	Pid       int       `json:"pid"`
	StartTime uint64    `json:"start_time"` // /proc stat field 22: guards against PID reuse
	Phase     Phase     `json:"phase"`
	Since     time.Time `json:"since"`
	Ftrun     int       `json:"ftrun_pid"`
}

// stateDir is a service's state directory, held under an exclusive flock while a
// supervisor runs: the kernel drops the lock when ftrun dies, however it dies, so a
// restarted ftrun can take over without anyone cleaning up.
type stateDir struct {
	dir  string
	lock *os.File
}

func lockStateDir(dir string) (*stateDir, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %q: %w", dir, err)
	}
	// The lock is held on a read-only descriptor: a descriptor open for writing would
	// keep the state dir's filesystem from being remounted read-only, and a flock
	// needs no write access.
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock in %q: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(f.Name())
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %q is held by ftrun pid %s (stop it, or use another --state-dir)", ErrLocked, dir, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("lock %q: %w", dir, err)
	}
	if w, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0); err == nil {
		_, _ = w.WriteString(strconv.Itoa(os.Getpid()) + "\n")
		w.Close()
	}
	return &stateDir{dir: dir, lock: f}, nil
}

func (s *stateDir) close() error { return s.lock.Close() }

func (s *stateDir) path(name string) string { return filepath.Join(s.dir, name) }

func readRunRecord(dir string) (*RunRecord, error) {
	data, err := os.ReadFile(filepath.Join(dir, runFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var r RunRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("run record in %q is damaged: %w", dir, err)
	}
	return &r, nil
}

// writeRunRecord replaces the record atomically.
func (s *stateDir) writeRunRecord(r *RunRecord) error {
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path(runFile + ".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write run record: %w", err)
	}
	if err := os.Rename(tmp, s.path(runFile)); err != nil {
		return fmt.Errorf("write run record: %w", err)
	}
	return nil
}

// BootAction is what a starting supervisor does about the program.
type BootAction int

const (
	BootFresh   BootAction = iota // start the command
	BootRestore                   // restore the newest checkpoint (through the ladder)
	BootAdopt                     // a previous ftrun's program still runs: watch it
)

func (b BootAction) String() string {
	switch b {
	case BootFresh:
		return "fresh start"
	case BootRestore:
		return "restore"
	case BootAdopt:
		return "adopt"
	}
	return fmt.Sprintf("boot(%d)", int(b))
}

// BootInput is what a starting supervisor finds.
type BootInput struct {
	Record      *RunRecord // nil when none
	RecordAlive bool       // the recorded PID runs, with the recorded start time, in our cgroup
	CgroupProcs int        // processes in the service's cgroup
	Checkpoints int        // committed image sets
	Discard     bool       // --discard: throw away what was there
}

// BootDecision is what to do, and what to clean up first.
type BootDecision struct {
	Action          BootAction
	KillStrays      bool // kill what is in the cgroup first
	DropCheckpoints bool
	Reason          string
}

// DecideBoot chooses how to start so that there is never more than one copy of the
// program: one that still runs is adopted, anything else in its cgroup is killed before
// a restore or a fresh start.
func DecideBoot(in BootInput) BootDecision {
	strays := in.CgroupProcs > 0
	switch {
	case in.Discard:
		return BootDecision{Action: BootFresh, KillStrays: strays, DropCheckpoints: in.Checkpoints > 0, Reason: "--discard: starting afresh"}
	case in.RecordAlive && in.Record != nil:
		return BootDecision{Action: BootAdopt, Reason: fmt.Sprintf("program pid %d from a previous ftrun still runs: adopting it", in.Record.Pid)}
	case in.Record != nil && in.Record.Phase == PhaseFinished:
		return BootDecision{Action: BootFresh, KillStrays: strays, DropCheckpoints: in.Checkpoints > 0, Reason: "the program finished cleanly last time: starting afresh"}
	case in.Checkpoints > 0:
		why := "program is not running: restoring the newest checkpoint"
		if strays {
			why = "processes left in the cgroup are not the recorded program: killing them, then restoring the newest checkpoint"
		} else if in.Record != nil && in.Record.Phase == PhaseStopped {
			why = "program was stopped with a final checkpoint: restoring it"
		}
		return BootDecision{Action: BootRestore, KillStrays: strays, Reason: why}
	default:
		why := "no checkpoint yet: starting the command"
		if strays {
			why = "killing processes left in the cgroup, then starting the command"
		}
		return BootDecision{Action: BootFresh, KillStrays: strays, Reason: why}
	}
}

// SameCommand reports whether a checkpoint of recorded may be restored for want.
func SameCommand(recorded, want []string) bool {
	return len(recorded) == 0 || slices.Equal(recorded, want)
}

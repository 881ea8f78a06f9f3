package watchdog

import (
	"fmt"
	"time"
)

// Program is what the supervisor's loop is doing with the protected program.
type Program int

const (
	// ProgramDown: the program is not running and nothing is bringing it back.
	ProgramDown Program = iota
	// ProgramRunning: the program runs and is being checkpointed.
	ProgramRunning
	// ProgramRecovering: the recovery ladder is bringing the program back (a restore,
	// a fresh start, or the backoff before one). The ladder is bounded (backoff cap,
	// burst limit, give-up), so vouching for it cannot hide a failure for long.
	ProgramRecovering
)

// WatchdogInput is everything ShouldPing looks at, gathered by the caller so
// that the decision itself needs no clock and no state.
type WatchdogInput struct {
	Program Program
	// LastCheckpointOK is when the newest checkpoint committed (zero: none yet).
	LastCheckpointOK time.Time
	// Since is when the current incarnation began (started, restored or adopted), or
	// supervision began: the grace before its first checkpoint counts from there.
	Since time.Time
	// LastError is why the newest checkpoint attempt failed or was skipped ("" when
	// it committed).
	LastError string
	// Tolerance is how long checkpoints may fail (or not be attempted) before the
	// service stops being vouched for; see Tolerance.
	Tolerance time.Duration
	Now       time.Time
}

// ShouldPing decides whether to send WATCHDOG=1 now. A ping means "ftrun's loop
// is alive and the program is protected or being recovered". A checkpoint that
// fails once (a connection CRIU cannot lock, a full disk for a moment, a program
// stopped while it is dumped) is no reason for systemd to restart ftrun, so
// failures are tolerated until no checkpoint has committed for Tolerance; after
// that a running program would lose more than a few epochs on its next crash, and
// letting systemd restart ftrun is the better outcome. why says what withheld the
// ping, for the log and STATUS=, when ok is false.
func ShouldPing(in WatchdogInput) (ok bool, why string) {
	switch in.Program {
	case ProgramDown:
		return false, "program not running and not being recovered"
	case ProgramRecovering:
		return true, ""
	}
	ref, what := in.LastCheckpointOK, "no checkpoint committed for %s"
	if in.Since.After(ref) {
		// A restored or restarted program gets the same grace as a new one: the age
		// of a checkpoint taken before the crash says nothing about this incarnation.
		ref, what = in.Since, "no checkpoint %s after the program came back"
		if in.LastCheckpointOK.IsZero() {
			what = "no checkpoint yet %s after start"
		}
	}
	waited := in.Now.Sub(ref)
	if waited <= in.Tolerance {
		return true, ""
	}
	why = fmt.Sprintf(what+" (tolerance %s)", roundDur(waited), in.Tolerance)
	if in.LastError != "" {
		why += ": " + in.LastError
	}
	return false, why
}

// Tolerance is how long checkpoints may go without committing before the
// watchdog stops being fed: three epochs, stretched when a checkpoint itself
// takes longer than an epoch (a large program checkpoints back to back), plus
// two seconds so that a short interval does not turn jitter into a restart.
func Tolerance(interval, lastCheckpointTook time.Duration) time.Duration {
	return 3*max(interval, lastCheckpointTook) + 2*time.Second
}

// roundDur keeps reasons readable: nanoseconds of a monotonic clock reading
// say nothing to an operator.
func roundDur(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

package watchdog

import (
	"fmt"
	"time"
)

// WatchdogInput is everything ShouldPing looks at, gathered by the caller so
// that the decision itself needs no clock and no state.
type WatchdogInput struct {
	Alive             bool          // the protected program is running
	LastCheckpointOK  time.Time     // when the last checkpoint committed (zero: none yet)
	LastCheckpointErr bool          // the most recent checkpoint attempt failed
	Started           time.Time     // when supervision started (grace before the first checkpoint)
	MaxCheckpointAge  time.Duration // older than this = checkpoints are not succeeding
	Now               time.Time
}

// ShouldPing decides whether to send WATCHDOG=1 now. A ping is a promise to
// systemd that the service is fault tolerant, so it is withheld not only
// when the program is down but also when checkpoints stop committing: a
// program running without fresh checkpoints would lose work on the next
// crash, and letting systemd restart ftrun is the better outcome. why is a
// short reason for the log when ok is false.
func ShouldPing(in WatchdogInput) (ok bool, why string) {
	switch {
	case !in.Alive:
		return false, "program not running"
	case in.LastCheckpointErr:
		return false, "last checkpoint failed"
	case in.LastCheckpointOK.IsZero():
		// The first dump of a large program can take a while; until
		// MaxCheckpointAge has passed, having none yet is not a failure.
		if waited := in.Now.Sub(in.Started); waited > in.MaxCheckpointAge {
			return false, fmt.Sprintf("no checkpoint yet after %s (max %s)", roundDur(waited), in.MaxCheckpointAge)
		}
		return true, ""
	default:
		if age := in.Now.Sub(in.LastCheckpointOK); age > in.MaxCheckpointAge {
			return false, fmt.Sprintf("no checkpoint for %s (max %s)", roundDur(age), in.MaxCheckpointAge)
		}
		return true, ""
	}
}

// roundDur keeps reasons readable: nanoseconds of a monotonic clock reading
// say nothing to an operator.
func roundDur(d time.Duration) time.Duration {
	if d >= time.Second {
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}

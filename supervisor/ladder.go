package supervisor

import (
	"fmt"
	"time"
)

// Rung is one step of the recovery ladder, cheapest first (Microreboot: try the cheap
// recovery, escalate only when it does not hold).
type Rung int

const (
	// RungRestore restores a checkpoint (Attempt.Epoch).
	RungRestore Rung = iota
	// RungFresh starts the command again from nothing: the program's state is lost.
	RungFresh
	// RungGiveUp stops trying; ftrun exits with ExitGaveUp.
	RungGiveUp
)

func (r Rung) String() string {
	switch r {
	case RungRestore:
		return "restore"
	case RungFresh:
		return "fresh-start"
	case RungGiveUp:
		return "give-up"
	}
	return fmt.Sprintf("rung(%d)", int(r))
}

// LadderPolicy bounds recovery, like systemd's StartLimitBurst/StartLimitIntervalSec
// and RestartSec: a program that crashes right after every restore must not spin.
type LadderPolicy struct {
	// Burst is how many crashes are recovered within Window before giving up.
	Burst int
	// Window is the period Burst is counted over.
	Window time.Duration
	// BackoffBase is the delay before the second attempt of an episode; it doubles for
	// each further crash in the same episode. The first attempt is immediate.
	BackoffBase time.Duration
	// BackoffMax caps the delay.
	BackoffMax time.Duration
	// NoFresh forbids the fresh-start rung: losing the program's state is worse than
	// staying down.
	NoFresh bool
}

// DefaultLadderPolicy is what `ftrun run` uses without flags.
var DefaultLadderPolicy = LadderPolicy{Burst: 5, Window: time.Minute, BackoffBase: 200 * time.Millisecond, BackoffMax: 10 * time.Second}

// Attempt is what the ladder decided to do next.
type Attempt struct {
	Rung   Rung
	Epoch  uint64        // with RungRestore
	Delay  time.Duration // wait this long first
	Reason string        // why this rung, for the log
}

// Ladder is the recovery policy's state. An episode starts with a crash and ends when a
// checkpoint is committed after the recovery (the program has shown it runs). While an
// episode lasts, every checkpoint tried is suspect: a crash before the next commit means
// the restored state itself may be what kills the program, so the next attempt climbs
// to an older checkpoint, then to a fresh start.
type Ladder struct {
	policy  LadderPolicy
	crashes []time.Time
	// episode state
	inEpisode bool
	tried     map[uint64]bool
	retried   map[uint64]bool
	freshDone bool
	crashesIn int // crashes within this episode
}

// NewLadder returns a ladder with policy p.
func NewLadder(p LadderPolicy) *Ladder {
	if p.Burst <= 0 {
		p.Burst = DefaultLadderPolicy.Burst
	}
	if p.Window <= 0 {
		p.Window = DefaultLadderPolicy.Window
	}
	return &Ladder{policy: p, tried: map[uint64]bool{}, retried: map[uint64]bool{}}
}

// Crashed is called when the program died (or was killed as hung). candidates are the
// committed epochs, newest first.
func (l *Ladder) Crashed(now time.Time, candidates []uint64) Attempt {
	keep := l.crashes[:0]
	for _, t := range l.crashes {
		if now.Sub(t) < l.policy.Window {
			keep = append(keep, t)
		}
	}
	l.crashes = append(keep, now)
	if len(l.crashes) > l.policy.Burst {
		return Attempt{Rung: RungGiveUp, Reason: fmt.Sprintf("crashed %d times within %s (limit %d)", len(l.crashes), l.policy.Window, l.policy.Burst)}
	}
	if !l.inEpisode {
		l.inEpisode = true
		l.tried = map[uint64]bool{}
		l.freshDone = false
		l.crashesIn = 0
	}
	l.crashesIn++
	a := l.next(candidates, "")
	if l.crashesIn > 1 && a.Rung != RungGiveUp {
		a.Delay = l.backoff(l.crashesIn - 1)
		a.Reason = "crashed again before a new checkpoint; " + a.Reason
	}
	return a
}

// Failed is called when an attempt itself failed (CRIU refused, the image set was
// corrupt, the command could not be started); the next rung is tried at once.
func (l *Ladder) Failed(candidates []uint64, why string) Attempt {
	if !l.inEpisode {
		l.inEpisode = true
		l.tried = map[uint64]bool{}
	}
	return l.next(candidates, why)
}

// RestoreFailed is called when the restore of epoch failed. When CRIU itself died
// (killed from outside: the checkpoint is not to blame), the same epoch is tried once
// more before an older one: behind the output gate, clients may have seen output that
// only the newest epoch explains, so leaving it for an older one loses what they saw.
func (l *Ladder) RestoreFailed(candidates []uint64, epoch uint64, why string, criuDied bool) Attempt {
	if criuDied && !l.retried[epoch] {
		l.retried[epoch] = true
		if !l.inEpisode {
			l.inEpisode = true
			l.tried = map[uint64]bool{epoch: true}
		}
		return Attempt{Rung: RungRestore, Epoch: epoch, Reason: why + fmt.Sprintf("; CRIU died, not the checkpoint: restoring epoch %d again", epoch)}
	}
	return l.Failed(candidates, why)
}

// Committed ends the episode: a checkpoint was taken after the recovery, so the
// program runs again and its newest state is no longer suspect.
func (l *Ladder) Committed() {
	l.inEpisode = false
	l.tried = map[uint64]bool{}
	l.retried = map[uint64]bool{}
	l.freshDone = false
	l.crashesIn = 0
}

func (l *Ladder) next(candidates []uint64, why string) Attempt {
	prefix := ""
	if why != "" {
		prefix = why + "; "
	}
	for i, e := range candidates {
		if l.tried[e] {
			continue
		}
		l.tried[e] = true
		what := "newest checkpoint"
		if i > 0 {
			what = "an older checkpoint"
		}
		return Attempt{Rung: RungRestore, Epoch: e, Reason: prefix + fmt.Sprintf("restoring %s (epoch %d)", what, e)}
	}
	if l.policy.NoFresh {
		if len(candidates) == 0 {
			return Attempt{Rung: RungGiveUp, Reason: prefix + "no checkpoint to restore and fresh starts are disabled (--no-fresh)"}
		}
		return Attempt{Rung: RungGiveUp, Reason: prefix + "every checkpoint was tried and fresh starts are disabled (--no-fresh)"}
	}
	if l.freshDone {
		return Attempt{Rung: RungGiveUp, Reason: prefix + "a fresh start did not hold either"}
	}
	l.freshDone = true
	if len(candidates) == 0 {
		return Attempt{Rung: RungFresh, Reason: prefix + "no checkpoint yet: starting the command afresh"}
	}
	return Attempt{Rung: RungFresh, Reason: prefix + "every checkpoint was tried: starting the command afresh (its state is lost)"}
}

func (l *Ladder) backoff(n int) time.Duration {
	d := l.policy.BackoffBase
	for i := 1; i < n && d < l.policy.BackoffMax; i++ {
		d *= 2
	}
	if l.policy.BackoffMax > 0 && d > l.policy.BackoffMax {
		d = l.policy.BackoffMax
	}
	return d
}

package watchdog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"
)

// HealthConfig says how often and how patiently to probe. One failed probe
// is noise (a GC pause, a slow disk); only Threshold failures in a row make
// the program unhealthy, which is what the supervisor acts on.
type HealthConfig struct {
	Interval    time.Duration // between probe starts (default 1s if zero)
	Timeout     time.Duration // per probe (default 2s if zero)
	Threshold   int           // consecutive failures that make the program unhealthy (default 3 if <= 0)
	StartPeriod time.Duration // failures during this grace after Run starts do not count (default 0)
}

const (
	defaultInterval  = time.Second
	defaultTimeout   = 2 * time.Second
	defaultThreshold = 3
)

// withDefaults makes the zero HealthConfig usable, so callers only set what
// they mean to change.
func (c HealthConfig) withDefaults() HealthConfig {
	if c.Interval <= 0 {
		c.Interval = defaultInterval
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultTimeout
	}
	if c.Threshold <= 0 {
		c.Threshold = defaultThreshold
	}
	if c.StartPeriod < 0 {
		c.StartPeriod = 0
	}
	return c
}

// Result is one probe's outcome together with the verdict so far, so a
// consumer can both log individual failures and act on Unhealthy alone.
type Result struct {
	Time        time.Time // set by Checker from the clock (Tracker leaves it zero)
	Err         error     // the probe's error, nil when it passed
	Consecutive int       // consecutive failures so far (0 after a pass)
	Unhealthy   bool      // Consecutive >= threshold
}

// Tracker counts consecutive failures. It is kept apart from the Checker's
// timing so the verdict can be tested without a clock, and reused by a
// caller that gathers its evidence some other way.
type Tracker struct {
	threshold   int
	consecutive int
}

// NewTracker uses the same default as HealthConfig when threshold <= 0,
// because a threshold of zero would call a program that never failed
// unhealthy.
func NewTracker(threshold int) *Tracker {
	if threshold <= 0 {
		threshold = defaultThreshold
	}
	return &Tracker{threshold: threshold}
}

// Observe takes one probe outcome. A single pass clears the count: the
// question is whether the program is answering now, not how often it failed.
func (t *Tracker) Observe(err error) Result {
	if err == nil {
		t.consecutive = 0
	} else {
		t.consecutive++
	}
	return Result{
		Err:         err,
		Consecutive: t.consecutive,
		Unhealthy:   t.consecutive >= t.threshold,
	}
}

// Reset forgets past failures, e.g. after the program was restarted: the new
// instance has not failed anything yet.
func (t *Tracker) Reset() { t.consecutive = 0 }

// inStartPeriod decides whether a probe begun at begin falls into the grace
// after started, during which a program still starting up is not held to
// its probes.
func inStartPeriod(started, begin time.Time, period time.Duration) bool {
	return begin.Sub(started) < period
}

// nextStart decides when the probe after one begun at begin may start.
// Probes are spaced by start time so a slow probe does not stretch the
// period, but never overlap: a probe that overran its interval is followed
// at once by the next, as soon as it ends.
func nextStart(begin, now time.Time, interval time.Duration) time.Duration {
	if wait := begin.Add(interval).Sub(now); wait > 0 {
		return wait
	}
	return 0
}

// Checker turns a Probe into a stream of Results on the injected clock.
type Checker struct {
	Probe  Probe
	Config HealthConfig
	Clock  clockwork.Clock // nil means the real clock
}

// Run probes immediately, then every Interval, each probe bounded by
// Timeout, and sends every Result to out. The send blocks, because dropping
// a result could hide the one that crosses the threshold; it gives up only
// when ctx is done. Run returns nil after ctx is cancelled and the probe it
// started, if any, has returned.
func (c *Checker) Run(ctx context.Context, out chan<- Result) error {
	if c.Probe == nil {
		return errors.New("health checker: no probe configured")
	}
	clock := c.Clock
	if clock == nil {
		clock = clockwork.NewRealClock()
	}
	cfg := c.Config.withDefaults()
	tracker := NewTracker(cfg.Threshold)
	started := clock.Now()

	for ctx.Err() == nil {
		begin := clock.Now()
		err := c.probeOnce(ctx, clock, cfg.Timeout)
		if ctx.Err() != nil {
			// A probe cut short by shutdown says nothing about the program.
			return nil
		}
		var r Result
		if err != nil && inStartPeriod(started, begin, cfg.StartPeriod) {
			r = Result{Err: err}
		} else {
			r = tracker.Observe(err)
		}
		r.Time = clock.Now()
		select {
		case out <- r:
		case <-ctx.Done():
			return nil
		}

		if wait := nextStart(begin, clock.Now(), cfg.Interval); wait > 0 {
			t := clock.NewTimer(wait)
			select {
			case <-t.Chan():
			case <-ctx.Done():
				t.Stop()
				return nil
			}
		}
	}
	return nil
}

// probeOnce runs the probe in a goroutine only so the timeout can be watched
// on the injected clock (context.WithTimeout would use the real one); it
// always waits for that goroutine before returning.
func (c *Checker) probeOnce(ctx context.Context, clock clockwork.Clock, timeout time.Duration) error {
	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	done := make(chan error, 1)
	go func() { done <- c.Probe.Check(pctx) }()

	t := clock.NewTimer(timeout)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.Chan():
		timedOut := fmt.Errorf("no answer within %s: %w", timeout, context.DeadlineExceeded)
		cancel(timedOut)
		err := <-done
		if err != nil && !errors.Is(err, timedOut) {
			// Not every probe reports context.Cause; the timeout is the
			// part an operator needs.
			err = fmt.Errorf("%s: %w: %w", c.Probe, timedOut, err)
		}
		return err
	}
}

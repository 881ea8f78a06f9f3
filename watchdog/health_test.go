package watchdog

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

func TestHealthConfigDefaults(t *testing.T) {
	tests := []struct {
		name string
		in   HealthConfig
		want HealthConfig
	}{
		{"zero", HealthConfig{}, HealthConfig{Interval: time.Second, Timeout: 2 * time.Second, Threshold: 3}},
		{"negative", HealthConfig{Interval: -1, Timeout: -1, Threshold: -1, StartPeriod: -1}, HealthConfig{Interval: time.Second, Timeout: 2 * time.Second, Threshold: 3}},
		{"set", HealthConfig{Interval: 5 * time.Second, Timeout: time.Second, Threshold: 1, StartPeriod: time.Minute}, HealthConfig{Interval: 5 * time.Second, Timeout: time.Second, Threshold: 1, StartPeriod: time.Minute}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.in.withDefaults(); got != tt.want {
				t.Errorf("withDefaults() = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestTracker(t *testing.T) {
	fail := errors.New("no answer")
	type obs struct {
		err         error
		consecutive int
		unhealthy   bool
	}
	tests := []struct {
		name      string
		threshold int
		reset     int // Reset before this observation index (-1: never)
		seq       []obs
	}{
		{
			name: "threshold reached", threshold: 3, reset: -1,
			seq: []obs{{fail, 1, false}, {fail, 2, false}, {fail, 3, true}, {fail, 4, true}},
		},
		{
			name: "a pass resets the count", threshold: 3, reset: -1,
			seq: []obs{{fail, 1, false}, {fail, 2, false}, {nil, 0, false}, {fail, 1, false}},
		},
		{
			name: "recovery after unhealthy", threshold: 2, reset: -1,
			seq: []obs{{fail, 1, false}, {fail, 2, true}, {nil, 0, false}, {nil, 0, false}},
		},
		{
			name: "threshold 1", threshold: 1, reset: -1,
			seq: []obs{{nil, 0, false}, {fail, 1, true}},
		},
		{
			name: "default threshold for zero", threshold: 0, reset: -1,
			seq: []obs{{fail, 1, false}, {fail, 2, false}, {fail, 3, true}},
		},
		{
			name: "Reset forgets failures", threshold: 3, reset: 2,
			seq: []obs{{fail, 1, false}, {fail, 2, false}, {fail, 1, false}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := NewTracker(tt.threshold)
			for i, o := range tt.seq {
				if i == tt.reset {
					tr.Reset()
				}
				r := tr.Observe(o.err)
				want := Result{Err: o.err, Consecutive: o.consecutive, Unhealthy: o.unhealthy}
				if r != want {
					t.Errorf("observation %d: %+v, want %+v", i, r, want)
				}
			}
		})
	}
}

func TestInStartPeriod(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		begin  time.Duration
		period time.Duration
		want   bool
	}{
		{0, 0, false},
		{0, time.Second, true},
		{999 * time.Millisecond, time.Second, true},
		{time.Second, time.Second, false},
		{2 * time.Second, time.Second, false},
	}
	for _, tt := range tests {
		if got := inStartPeriod(t0, t0.Add(tt.begin), tt.period); got != tt.want {
			t.Errorf("inStartPeriod(+%v, period %v) = %v, want %v", tt.begin, tt.period, got, tt.want)
		}
	}
}

func TestNextStart(t *testing.T) {
	t0 := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		now      time.Duration // after begin
		interval time.Duration
		want     time.Duration
	}{
		{"instant probe waits the whole interval", 0, time.Second, time.Second},
		{"slow probe shortens the wait", 300 * time.Millisecond, time.Second, 700 * time.Millisecond},
		{"probe as long as the interval", time.Second, time.Second, 0},
		{"overrunning probe: next at once", 3 * time.Second, time.Second, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := nextStart(t0, t0.Add(tt.now), tt.interval); got != tt.want {
				t.Errorf("nextStart() = %v, want %v", got, tt.want)
			}
		})
	}
}

// probeCall is one Check in progress; the test answers it through reply or
// lets it run into its context.
type probeCall struct {
	at    time.Time
	ctx   context.Context
	reply chan error
}

// scriptedProbe hands every Check to the test, so the test decides when and
// how each probe ends while the Checker under test runs for real.
type scriptedProbe struct {
	clock   clockwork.Clock
	calls   chan probeCall
	active  atomic.Int32
	overlap atomic.Bool
}

func newScriptedProbe(clock clockwork.Clock) *scriptedProbe {
	return &scriptedProbe{clock: clock, calls: make(chan probeCall)}
}

func (p *scriptedProbe) String() string { return "scripted" }

func (p *scriptedProbe) Check(ctx context.Context) error {
	if p.active.Add(1) > 1 {
		p.overlap.Store(true)
	}
	defer p.active.Add(-1)
	c := probeCall{at: p.clock.Now(), ctx: ctx, reply: make(chan error, 1)}
	select {
	case p.calls <- c:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	select {
	case err := <-c.reply:
		return err
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// guard bounds every wait in these tests so that a bug fails the test
// instead of hanging it; nothing in the logic under test uses real time.
const guard = 2 * time.Second

type checkerHarness struct {
	t      *testing.T
	ctx    context.Context
	cancel context.CancelFunc
	clock  *clockwork.FakeClock
	t0     time.Time
	probe  *scriptedProbe
	out    chan Result
	done   chan error
}

func startChecker(t *testing.T, cfg HealthConfig) *checkerHarness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*guard)
	clock := clockwork.NewFakeClock()
	h := &checkerHarness{
		t: t, ctx: ctx, cancel: cancel, clock: clock, t0: clock.Now(),
		probe: newScriptedProbe(clock),
		out:   make(chan Result),
		done:  make(chan error, 1),
	}
	c := &Checker{Probe: h.probe, Config: cfg, Clock: clock}
	go func() { h.done <- c.Run(ctx, h.out) }()
	t.Cleanup(func() {
		cancel()
		h.waitDone()
	})
	return h
}

// waitDone is the owner's wait: Run must return, and with it every probe it
// started.
func (h *checkerHarness) waitDone() {
	h.t.Helper()
	select {
	case err, ok := <-h.done:
		if !ok {
			return
		}
		close(h.done)
		if err != nil {
			h.t.Errorf("Run() = %v, want nil after cancel", err)
		}
	case <-time.After(guard):
		h.t.Fatal("Run did not return after cancel")
	}
	if n := h.probe.active.Load(); n != 0 {
		h.t.Errorf("%d probe(s) still running after Run returned", n)
	}
}

func (h *checkerHarness) call() probeCall {
	h.t.Helper()
	select {
	case c := <-h.probe.calls:
		return c
	case <-time.After(guard):
		h.t.Fatal("probe was not called")
		return probeCall{}
	}
}

func (h *checkerHarness) result() Result {
	h.t.Helper()
	select {
	case r := <-h.out:
		return r
	case <-time.After(guard):
		h.t.Fatal("no result")
		return Result{}
	}
}

// advance moves the fake clock once the Checker is parked on its one timer
// (the interval wait or the probe timeout).
func (h *checkerHarness) advance(d time.Duration) {
	h.t.Helper()
	if err := h.clock.BlockUntilContext(h.ctx, 1); err != nil {
		h.t.Fatalf("checker never waited on the clock: %v", err)
	}
	h.clock.Advance(d)
}

func (h *checkerHarness) probeAt(at time.Duration, err error) Result {
	h.t.Helper()
	c := h.call()
	if got := c.at.Sub(h.t0); got != at {
		h.t.Fatalf("probe started at +%v, want +%v", got, at)
	}
	c.reply <- err
	r := h.result()
	if got := r.Time.Sub(h.t0); got != at {
		h.t.Errorf("result time +%v, want +%v", got, at)
	}
	return r
}

func TestCheckerFirstProbeImmediatelyThenEveryInterval(t *testing.T) {
	h := startChecker(t, HealthConfig{Interval: time.Second, Timeout: 500 * time.Millisecond})
	if r := h.probeAt(0, nil); r.Err != nil || r.Consecutive != 0 || r.Unhealthy {
		t.Errorf("first result = %+v, want a pass", r)
	}

	h.advance(999 * time.Millisecond)
	select {
	case c := <-h.probe.calls:
		t.Fatalf("probe at +%v, before the interval was up", c.at.Sub(h.t0))
	case <-time.After(20 * time.Millisecond):
	}
	h.advance(time.Millisecond)
	h.probeAt(time.Second, nil)

	h.advance(time.Second)
	h.probeAt(2*time.Second, nil)
}

func TestCheckerThresholdAndRecovery(t *testing.T) {
	h := startChecker(t, HealthConfig{Interval: time.Second, Threshold: 3})
	fail := errors.New("connection refused")
	want := []Result{
		{Err: fail, Consecutive: 1},
		{Err: fail, Consecutive: 2},
		{Err: fail, Consecutive: 3, Unhealthy: true},
		{Err: fail, Consecutive: 4, Unhealthy: true},
		{Consecutive: 0},
		{Err: fail, Consecutive: 1},
	}
	for i, w := range want {
		at := time.Duration(i) * time.Second
		if i > 0 {
			h.advance(time.Second)
		}
		r := h.probeAt(at, w.Err)
		r.Time = time.Time{}
		if r != w {
			t.Errorf("probe %d: %+v, want %+v", i, r, w)
		}
	}
}

func TestCheckerTimeout(t *testing.T) {
	h := startChecker(t, HealthConfig{Interval: time.Second, Timeout: 400 * time.Millisecond, Threshold: 1})
	c := h.call()
	h.advance(400 * time.Millisecond)
	select {
	case <-c.ctx.Done():
	case <-time.After(guard):
		t.Fatal("probe context not cancelled at the timeout")
	}
	r := h.result()
	if !errors.Is(r.Err, context.DeadlineExceeded) || !strings.Contains(r.Err.Error(), "no answer within 400ms") {
		t.Errorf("Err = %v, want a timeout after 400ms", r.Err)
	}
	if !r.Unhealthy || r.Time.Sub(h.t0) != 400*time.Millisecond {
		t.Errorf("result = %+v, want unhealthy at +400ms", r)
	}
	// The interval counts from the start of the timed-out probe.
	h.advance(600 * time.Millisecond)
	h.probeAt(time.Second, nil)
}

func TestCheckerTimeoutNamedWhenProbeIgnoresCause(t *testing.T) {
	clock := clockwork.NewFakeClock()
	ctx, cancel := context.WithTimeout(context.Background(), guard)
	defer cancel()
	probe := funcProbe(func(ctx context.Context) error {
		<-ctx.Done()
		return errors.New("killed")
	})
	out := make(chan Result)
	done := make(chan error, 1)
	c := &Checker{Probe: probe, Config: HealthConfig{Timeout: time.Second}, Clock: clock}
	go func() { done <- c.Run(ctx, out) }()

	if err := clock.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	var r Result
	select {
	case r = <-out:
	case <-ctx.Done():
		t.Fatal("no result")
	}
	if got, want := r.Err.Error(), "func: no answer within 1s: context deadline exceeded: killed"; got != want {
		t.Errorf("Err = %q, want %q", got, want)
	}
	if !errors.Is(r.Err, context.DeadlineExceeded) {
		t.Errorf("Err %v does not match context.DeadlineExceeded", r.Err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v", err)
	}
}

func TestCheckerDoesNotOverlapProbes(t *testing.T) {
	h := startChecker(t, HealthConfig{Interval: time.Second, Timeout: 10 * time.Second})
	c := h.call()
	// Three intervals pass while the first probe is still running.
	h.advance(3 * time.Second)
	c.reply <- nil
	if r := h.result(); r.Time.Sub(h.t0) != 3*time.Second {
		t.Errorf("first result at +%v, want +3s", r.Time.Sub(h.t0))
	}
	// The next probe starts as soon as the slow one ended, not three times.
	h.probeAt(3*time.Second, nil)
	h.advance(time.Second)
	h.probeAt(4*time.Second, nil)
	if h.probe.overlap.Load() {
		t.Error("two probes ran at once")
	}
}

func TestCheckerStartPeriod(t *testing.T) {
	h := startChecker(t, HealthConfig{Interval: time.Second, Threshold: 1, StartPeriod: 2 * time.Second})
	fail := errors.New("still loading")
	want := []Result{
		{Err: fail}, // +0s: in grace
		{Err: fail}, // +1s: in grace
		{Err: fail, Consecutive: 1, Unhealthy: true}, // +2s: grace over
		{Consecutive: 0}, // +3s: recovered
		{Err: fail, Consecutive: 1, Unhealthy: true}, // +4s
	}
	for i, w := range want {
		if i > 0 {
			h.advance(time.Second)
		}
		r := h.probeAt(time.Duration(i)*time.Second, w.Err)
		r.Time = time.Time{}
		if r != w {
			t.Errorf("probe %d: %+v, want %+v", i, r, w)
		}
	}
}

func TestCheckerStopsOnCancel(t *testing.T) {
	tests := []struct {
		name string
		// park brings the Checker to the state in which it is cancelled.
		park func(h *checkerHarness)
	}{
		{"while a probe runs", func(h *checkerHarness) {
			h.call()
		}},
		{"while waiting for the interval", func(h *checkerHarness) {
			h.probeAt(0, nil)
			if err := h.clock.BlockUntilContext(h.ctx, 1); err != nil {
				h.t.Fatal(err)
			}
		}},
		{"while nobody reads results", func(h *checkerHarness) {
			h.call().reply <- nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := startChecker(t, HealthConfig{Interval: time.Second, Timeout: time.Minute})
			tt.park(h)
			h.cancel()
			h.waitDone()
		})
	}
}

func TestCheckerWithoutProbe(t *testing.T) {
	c := &Checker{Clock: clockwork.NewFakeClock()}
	if err := c.Run(context.Background(), make(chan Result)); err == nil {
		t.Error("Run() without a probe succeeded")
	}
}

type funcProbe func(context.Context) error

func (f funcProbe) Check(ctx context.Context) error { return f(ctx) }
func (f funcProbe) String() string                  { return "func" }

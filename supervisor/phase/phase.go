// Package phase splits one epoch's commit latency (checkpoint start -> the standby's
// ack, and the output it explains let out) into the phases it went through, and keeps
// a recent window of them for percentiles.
//
// The split is computed from instants the supervisor, the shipper and CRIU's own
// statistics record, so that the phases are disjoint and add up to the commit
// latency by construction: each phase is the gap between two consecutive marks, and
// the parts CRIU measures inside its run (freezing, frozen) are cut out of the gap
// between its pre-dump and post-dump notifications. Everything here is pure: no clock,
// no I/O.
package phase

import (
	"slices"
	"time"
)

// Name is one phase of an epoch.
type Name string

// The phases in the order an epoch goes through them.
const (
	// Scan: from the checkpoint's start to CRIU's start (the scan of files the
	// program writes that a checkpoint does not carry, the dump options).
	Scan Name = "scan"
	// CriuStart: CRIU started (the swrk process, its RPC, its kernel probe) until it
	// announced the dump (its pre-dump notification).
	CriuStart Name = "criu_start"
	// CriuInit: CRIU's setup before it stops the program (cgroups, inventory).
	CriuInit Name = "criu_init"
	// Freeze: CRIU stopping every task of the program (its freezing_time).
	Freeze Name = "freeze"
	// Dump: the program frozen while CRIU dumps it, hooks excluded.
	Dump Name = "dump"
	// Hooks: ftrun's post-dump work while the program is frozen (the output gate's
	// cut, the state files' capture).
	Hooks Name = "hooks"
	// CriuFinish: from the end of the hooks to CRIU's return (letting the program go,
	// closing the images, CRIU's exit).
	CriuFinish Name = "criu_finish"
	// Manifest: checksumming the set and committing it locally (manifest, rename).
	Manifest Name = "manifest"
	// Queue: committed locally until the link started shipping it (the link busy
	// with an earlier epoch).
	Queue Name = "queue"
	// Delta: computing what changed against the standby's base.
	Delta Name = "delta"
	// Send: writing the epoch's frames to the standby.
	Send Name = "send"
	// Apply, Verify, Durable: the standby rebuilding the set from its base and the
	// delta, checking it against the manifest, and committing it durably. They come
	// from the standby, in its Ack.
	Apply   Name = "apply"
	Verify  Name = "verify"
	Durable Name = "durable"
	// Ack: the rest of the wait for the ack (the network both ways, the standby's
	// reading and checks outside apply/verify/durable, its queueing).
	Ack Name = "ack"
	// Release: letting out the output the epoch explains (the gate's verdicts). The
	// commit ends here: when the supervisor's loop hears of it later (it may be inside
	// the next checkpoint) is no part of the epoch's latency.
	Release Name = "release"
)

// All lists the phases in order.
var All = []Name{Scan, CriuStart, CriuInit, Freeze, Dump, Hooks, CriuFinish, Manifest,
	Queue, Delta, Send, Apply, Verify, Durable, Ack, Release}

// Local is what the primary records of an epoch up to its local commit.
type Local struct {
	Start      time.Time // the checkpoint's start: commit latency counts from here
	CriuCalled time.Time // the dump asked of CRIU
	PreDump    time.Time // CRIU's pre-dump notification (zero: none came)
	PostDump   time.Time // CRIU's post-dump notification: the program is frozen
	HooksDone  time.Time // ftrun's post-dump work done
	CriuDone   time.Time // CRIU returned
	Committed  time.Time // the set committed locally
	// Freezing and Frozen are CRIU's own figures (dump stats): stopping the tasks,
	// and stopped from then on until CRIU let them go.
	Freezing, Frozen time.Duration
}

// Standby is what the standby measured of its commit of the epoch.
type Standby struct {
	Apply, Verify, Durable time.Duration
}

// Ship is what the link recorded of shipping the epoch.
type Ship struct {
	Started  time.Time // the link took the set
	Diffed   time.Time // the delta was computed
	Sent     time.Time // the last frame was written
	Acked    time.Time // the ack arrived
	Released time.Duration
	// Standby is nil when the standby does not report its phases (an older one).
	Standby *Standby
}

// Breakdown is one epoch's phases. A phase the epoch did not go through (no
// standby, or a standby that does not report its own) is absent.
type Breakdown map[Name]time.Duration

// Total is the sum of the phases.
func (b Breakdown) Total() time.Duration {
	var t time.Duration
	for _, d := range b {
		t += d
	}
	return t
}

// gap is b - a, or 0 when either is unknown or time ran backwards.
func gap(a, b time.Time) time.Duration {
	if a.IsZero() || b.IsZero() || b.Before(a) {
		return 0
	}
	return b.Sub(a)
}

// OfLocal splits the epoch up to its local commit.
func OfLocal(l Local) Breakdown {
	b := Breakdown{Scan: gap(l.Start, l.CriuCalled), Manifest: gap(l.CriuDone, l.Committed)}
	pre := l.PreDump
	if pre.IsZero() {
		// No notifications (they are asked for with hooks only): CRIU's whole run
		// counts as its start and its dump.
		b[CriuStart] = gap(l.CriuCalled, l.CriuDone)
		return b
	}
	b[CriuStart] = gap(l.CriuCalled, pre)
	hooksDone := l.HooksDone
	if hooksDone.IsZero() {
		hooksDone = l.PostDump
	}
	// CRIU's frozen time runs from the end of its freezing until it lets the program
	// go, just after the hooks; so counted back from there, what precedes the
	// freezing is CRIU's setup. The clamps keep the parts inside what the wall clock saw.
	inCriu := gap(pre, hooksDone)
	hooks := gap(l.PostDump, hooksDone)
	frozen := min(max(l.Frozen, hooks), inCriu)
	freezing := min(l.Freezing, inCriu-frozen)
	hooks = min(hooks, frozen)
	b[Freeze], b[Dump], b[Hooks] = freezing, frozen-hooks, hooks
	b[CriuInit] = inCriu - frozen - freezing
	b[CriuFinish] = gap(hooksDone, l.CriuDone)
	return b
}

// Of splits a shipped epoch from its start to the end of its release.
func Of(l Local, s Ship) Breakdown {
	b := OfLocal(l)
	b[Queue] = gap(l.Committed, s.Started)
	b[Delta] = gap(s.Started, s.Diffed)
	b[Send] = gap(s.Diffed, s.Sent)
	wait := gap(s.Sent, s.Acked)
	if st := s.Standby; st != nil {
		b[Apply], b[Verify], b[Durable] = st.Apply, st.Verify, st.Durable
		wait = max(wait-st.Apply-st.Verify-st.Durable, 0)
	}
	b[Ack] = wait
	b[Release] = s.Released
	return b
}

// Quantiles is a phase's median, 99th percentile and mean over the window. The means
// of all phases add up to the mean commit latency; the medians need not.
type Quantiles struct {
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	Mean time.Duration `json:"mean_ns"`
}

// Window keeps the breakdowns of the last N epochs.
type Window struct {
	n    int
	last []Breakdown
}

// NewWindow keeps n epochs (n < 1 means 1).
func NewWindow(n int) *Window { return &Window{n: max(n, 1)} }

// Add records one epoch, dropping the oldest beyond the window.
func (w *Window) Add(b Breakdown) {
	w.last = append(w.last, b)
	if len(w.last) > w.n {
		w.last = slices.Delete(w.last, 0, len(w.last)-w.n)
	}
}

// Len is how many epochs the window holds.
func (w *Window) Len() int { return len(w.last) }

// Quantiles are each phase's p50, p99 and mean over the epochs in the window that went
// through it; phases none went through are absent.
func (w *Window) Quantiles() map[Name]Quantiles {
	out := map[Name]Quantiles{}
	for _, n := range All {
		var ds []time.Duration
		for _, b := range w.last {
			if d, ok := b[n]; ok {
				ds = append(ds, d)
			}
		}
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		var sum time.Duration
		for _, d := range ds {
			sum += d
		}
		out[n] = Quantiles{P50: ds[len(ds)/2], P99: ds[min(len(ds)-1, len(ds)*99/100)], Mean: sum / time.Duration(len(ds))}
	}
	return out
}

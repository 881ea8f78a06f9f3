// Package progress measures one long transfer (an epoch shipped to or received by a
// standby): bytes done, the rate, and when it is time to say so in the log. A full
// resync or a large first epoch can take many seconds; operators see it move in the
// log and in `ftrun status` instead of a silent wait.
//
// A Meter is safe for concurrent use: the transfer's goroutine adds bytes, status
// readers take snapshots. Whether a line is due is a pure rule of the injected clock.
package progress

import (
	"fmt"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
)

// Defaults: a line every Every once a transfer has run that long.
const Every = time.Second

// Transfer is one transfer's progress.
type Transfer struct {
	Epoch uint64 `json:"epoch"`
	Full  bool   `json:"full"`
	// Done bytes of Total (0: not known in advance).
	Done    int64     `json:"done_bytes"`
	Total   int64     `json:"total_bytes,omitempty"`
	Started time.Time `json:"started"`
	// Elapsed at the snapshot.
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Rate is the mean rate so far in bytes per second (0 before any time passed).
func (t Transfer) Rate() float64 {
	if t.Elapsed <= 0 {
		return 0
	}
	return float64(t.Done) / t.Elapsed.Seconds()
}

// String is the human form: "epoch 12 (full): 120.0 MiB of 400.0 MiB (30%),
// 55.1 MiB/s, 5s left".
func (t Transfer) String() string {
	kind := "delta"
	if t.Full {
		kind = "full"
	}
	s := fmt.Sprintf("epoch %d (%s): %s", t.Epoch, kind, mib(t.Done))
	if t.Total > 0 {
		done := min(t.Done, t.Total)
		s += fmt.Sprintf(" of %s (%d%%)", mib(t.Total), done*100/t.Total)
	}
	r := t.Rate()
	s += fmt.Sprintf(", %s/s", mib(int64(r)))
	if t.Total > t.Done && r > 0 {
		left := time.Duration(float64(t.Total-t.Done) / r * float64(time.Second))
		s += fmt.Sprintf(", %s left", left.Round(100*time.Millisecond))
	}
	return s
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// Due is the rule for a progress line: only for a transfer that has run at least
// every, and then once per every.
func Due(now, started, lastLine time.Time, every time.Duration) bool {
	if now.Sub(started) < every {
		return false
	}
	return lastLine.IsZero() || now.Sub(lastLine) >= every
}

// Meter follows one transfer at a time.
type Meter struct {
	clk   clockwork.Clock
	every time.Duration

	mu       sync.Mutex
	active   bool
	t        Transfer
	lastLine time.Time
}

// NewMeter returns a Meter on clk that finds a line due every every (default Every).
func NewMeter(clk clockwork.Clock, every time.Duration) *Meter {
	if clk == nil {
		clk = clockwork.NewRealClock()
	}
	if every <= 0 {
		every = Every
	}
	return &Meter{clk: clk, every: every}
}

// Start begins a transfer of total bytes (0: unknown).
func (m *Meter) Start(epoch uint64, full bool, total int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.active = true
	m.t = Transfer{Epoch: epoch, Full: full, Total: total, Started: m.clk.Now()}
	m.lastLine = time.Time{}
}

// Add counts n more bytes done and returns the transfer and true when a progress
// line is due.
func (m *Meter) Add(n int64) (Transfer, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.active {
		return Transfer{}, false
	}
	m.t.Done += n
	now := m.clk.Now()
	if !Due(now, m.t.Started, m.lastLine, m.every) {
		return Transfer{}, false
	}
	m.lastLine = now
	return m.snapshot(now), true
}

// Finish ends the transfer and returns it, and whether it ran long enough to have
// reported progress (so that its end deserves a line too).
func (m *Meter) Finish() (Transfer, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.active {
		return Transfer{}, false
	}
	m.active = false
	now := m.clk.Now()
	return m.snapshot(now), now.Sub(m.t.Started) >= m.every
}

// Current is the transfer in progress, if any.
func (m *Meter) Current() (Transfer, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.active {
		return Transfer{}, false
	}
	return m.snapshot(m.clk.Now()), true
}

func (m *Meter) snapshot(now time.Time) Transfer {
	t := m.t
	t.Elapsed = now.Sub(t.Started)
	return t
}

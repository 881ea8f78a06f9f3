package watchdog

import "time"

// Detector decides that a peer is gone after Timeout of silence, the way
// Remus's backup declares the primary dead when heartbeats stop. It holds no
// timer and reads no clock: the caller says what time it is, so the same
// Detector serves heartbeats, the epoch stream and leases, and tests can
// replay any schedule exactly.
type Detector struct {
	timeout time.Duration
	last    time.Time
}

// NewDetector counts the start as a heartbeat, so a peer gets a full timeout
// to say its first word instead of being declared dead at once.
func NewDetector(timeout time.Duration, now time.Time) *Detector {
	return &Detector{timeout: timeout, last: now}
}

// Heard records a sign of life. Times are only ever moved forward, so a
// message processed late cannot make the peer look more silent than it is.
func (d *Detector) Heard(now time.Time) {
	if now.After(d.last) {
		d.last = now
	}
}

// Silence is how long the peer has said nothing; never negative, since a
// caller's clock reading slightly before the last Heard means "just heard".
func (d *Detector) Silence(now time.Time) time.Duration {
	if s := now.Sub(d.last); s > 0 {
		return s
	}
	return 0
}

// Expired is strictly greater than the timeout so that a peer heard exactly
// Timeout ago, at the boundary, still counts as alive.
func (d *Detector) Expired(now time.Time) bool {
	return d.Silence(now) > d.timeout
}

// Deadline is the last moment the peer still counts as alive, for arming a
// timer; Expired turns true for any time after it.
func (d *Detector) Deadline() time.Time {
	return d.last.Add(d.timeout)
}

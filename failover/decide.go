package failover

import (
	"fmt"
	"time"

	"github.com/ftrun/ftrun/watchdog"
)

// TakeOver is the pure failover rule (arbiter "none": the standby decides alone; a
// partition that leaves the primary alive can then give two live copies until the two
// can talk again, when the old primary is refused and fences itself). A standby only
// takes over a service whose primary it has heard from since it started, that has a
// committed epoch, and whose primary has now been silent for longer than the timeout.
func TakeOver(now, lastHeard time.Time, timeout time.Duration, committed uint64, live bool) (bool, string) {
	switch {
	case live:
		return false, "already live"
	case committed == 0:
		return false, "no committed epoch"
	case lastHeard.IsZero():
		return false, "primary not heard since this standby started"
	}
	d := watchdog.NewDetector(timeout, lastHeard)
	if !d.Expired(now) {
		return false, "primary alive"
	}
	return true, fmt.Sprintf("primary silent for %s (timeout %s)", d.Silence(now).Round(time.Millisecond), timeout)
}

package watchdog

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier speaks the sd_notify protocol so that systemd (Type=notify with
// WatchdogSec=) learns when ftrun is ready and restarts it when it stops
// vouching for the protected program. Outside systemd there is no
// NOTIFY_SOCKET and every method is a cheap no-op that returns nil, so callers
// never need to ask first.
type Notifier struct {
	socket   string
	interval time.Duration
}

// NewNotifier reads the environment once: systemd sets it at exec time, and a
// consistent view for the life of the process is worth more than noticing a
// later change nobody is supposed to make. The variables are left in place
// so that every Notifier in the process agrees; keeping them away from the
// protected program is the job of whoever builds its environment.
func NewNotifier() *Notifier {
	n := &Notifier{socket: os.Getenv("NOTIFY_SOCKET")}
	// A malformed WATCHDOG_USEC cannot come from systemd; treating it as
	// "watchdog off" keeps the service running rather than failing start-up
	// over a variable that systemd did not set.
	if usec, err := daemon.SdWatchdogEnabled(false); err == nil {
		n.interval = usec / 4
	}
	return n
}

// Enabled reports whether a service manager is listening at all.
func (n *Notifier) Enabled() bool { return n.socket != "" }

// WatchdogInterval is a quarter of WATCHDOG_USEC. sd_watchdog_enabled(3)
// recommends half, but ftrun's pings come from its epoch loop, which a
// checkpoint keeps busy: at half, one ping delayed by a dump (or one withheld)
// lands on the deadline. At a quarter, three pings in a row can go missing
// before systemd acts. It is 0 when the watchdog is off or meant for another
// process (WATCHDOG_PID).
func (n *Notifier) WatchdogInterval() time.Duration { return n.interval }

// Ready is sent once the first checkpoint is committed: before that there is
// nothing to recover to, so the service is not yet fault tolerant.
func (n *Notifier) Ready(status string) error {
	return n.send("ready", daemon.SdNotifyReady, status)
}

// Status updates the one-line text systemctl status shows.
func (n *Notifier) Status(status string) error {
	return n.send("status", "", status)
}

// Watchdog tells systemd the service is still fine; see ShouldPing for when
// that is true.
func (n *Notifier) Watchdog() error {
	return n.send("watchdog", daemon.SdNotifyWatchdog, "")
}

// Stopping lets systemd tell an intended shutdown from a crash.
func (n *Notifier) Stopping(status string) error {
	return n.send("stopping", daemon.SdNotifyStopping, status)
}

func (n *Notifier) send(what, state, status string) error {
	if !n.Enabled() {
		return nil
	}
	msg := notifyMessage(state, status)
	if msg == "" {
		return nil
	}
	if _, err := daemon.SdNotify(false, msg); err != nil {
		return fmt.Errorf("sd_notify %s to %q: %w", what, n.socket, err)
	}
	return nil
}

// notifyMessage builds one datagram so that systemd applies the state and
// its status together. For Status alone (state == "") STATUS= is always
// sent, even empty, because an empty STATUS clears the old text; alongside a
// state an empty status is simply left out.
func notifyMessage(state, status string) string {
	// A newline in the status would start a new assignment (a status of
	// "x\nWATCHDOG=1" would ping the watchdog), so it is flattened.
	status = strings.ReplaceAll(status, "\n", " ")
	switch {
	case state == "":
		return "STATUS=" + status
	case status == "":
		return state
	default:
		return state + "\nSTATUS=" + status
	}
}

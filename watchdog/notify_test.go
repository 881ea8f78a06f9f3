package watchdog

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listenNotify binds a real unix datagram socket, the one systemd would
// listen on, and points NOTIFY_SOCKET at it.
func listenNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("binding %q: %v", path, err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "")
	t.Setenv("WATCHDOG_PID", "")
	return conn
}

// readDatagram returns the next datagram; sd_notify writes synchronously, so
// it is already queued when the method under test has returned.
func readDatagram(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := conn.SetReadDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("reading notify datagram: %v", err)
	}
	return string(buf[:n])
}

func expectNoDatagram(t *testing.T, conn *net.UnixConn) {
	t.Helper()
	if err := conn.SetReadDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	n, err := conn.Read(buf)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("unexpected datagram %q (err %v)", buf[:n], err)
	}
}

func TestNotifierMessages(t *testing.T) {
	tests := []struct {
		name string
		send func(*Notifier) error
		want string
	}{
		{"ready with status", func(n *Notifier) error { return n.Ready("epoch 1 committed") }, "READY=1\nSTATUS=epoch 1 committed"},
		{"ready without status", func(n *Notifier) error { return n.Ready("") }, "READY=1"},
		{"status", func(n *Notifier) error { return n.Status("restoring epoch 7") }, "STATUS=restoring epoch 7"},
		{"empty status clears", func(n *Notifier) error { return n.Status("") }, "STATUS="},
		{"status cannot inject assignments", func(n *Notifier) error { return n.Status("x\nWATCHDOG=1") }, "STATUS=x WATCHDOG=1"},
		{"watchdog", func(n *Notifier) error { return n.Watchdog() }, "WATCHDOG=1"},
		{"stopping with status", func(n *Notifier) error { return n.Stopping("signal terminated") }, "STOPPING=1\nSTATUS=signal terminated"},
		{"stopping without status", func(n *Notifier) error { return n.Stopping("") }, "STOPPING=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := listenNotify(t)
			n := NewNotifier()
			if !n.Enabled() {
				t.Fatal("Enabled() = false with NOTIFY_SOCKET set")
			}
			if err := tt.send(n); err != nil {
				t.Fatalf("send: %v", err)
			}
			if got := readDatagram(t, conn); got != tt.want {
				t.Errorf("datagram = %q, want %q", got, tt.want)
			}
			expectNoDatagram(t, conn)
		})
	}
}

func TestNotifierSequence(t *testing.T) {
	conn := listenNotify(t)
	n := NewNotifier()
	steps := []struct {
		send func() error
		want string
	}{
		{func() error { return n.Ready("protecting pid 42") }, "READY=1\nSTATUS=protecting pid 42"},
		{n.Watchdog, "WATCHDOG=1"},
		{n.Watchdog, "WATCHDOG=1"},
		{func() error { return n.Stopping("bye") }, "STOPPING=1\nSTATUS=bye"},
	}
	for i, s := range steps {
		if err := s.send(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := readDatagram(t, conn); got != s.want {
			t.Errorf("step %d: datagram = %q, want %q", i, got, s.want)
		}
	}
}

func TestNotifierWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "unused")
	os.Unsetenv("NOTIFY_SOCKET")
	t.Setenv("WATCHDOG_USEC", "")
	n := NewNotifier()
	if n.Enabled() {
		t.Error("Enabled() = true without NOTIFY_SOCKET")
	}
	if got := n.WatchdogInterval(); got != 0 {
		t.Errorf("WatchdogInterval() = %v, want 0", got)
	}
	for name, err := range map[string]error{
		"Ready":    n.Ready("x"),
		"Status":   n.Status("x"),
		"Watchdog": n.Watchdog(),
		"Stopping": n.Stopping("x"),
	} {
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestNotifierSocketGone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.sock")
	t.Setenv("NOTIFY_SOCKET", path)
	n := NewNotifier()
	err := n.Watchdog()
	if err == nil {
		t.Fatal("Watchdog() to a missing socket succeeded")
	}
	if !strings.Contains(err.Error(), strconv.Quote(path)) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %q should name %q and wrap the cause", err, path)
	}
}

func TestNotifierWatchdogInterval(t *testing.T) {
	self := strconv.Itoa(os.Getpid())
	tests := []struct {
		name, usec, pid string
		want            time.Duration
	}{
		{"watchdog off", "", "", 0},
		{"a quarter of WATCHDOG_USEC", "6000000", "", 1500 * time.Millisecond},
		{"sub-second", "500000", "", 125 * time.Millisecond},
		{"meant for this process", "2000000", self, 500 * time.Millisecond},
		{"meant for another process", "2000000", strconv.Itoa(os.Getpid() + 1), 0},
		{"malformed usec", "soon", "", 0},
		{"negative usec", "-5", "", 0},
		{"malformed pid", "2000000", "me", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			listenNotify(t)
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.pid)
			if got := NewNotifier().WatchdogInterval(); got != tt.want {
				t.Errorf("WatchdogInterval() = %v, want %v", got, tt.want)
			}
		})
	}
}

package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

// queryTimeout only bounds a broken test; nothing asserts on how long anything takes.
const queryTimeout = 10 * time.Second

func TestQueryWithoutSupervisor(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, dir string)
	}{
		{"empty state dir", func(t *testing.T, dir string) {}},
		{"state dir does not exist", func(t *testing.T, dir string) {
			if err := os.Remove(dir); err != nil {
				t.Fatal(err)
			}
		}},
		{"stale socket file", func(t *testing.T, dir string) {
			// What a killed ftrun leaves: a socket nobody listens on.
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, ControlSocket), Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()
		}},
		{"regular file in the socket's place", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, ControlSocket), nil, 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			tc.setup(t, dir)
			_, err := Query(dir, Request{Op: "status"}, queryTimeout)
			if err == nil {
				t.Fatal("Query succeeded without a supervisor")
			}
			if !strings.HasPrefix(err.Error(), "no ftrun supervises") {
				t.Errorf("Query error = %q, want it to start with %q", err, "no ftrun supervises")
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("Query error %q does not name %q", err, dir)
			}
		})
	}
}

// controlOnly is a Supervisor with nothing but its control socket and a loop that
// answers requests the way Run's loop does.
func controlOnly(t *testing.T, st Status, clock clockwork.Clock) string {
	t.Helper()
	dir := t.TempDir()
	s := &Supervisor{state: &stateDir{dir: dir}, events: make(chan event), clock: clock, st: st}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.serveControl(); err != nil {
		s.cancel()
		t.Fatalf("serveControl: %v", err)
	}
	var loop sync.WaitGroup
	loop.Add(1)
	go func() {
		defer loop.Done()
		for {
			select {
			case ev := <-s.events:
				switch ev.req.Op {
				case "checkpoint", "restore":
					// Those need a program and CRIU; not what these tests are about.
					ev.req.reply <- Response{Error: "not in this test"}
				default:
					s.serve(ev.req)
				}
			case <-s.ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		s.cancel()
		s.wg.Wait()
		loop.Wait()
	})
	return dir
}

func TestControlSocketStatus(t *testing.T) {
	last := time.Date(2025, 11, 23, 10, 0, 0, 0, time.UTC)
	clock := clockwork.NewFakeClockAt(last.Add(1500 * time.Millisecond))
	st := Status{Service: "redis", Role: "primary", State: StateRunning, Protection: "local checkpoints", Pid: 4242,
		Command: []string{"redis-server", "--port", "6379"}, Epoch: 9, LastCheckpoint: last, Checkpoints: 9, Restores: 1}
	dir := controlOnly(t, st, clock)

	if fi, err := os.Stat(filepath.Join(dir, ControlSocket)); err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("control socket: %v, %v; want a socket with mode 0600", fi, err)
	}
	resp, err := Query(dir, Request{Op: "status"}, queryTimeout)
	if err != nil {
		t.Fatalf("Query status: %v", err)
	}
	if !resp.OK || resp.Status == nil {
		t.Fatalf("Query status = %+v", resp)
	}
	got := *resp.Status
	if got.Service != "redis" || got.State != StateRunning || got.Pid != 4242 || got.Epoch != 9 ||
		got.Checkpoints != 9 || got.Restores != 1 || !slices.Equal(got.Command, st.Command) || !got.LastCheckpoint.Equal(last) {
		t.Errorf("status = %+v", got)
	}
	if got.LastCheckpointAge != 1500*time.Millisecond {
		t.Errorf("last checkpoint age = %v, want 1.5s (from the supervisor's clock)", got.LastCheckpointAge)
	}

	// Requests are answered one per connection, any number of times.
	if _, err := Query(dir, Request{Op: "status"}, queryTimeout); err != nil {
		t.Errorf("second Query: %v", err)
	}
}

func TestControlSocketErrors(t *testing.T) {
	dir := controlOnly(t, Status{State: StateRunning}, clockwork.NewFakeClock())
	cases := []struct {
		name    string
		req     Request
		wantErr string
	}{
		{"unknown op", Request{Op: "reboot"}, `unknown op "reboot"`},
		{"empty op", Request{}, `unknown op ""`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := Query(dir, tc.req, queryTimeout)
			if err == nil || err.Error() != tc.wantErr {
				t.Errorf("Query(%+v) error = %v, want %q", tc.req, err, tc.wantErr)
			}
			if resp.OK || resp.Error != tc.wantErr {
				t.Errorf("Query(%+v) response = %+v", tc.req, resp)
			}
		})
	}

	t.Run("malformed request", func(t *testing.T) {
		conn, err := net.Dial("unix", filepath.Join(dir, ControlSocket))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if _, err := conn.Write([]byte("{this is not json}\n")); err != nil {
			t.Fatal(err)
		}
		var resp Response
		if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
			t.Fatalf("no answer to a malformed request: %v", err)
		}
		if resp.OK || !strings.HasPrefix(resp.Error, "bad request") {
			t.Errorf("answer to a malformed request = %+v", resp)
		}
	})
}

// TestQueryProtocol drives Query against a hand-written server, to pin down the wire
// format and what Query makes of odd answers.
func TestQueryProtocol(t *testing.T) {
	cases := []struct {
		name     string
		answer   string // raw bytes the server sends back; "" closes without answering
		wantResp Response
		wantErr  string // substring; "" means no error
	}{
		{name: "ok with epoch", answer: `{"ok":true,"epoch":12}` + "\n", wantResp: Response{OK: true, Epoch: 12}},
		{name: "refused with a reason", answer: `{"ok":false,"error":"no checkpoint to restore"}`,
			wantResp: Response{Error: "no checkpoint to restore"}, wantErr: "no checkpoint to restore"},
		{name: "not ok without a reason", answer: `{"ok":false}`, wantResp: Response{}},
		{name: "garbage", answer: "HTTP/1.1 400 Bad Request\r\n", wantErr: "read from"},
		{name: "hang up", answer: "", wantErr: "read from"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			ln, err := net.Listen("unix", filepath.Join(dir, ControlSocket))
			if err != nil {
				t.Fatal(err)
			}
			var got Request
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				defer conn.Close()
				if err := json.NewDecoder(conn).Decode(&got); err != nil {
					return
				}
				if tc.answer != "" {
					_, _ = conn.Write([]byte(tc.answer))
				}
			}()
			defer func() {
				ln.Close()
				wg.Wait()
			}()

			req := Request{Op: "restore", Epoch: 7}
			resp, err := Query(dir, req, queryTimeout)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Query: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Query error = %v, want one containing %q", err, tc.wantErr)
			}
			if resp.OK != tc.wantResp.OK || resp.Epoch != tc.wantResp.Epoch || resp.Error != tc.wantResp.Error {
				t.Errorf("Query response = %+v, want %+v", resp, tc.wantResp)
			}
			wg.Wait()
			if got != req {
				t.Errorf("server received %+v, want %+v", got, req)
			}
		})
	}
}

package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/ftrun/ftrun/transport/progress"
)

// StandbyStatus is what a standby knows of one service.
type StandbyStatus struct {
	Service       string        `json:"service"`
	Role          string        `json:"role"` // "standby" (holding) or "live" (took over)
	Epoch         uint64        `json:"epoch"`
	LastHeard     time.Time     `json:"last_heard,omitzero"`
	Silence       time.Duration `json:"silence_ns"`
	Connected     bool          `json:"connected"`
	BytesReceived uint64        `json:"bytes_received"`
	LiveStateDir  string        `json:"live_state_dir,omitempty"`
	// Receiving is the epoch on its way in, if one is.
	Receiving *progress.Transfer `json:"receiving,omitempty"`
	// Problems would make a failover of this service fail on this host.
	Problems []string `json:"problems,omitempty"`
}

// request and reply are the part of the supervisor's control protocol (one JSON
// object each way per connection) a standby speaks: status only. The field names
// are the supervisor's, so one client reads both.
type request struct {
	Op string `json:"op"`
}

type reply struct {
	OK      bool            `json:"ok"`
	Error   string          `json:"error,omitempty"`
	Standby []StandbyStatus `json:"standby,omitempty"`
}

// serveControl answers `ftrun status` on a standby until ctx ends.
func serveControl(ctx context.Context, wg *sync.WaitGroup, path string, status func() []StandbyStatus) error {
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("control socket %q: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		ln.Close()
		os.Remove(path)
	}()
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			var req request
			resp := reply{OK: true}
			if err := json.NewDecoder(conn).Decode(&req); err != nil || req.Op != "status" {
				resp = reply{Error: fmt.Sprintf("a standby answers only status (got %q)", req.Op)}
			} else {
				resp.Standby = status()
			}
			_ = json.NewEncoder(conn).Encode(resp)
			conn.Close()
		}
	}()
	return nil
}

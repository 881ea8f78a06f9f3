package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/ftrun/ftrun/failover"
)

// Request is one command on the control socket (one JSON object per connection).
type Request struct {
	Op    string `json:"op"` // "status", "checkpoint", "restore"
	Epoch uint64 `json:"epoch,omitempty"`
}

// Response answers a Request.
type Response struct {
	OK     bool    `json:"ok"`
	Error  string  `json:"error,omitempty"`
	Epoch  uint64  `json:"epoch,omitempty"`
	Status *Status `json:"status,omitempty"`
	// Standby answers status on a standby: one entry per service it holds.
	Standby []failover.StandbyStatus `json:"standby,omitempty"`
}

type request struct {
	Request
	reply chan Response
}

// serveControl listens on the state dir's socket; each request is handed to the loop,
// which owns all state, and answered from there.
func (s *Supervisor) serveControl() error {
	path := s.state.path(ControlSocket)
	_ = os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if errors.Is(err, syscall.EROFS) {
		// A read-only state dir: the socket lives in the runtime dir, where Query
		// looks next (by the service name in the run record).
		path = filepath.Join(s.runtimeDir(), ControlSocket)
		if err := os.MkdirAll(s.runtimeDir(), 0o700); err != nil {
			return fmt.Errorf("control socket %q: %w", path, err)
		}
		_ = os.Remove(path)
		ln, err = net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil {
			s.log.Warn("state directory read-only: control socket in the runtime directory", "path", path)
		}
	}
	if err != nil {
		return fmt.Errorf("control socket %q: %w", path, err)
	}
	s.ctlPath = path
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return err
	}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		<-s.ctx.Done()
		ln.Close()
	}()
	go func() {
		defer s.wg.Done()
		for {
			conn, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				s.answer(conn)
			}()
		}
	}()
	return nil
}

func (s *Supervisor) answer(conn *net.UnixConn) {
	defer conn.Close()
	// A client that connects and says nothing must not hold up shutdown.
	stop := context.AfterFunc(s.ctx, func() { conn.Close() })
	defer stop()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Minute))
	var req Request
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
		_ = json.NewEncoder(conn).Encode(Response{Error: "bad request: " + err.Error()})
		return
	}
	r := &request{Request: req, reply: make(chan Response, 1)}
	select {
	case s.events <- event{kind: "request", req: r}:
	case <-s.ctx.Done():
		return
	}
	select {
	case resp := <-r.reply:
		_ = json.NewEncoder(conn).Encode(resp)
	case <-s.ctx.Done():
	}
}

// serve runs in the loop.
func (s *Supervisor) serve(r *request) {
	var resp Response
	switch r.Op {
	case "status":
		st := s.status()
		resp = Response{OK: true, Status: &st}
	case "checkpoint":
		epoch, err := s.tryCheckpoint(false)
		resp = Response{OK: err == nil, Epoch: epoch}
		if err != nil {
			resp.Error = err.Error()
		}
	case "restore":
		err := s.manualRestore(r.Epoch)
		resp = Response{OK: err == nil, Epoch: r.Epoch}
		if err != nil {
			resp.Error = err.Error()
		}
	default:
		resp = Response{Error: fmt.Sprintf("unknown op %q", r.Op)}
	}
	r.reply <- resp
}

// manualRestore replaces the running program with a checkpoint (newest when epoch is 0).
func (s *Supervisor) manualRestore(epoch uint64) error {
	if epoch == 0 {
		c := s.candidates()
		if len(c) == 0 {
			return errors.New("no checkpoint to restore")
		}
		epoch = c[0]
	}
	if _, err := os.Stat(filepath.Join(s.store.Dir(), fmt.Sprintf("%016d", epoch))); err != nil {
		return fmt.Errorf("no checkpoint for epoch %d", epoch)
	}
	s.log.Info("restore requested by hand", "epoch", epoch)
	if s.alive {
		s.alive = false
		s.incCancel()
	}
	s.pending = nil
	if s.retry != nil {
		s.retry.Stop()
		s.retry = nil
	}
	if err := s.restore(epoch, false); err != nil {
		s.log.Error("restore by hand failed; falling back to the recovery ladder", "err", err)
		if lerr := s.carryOut(s.ladder.Failed(s.candidates(), "restore by hand failed")); lerr != nil {
			return errors.Join(err, lerr)
		}
		return err
	}
	return nil
}

// Query sends one request to the supervisor of stateDir.
func Query(stateDir string, req Request, timeout time.Duration) (Response, error) {
	path := filepath.Join(stateDir, ControlSocket)
	conn, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		// An ftrun on a read-only state dir serves it from its runtime dir.
		if rec, rerr := readRunRecord(stateDir); rerr == nil && rec != nil && rec.Service != "" {
			if c, err2 := net.DialTimeout("unix", filepath.Join(defaultRuntimeRoot, rec.Service, ControlSocket), timeout); err2 == nil {
				conn, err = c, nil
			}
		}
	}
	if err != nil {
		return Response{}, fmt.Errorf("no ftrun supervises %q (control socket: %v)", stateDir, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return Response{}, fmt.Errorf("send to %q: %w", path, err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("read from %q: %w", path, err)
	}
	if !resp.OK && resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/ftrun/ftrun/supervisor/logrelay"
)

// RelaySocket is where the service's output relay listens, in the state dir.
const RelaySocket = "relay.sock"

// lateOutput is how old a line may be when it reaches the log before the log says
// when it was written: what the program wrote while no ftrun ran.
const lateOutput = time.Second

// openOutput connects to the service's output relay (starting one when none runs),
// which holds the program's stdout and stderr pipes whatever happens to ftrun. Where
// no relay can run, ftrun reads the pipes itself, as a program's output then ends
// with ftrun.
func (s *Supervisor) openOutput() error {
	c, err := logrelay.ConnectOrStart(s.state.path(RelaySocket), filepath.Join(s.cg.Path(), "cgroup.procs"))
	if err == nil {
		s.out, s.outW, s.errW = c, c.Stdout, c.Stderr
		s.relays.run(func() { c.Read(s.logOutput) })
		return nil
	}
	s.log.Warn("no output relay: the program's output will have no reader while ftrun is down", "err", err)
	if s.outR, s.outW, err = os.Pipe(); err != nil {
		return err
	}
	if s.errR, s.errW, err = os.Pipe(); err != nil {
		return err
	}
	s.relays.start(s.log, "stdout", s.outR)
	s.relays.start(s.log, "stderr", s.errR)
	return nil
}

// closeOutput ends the relaying. A program that is gone for good takes its relay
// with it, once the relay has sent everything; a program that still runs keeps it.
func (s *Supervisor) closeOutput() {
	if s.out != nil {
		if s.alive {
			s.out.Close()
		} else if err := s.out.Quit(); err != nil {
			s.out.Close()
		}
	}
	// Children of the program may still hold the write ends; closing the read ends
	// ends the relays regardless.
	if s.outR != nil {
		s.outR.Close()
		s.errR.Close()
	}
}

func (s *Supervisor) logOutput(stream byte, at time.Time, data []byte) {
	name := map[byte]string{logrelay.StreamStdout: "stdout", logrelay.StreamStderr: "stderr"}[stream]
	if name == "" {
		s.log.Warn(string(data))
		return
	}
	if late := s.clock.Since(at); late > lateOutput {
		s.log.Info(string(data), "stream", name, "written", at.Format(time.RFC3339Nano))
		return
	}
	s.log.Info(string(data), "stream", name)
}

// relayed reports that fd of pid is the relay's pipe (the one ftrun holds the write end of).
func (s *Supervisor) relayed(pid, fd int) bool {
	if s.out == nil {
		return false
	}
	w := s.outW
	if fd == 2 {
		w = s.errW
	}
	mine, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", w.Fd()))
	return err == nil && mine == externalKey(pid, fd)
}

package checkpoint

import (
	"errors"
	"strings"
	"syscall"
	"testing"
	"time"

	criu "github.com/checkpoint-restore/go-criu/v8"
)

func TestDeadlineError(t *testing.T) {
	err := error(&DeadlineError{Op: "restore", After: 2 * time.Second, Waits: []string{"criu 7 in locks_lock_inode_wait"}, LastLog: "1: (flock)flag: 2"})
	if !errors.Is(err, ErrDeadline) || !errors.Is(err, ErrCriuFailed) {
		t.Errorf("%v is not ErrDeadline and ErrCriuFailed", err)
	}
	want := "criu restore overran its 2s deadline and was killed; waiting: criu 7 in locks_lock_inode_wait; last log line: 1: (flock)flag: 2"
	if err.Error() != want {
		t.Errorf("Error() = %q, want %q", err.Error(), want)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("not one line: %q", err.Error())
	}
}

func TestCriuTimeoutDefaults(t *testing.T) {
	c := &Criu{}
	if c.timeout("dump") != DefaultDumpTimeout || c.timeout("restore") != DefaultRestoreTimeout {
		t.Errorf("defaults: %s, %s", c.timeout("dump"), c.timeout("restore"))
	}
	c = &Criu{DumpTimeout: time.Second, RestoreTimeout: 3 * time.Second}
	if c.timeout("dump") != time.Second || c.timeout("restore") != 3*time.Second {
		t.Errorf("set: %s, %s", c.timeout("dump"), c.timeout("restore"))
	}
}

// go-criu keeps the swrk's exec.Cmd unexported; swrkPid reads it. A go-criu upgrade
// that moves it must fail here, not leave every deadline without a PID to kill.
func TestSwrkPid(t *testing.T) {
	cl := criu.MakeCriu()
	cl.SetCriuPath("/bin/true")
	w, err := startSwrk(cl)
	if err != nil {
		t.Fatal(err)
	}
	var ws syscall.WaitStatus
	if got, err := syscall.Wait4(w.pid, &ws, 0, nil); err != nil || got != w.pid {
		t.Fatalf("swrk pid %d is not the child just started: wait4 = %d, %v", w.pid, got, err)
	}
	if w.sock < 0 {
		t.Errorf("the RPC socket was not found")
	}
	_ = cl.Cleanup()
}

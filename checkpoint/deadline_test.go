package checkpoint

import (
	"errors"
	"strings"
	"testing"
	"time"
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

package procfs

import (
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/tab\011x`: "/tab\tx", `/bad\09`: `/bad\09`, `\`: `\`} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

// A stopped child shows as stopped, and as part of this process's tree.
func TestStateAndTree(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if !slices.Contains(Tree(os.Getpid()), cmd.Process.Pid) {
		t.Errorf("Tree(%d) = %v, lacks the child %d", os.Getpid(), Tree(os.Getpid()), cmd.Process.Pid)
	}
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, err := State(cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		if Stopped(st) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %q, want stopped", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := State(1 << 30); err == nil {
		t.Error("State of a pid that cannot exist succeeded")
	}
}

// Package criutest is what the tests that run real CRIU share: when they can run,
// a dirtier program started for one test, and a restore whose process is reaped when
// the test ends.
package criutest

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/internal/dirtier"
)

// Require skips t where real processes cannot be dumped: not root, or criu (or one
// of tools) not installed.
func Require(t testing.TB, tools ...string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: dumps real processes with CRIU")
	}
	for _, tool := range append([]string{"criu"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed: run scripts/setup", tool)
		}
	}
}

// Prog is a running dirtier whose failures fail the test.
type Prog struct {
	*dirtier.Proc
	t testing.TB
}

// MustDirty makes the program dirty its pages once more and waits until it has.
func (p *Prog) MustDirty() {
	p.t.Helper()
	if err := p.Dirty(); err != nil {
		p.t.Fatal(err)
	}
}

// Restored is the program restored from a dump of p, as pid.
func (p *Prog) Restored(pid int) *Prog { return &Prog{Proc: p.Proc.Restored(pid), t: p.t} }

// Dirtier builds and starts the dirtier with a heap of mib MiB dirtying pages pages
// a round; it is killed when t ends.
func Dirtier(t testing.TB, mib, pages int) *Prog {
	t.Helper()
	bin, err := dirtier.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p, err := dirtier.Start(bin, mib, pages, filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return &Prog{Proc: p, t: t}
}

// Restore restores the image set in dir with CRIU and returns the restored root's
// pid; the process is killed and reaped when t ends.
func Restore(t testing.TB, dir string) int {
	t.Helper()
	pid, err := (&checkpoint.Criu{}).Restore(checkpoint.Options{ImagesDir: dir, WorkDir: t.TempDir()})
	if err != nil {
		t.Fatalf("restore from %s: %v", dir, err)
	}
	t.Cleanup(func() {
		syscall.Kill(pid, syscall.SIGKILL)
		var ws syscall.WaitStatus
		syscall.Wait4(pid, &ws, 0, nil)
	})
	return pid
}

package standby_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/internal/criutest"
)

// A real program end to end: CRIU dumps a running `sleep` twice, both epochs are
// shipped (the second as page deltas), the original is killed, and CRIU restores
// it from the standby's committed copy.
func TestCriuShipAndRestore(t *testing.T) {
	criutest.Require(t)
	noLeaks(t)
	c := newCreds(t)
	root := filepath.Join(t.TempDir(), "root")
	srv := startServer(t, root, c)
	p := newPrimary(t, "sleep")
	p.dial(t, srv.addr, c.primary.Client())

	cmd := exec.Command("sleep", "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := false
	t.Cleanup(func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	criu := &checkpoint.Criu{}
	var sizes []int64
	for epoch := uint64(1); epoch <= 2; epoch++ {
		pd, err := p.store.Begin(epoch)
		if err != nil {
			t.Fatal(err)
		}
		st, err := criu.Dump(checkpoint.Options{ImagesDir: pd.Dir, Pid: cmd.Process.Pid, LeaveRunning: true})
		if err != nil {
			pd.Abort()
			t.Fatal(err)
		}
		set, err := pd.Commit(&checkpoint.Manifest{Service: "sleep", Stats: st, Pid: cmd.Process.Pid})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.shipSet(t, epoch, set.Dir); err != nil {
			t.Fatalf("epoch %d: %v", epoch, err)
		}
		st2 := p.ship.LastStats()
		t.Logf("epoch %d: %d bytes on the wire (full %v), set %d bytes", epoch, st2.Bytes, st2.Full, dirBytes(t, set.Dir))
		sizes = append(sizes, st2.Bytes)
		if st2.Full != (epoch == 1) {
			t.Errorf("epoch %d full=%v", epoch, st2.Full)
		}
		sameSet(t, set.Dir, setDir(t, srv.store, "sleep", epoch))
	}
	if sizes[1] >= sizes[0] {
		t.Errorf("delta epoch sent %d bytes, full epoch %d", sizes[1], sizes[0])
	}

	cmd.Process.Kill()
	cmd.Wait()
	waited = true

	committed := setDir(t, srv.store, "sleep", 2)
	pid := criutest.Restore(t, committed)
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		t.Fatalf("restored pid %d: %v", pid, err)
	}
	if !strings.HasPrefix(string(cmdline), "sleep\x001000") {
		t.Fatalf("restored pid %d runs %q", pid, cmdline)
	}
	// Still there a moment later: it was restored, not merely started and crashed.
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		t.Fatalf("restored process gone: %v", err)
	}
	if _, err := checkpoint.VerifyDir(committed); err != nil {
		t.Errorf("restore changed the committed set: %v", err)
	}
}

func dirBytes(t *testing.T, dir string) int64 {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// A program whose pages change between epochs: from the third epoch on, the standby
// writes each epoch's pages file over the one of two epochs before (taken out of the
// store first) instead of copying the base. Every epoch is byte-identical to the
// primary's, and CRIU restores the program from the last one.
func TestCriuReusesOlderPages(t *testing.T) {
	criutest.Require(t, "gcc")
	noLeaks(t)
	c := newCreds(t)
	root := filepath.Join(t.TempDir(), "root")
	srv := startServer(t, root, c)
	p := newPrimary(t, "dirtier")
	p.dial(t, srv.addr, c.primary.Client())
	prog := criutest.Dirtier(t, 32, 64)
	criu := &checkpoint.Criu{}
	pagesOf := func(dir string) os.FileInfo {
		t.Helper()
		names, _ := filepath.Glob(filepath.Join(dir, "pages-*.img"))
		if len(names) != 1 {
			t.Fatalf("%s holds pages files %v, want one", dir, names)
		}
		fi, err := os.Stat(names[0])
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	var pages []os.FileInfo
	const last = 5
	for epoch := uint64(1); epoch <= last; epoch++ {
		if epoch > 1 {
			prog.MustDirty()
		}
		pd, err := p.store.Begin(epoch)
		if err != nil {
			t.Fatal(err)
		}
		st, err := criu.Dump(checkpoint.Options{ImagesDir: pd.Dir, Pid: prog.Pid, LeaveRunning: true})
		if err != nil {
			pd.Abort()
			t.Fatal(err)
		}
		set, err := pd.Commit(&checkpoint.Manifest{Service: "dirtier", Stats: st, Pid: prog.Pid})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.shipSet(t, epoch, set.Dir); err != nil {
			t.Fatalf("epoch %d: %v", epoch, err)
		}
		committed := setDir(t, srv.store, "dirtier", epoch)
		sameSet(t, set.Dir, committed)
		pages = append(pages, pagesOf(committed))
		if epoch >= 3 && !os.SameFile(pages[epoch-1], pages[epoch-3]) {
			t.Errorf("epoch %d did not write over the pages file of epoch %d", epoch, epoch-2)
		}
		if epoch == 2 && os.SameFile(pages[1], pages[0]) {
			t.Errorf("epoch 2 shares its pages file with its base")
		}
	}
	if got := epochs(t, srv.store, "dirtier"); !slices.Equal(got, []uint64{last, last - 1}) {
		t.Errorf("epochs %v", got)
	}
	sameSet(t, filepath.Join(p.store.Dir(), fmt.Sprintf("%016d", last-1)), setDir(t, srv.store, "dirtier", last-1))

	prog.Kill()
	committed := setDir(t, srv.store, "dirtier", last)
	pid := criutest.Restore(t, committed)
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("restored process gone: %v", err)
	}
	if _, err := checkpoint.VerifyDir(committed); err != nil {
		t.Errorf("restore changed the committed set: %v", err)
	}
}

package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/internal/memcheck"
	"github.com/ftrun/ftrun/supervisor"
)

// Every checkpoint restores to the memory it was taken of, byte for byte: memcheck
// (heap, regions mapped and unmapped, two threads, a forked child) under ftrun, its
// main process killed -9 again and again at random moments. Each restore runs again
// rounds it had printed before the kill, and must print for each the hash it printed
// the first time.
func TestRestoredMemoryIsExact(t *testing.T) {
	p := startMemcheck(t, "it-memcheck", "100ms")
	const kills = 4
	for i := range kills {
		st := p.waitFor("running, checkpointed", 30*time.Second, func(s supervisor.Status) bool {
			return s.Pid > 0 && s.State == supervisor.StateRunning && s.Restores == i && s.Checkpoints > 0
		})
		time.Sleep(time.Duration(100+rand.IntN(400)) * time.Millisecond)
		if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		p.waitFor("restored", 30*time.Second, func(s supervisor.Status) bool { return s.Restores == i+1 && s.State == supervisor.StateRunning })
	}
	last := memcheck.Read(p.log()).Rounds
	for deadline := time.Now().Add(10 * time.Second); memcheck.Read(p.log()).Rounds < last+10; {
		if time.Now().After(deadline) {
			t.Fatalf("memcheck stopped at round %d after the last restore", memcheck.Read(p.log()).Rounds)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rep := memcheck.Read(p.log())
	if len(rep.Mismatch) > 0 {
		t.Fatalf("restored memory differs from the checkpointed memory: %s", strings.Join(rep.Mismatch, "; "))
	}
	if rep.Repeated == 0 {
		t.Fatalf("no round ran twice in %d rounds across %d restores: nothing was compared", rep.Rounds, kills)
	}
	t.Logf("%d rounds, %d of them run again after %d restores, each with the hash of its first run", rep.Rounds, rep.Repeated, kills)
}

// The checker can fail: one word of the heap changed right after a restore (a page
// a dump would have missed) and the rounds run again print other hashes.
func TestMemcheckCatchesAChangedPage(t *testing.T) {
	p := startMemcheck(t, "it-memcheck-bad", "1h")
	p.waitFor("running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	p.checkpoint()
	at := memcheck.Read(p.log()).Rounds
	for memcheck.Read(p.log()).Rounds < at+30 { // 30 rounds for the restore to run again
		time.Sleep(20 * time.Millisecond)
	}
	heap := memcheck.Heap(p.log())
	if heap == 0 {
		t.Fatal("memcheck did not say where its heap is")
	}
	st, _ := status(p.stateDir)
	syscall.Kill(st.Pid, syscall.SIGKILL)
	st = p.waitFor("restored", 30*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.Pid > 0 })
	mem, err := os.OpenFile(fmt.Sprintf("/proc/%d/mem", st.Pid), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = mem.WriteAt([]byte("stalepage"), int64(heap)+500*4096+8)
	mem.Close()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); len(memcheck.Read(p.log()).Mismatch) == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	rep := memcheck.Read(p.log())
	if len(rep.Mismatch) == 0 {
		t.Fatalf("a heap word changed after the restore, and memcheck's rounds run again (%d) printed the same hashes", rep.Repeated)
	}
	t.Logf("a changed heap word is caught: %s", rep.Mismatch[0])
}

// startMemcheck builds memcheck and runs it under ftrun as service name.
func startMemcheck(t *testing.T, name, interval string) *ftrunProc {
	requiresRoot(t, "gcc")
	bin, err := memcheck.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killService(t, name) })
	return startFtrun(t, t.TempDir(), nil, "--name", name, "--interval", interval, "--discard", "--", bin)
}

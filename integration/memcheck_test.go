package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

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
	killAndCompare(t, p)
}

// The same with incremental checkpoints (this kernel: userfaultfd write-protection,
// registered by ftrun in memcheck and its child, read and reset by the patched CRIU):
// every checkpoint but the full ones freezes memcheck only for the pages it wrote,
// and still restores to exactly its memory.
func TestRestoredMemoryIsExactIncremental(t *testing.T) {
	p := startMemcheck(t, "it-memcheck-incr", "100ms", "--incremental", "uffd-wp", "--full-every", "5")
	killAndCompare(t, p)
	st, _ := status(p.stateDir)
	if st.IncrementalCheckpoints == 0 {
		t.Fatalf("%d checkpoints, none incremental: nothing of the tracking was tested", st.Checkpoints)
	}
	// Sets made standalone over an older one the store dropped, with only the pages
	// written since that one copied, restored exactly too.
	if st.WrittenOver == 0 {
		t.Fatalf("%d incremental checkpoints, none written over an older set: that path was not tested", st.IncrementalCheckpoints)
	}
	t.Logf("%d checkpoints, %d incremental, %d of them written over an older set", st.Checkpoints, st.IncrementalCheckpoints, st.WrittenOver)
}

// A restore from a set made standalone over an older one (only the pages written
// since that one copied, the rest left in its file) gives back exactly the memory
// checkpointed: checkpoints on demand until the newest is such a set, then memcheck
// is killed and its rounds run again after the restore must print their hashes.
func TestRestoreFromASetWrittenOver(t *testing.T) {
	p := startMemcheck(t, "it-memcheck-over", "1h", "--incremental", "uffd-wp", "--keep", "3")
	p.waitFor("running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	over := false
	for i := 0; i < 30 && !over; i++ {
		at := memcheck.Read(p.log()).Rounds
		for memcheck.Read(p.log()).Rounds < at+3 {
			time.Sleep(20 * time.Millisecond)
		}
		before, _ := status(p.stateDir)
		p.checkpoint()
		after, _ := status(p.stateDir)
		over = after.WrittenOver > before.WrittenOver
	}
	if !over {
		t.Fatal("30 checkpoints, none written over an older set")
	}
	// Rounds after the checkpoint, which the restore runs again.
	for at := memcheck.Read(p.log()).Rounds; memcheck.Read(p.log()).Rounds < at+5; {
		time.Sleep(20 * time.Millisecond)
	}
	st, _ := status(p.stateDir)
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.waitFor("restored", 30*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	if got, _ := status(p.stateDir); got.Epoch != st.Epoch {
		t.Fatalf("restored with epoch %d as the newest, want %d (the set written over)", got.Epoch, st.Epoch)
	}
	compareRounds(t, p, 1)
}

// killAndCompare kills memcheck -9 at random moments and checks every restore ran
// its rounds again with the hashes they had.
func killAndCompare(t *testing.T, p *ftrunProc) {
	t.Helper()
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
	compareRounds(t, p, kills)
}

// compareRounds lets memcheck run 10 more rounds and checks that every round run
// again after the kills printed the hash of its first run.
func compareRounds(t *testing.T, p *ftrunProc, kills int) {
	t.Helper()
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

// Tracking that misses writes must fail the check: after a full checkpoint, the test
// itself marks memcheck's heap as unwritten (what a tracker that loses writes would
// see; the heap is all in that checkpoint), so the next, incremental checkpoint takes
// stale heap pages from its parent; the restore from it must show in memcheck's hashes.
func TestIncrementalMissingWritesIsCaught(t *testing.T) {
	p := startMemcheck(t, "it-memcheck-hide", "1h", "--incremental", "uffd-wp")
	p.waitFor("running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	p.checkpoint() // full: the parent
	at := memcheck.Read(p.log()).Rounds
	for memcheck.Read(p.log()).Rounds < at+10 {
		time.Sleep(20 * time.Millisecond)
	}
	heap := memcheck.Heap(p.log())
	if heap == 0 {
		t.Fatal("memcheck did not say where its heap is")
	}
	st, _ := status(p.stateDir)
	hideWrites(t, st.Pid, heap&^4095, heap+memcheck.HeapPages*4096)
	p.checkpoint()
	if st, _ := status(p.stateDir); st.IncrementalCheckpoints != 1 {
		t.Fatalf("the second checkpoint was not incremental (%d of %d)", st.IncrementalCheckpoints, st.Checkpoints)
	}
	at = memcheck.Read(p.log()).Rounds
	for memcheck.Read(p.log()).Rounds < at+30 { // rounds for the restore to run again
		time.Sleep(20 * time.Millisecond)
	}
	syscall.Kill(st.Pid, syscall.SIGKILL)
	p.waitFor("restored", 30*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.Pid > 0 })
	for deadline := time.Now().Add(10 * time.Second); len(memcheck.Read(p.log()).Mismatch) == 0 && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	rep := memcheck.Read(p.log())
	if len(rep.Mismatch) == 0 {
		t.Fatalf("writes hidden from the tracker, and the restored memcheck's rounds run again (%d) printed the same hashes", rep.Repeated)
	}
	t.Logf("hidden writes are caught: %s", rep.Mismatch[0])
}

// hideWrites write-protects every written, existing page of pid in [from, to)
// through PAGEMAP_SCAN (include/uapi/linux/fs.h), as a dump's reset does: the
// tracking then reads them as unwritten.
func hideWrites(t *testing.T, pid int, from, to uint64) {
	t.Helper()
	const (
		pagemapScan = 0xc0606610
		wpMatching  = 1 << 0
		pageWritten = 1 << 1
		pageAllowed = 1 << 0
		pagePresent = 1 << 3
		pageSwapped = 1 << 4
	)
	f, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vec := make([][3]uint64, 256)
	for start := from; start < to; {
		// size, flags, start, end, walk_end, vec, vec_len, max_pages, inverted, mask, anyof, return
		arg := [12]uint64{0x60, wpMatching, start, to, 0, uint64(uintptr(unsafe.Pointer(&vec[0]))), uint64(len(vec)), 0, 0, pageAllowed | pageWritten, pagePresent | pageSwapped, pageWritten}
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, f.Fd(), pagemapScan, uintptr(unsafe.Pointer(&arg))); e != 0 {
			t.Fatalf("PAGEMAP_SCAN of %d: %v", pid, e)
		}
		if arg[4] <= start {
			t.Fatalf("PAGEMAP_SCAN of %d did not advance at %#x", pid, start)
		}
		start = arg[4]
	}
}

// startMemcheck builds memcheck and runs it under ftrun as service name.
func startMemcheck(t *testing.T, name, interval string, args ...string) *ftrunProc {
	requiresRoot(t, "gcc")
	bin, err := memcheck.Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killService(t, name) })
	full := append([]string{"--name", name, "--interval", interval, "--discard"}, args...)
	return startFtrun(t, t.TempDir(), nil, append(full, "--", bin)...)
}

// By default (--incremental auto) checkpoints are incremental, on this kernel by
// write-protection: after the first, full one, each dumps only what redis wrote, and
// a restore from one gives back every key.
func TestIncrementalByDefault(t *testing.T) {
	requiresRoot(t, "redis-server")
	port := freePort(t)
	t.Cleanup(func() { killService(t, "it-incr-auto") })
	p := startFtrun(t, t.TempDir(), nil, append([]string{"--name", "it-incr-auto", "--interval", "1h", "--discard", "--"},
		redisArgs(port, t.TempDir())...)...)
	p.waitFor("running", 30*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := waitRedis(ctx, addr); err != nil {
		t.Fatal(err)
	}
	c, err := dialRedis(addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Do(time.Minute, "DEBUG", "POPULATE", "20000", "key", "1000"); err != nil {
		t.Fatal(err)
	}
	p.checkpoint() // full: the parent
	if _, err := c.Do(10*time.Second, "SET", "written", "after the parent"); err != nil {
		t.Fatal(err)
	}
	p.checkpoint() // incremental
	st, _ := status(p.stateDir)
	t.Logf("checkpoints %d, incremental %d", st.Checkpoints, st.IncrementalCheckpoints)
	if st.IncrementalCheckpoints != 1 || st.Incremental != "uffd-wp" {
		t.Fatalf("%d of %d checkpoints incremental, mode %q; want the second, by uffd-wp", st.IncrementalCheckpoints, st.Checkpoints, st.Incremental)
	}
	c.Close()
	syscall.Kill(st.Pid, syscall.SIGKILL)
	p.waitFor("restored", 30*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.Pid > 0 })
	if _, err := waitRedis(ctx, addr); err != nil {
		t.Fatal(err)
	}
	if c, err = dialRedis(addr, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	n, err := c.Do(10*time.Second, "DBSIZE")
	if err != nil || fmt.Sprint(n) != "20001" {
		t.Fatalf("after the restore from the incremental checkpoint: DBSIZE %v (%v), want 20001", n, err)
	}
	if v, err := c.Do(10*time.Second, "GET", "written"); err != nil || fmt.Sprint(v) != "after the parent" {
		t.Fatalf("the key written after the parent: %v (%v)", v, err)
	}
}

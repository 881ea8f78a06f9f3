package logrelay

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// collect reads lines from c until it ends or until n lines came.
func collect(t *testing.T, c *Client, n int) []string {
	t.Helper()
	var mu sync.Mutex
	var got []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Read(func(stream byte, at time.Time, data []byte) {
			mu.Lock()
			got = append(got, fmt.Sprintf("%d:%s", stream, data))
			mu.Unlock()
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		k := len(got)
		mu.Unlock()
		if k >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.Close()
	<-done
	return got
}

// The relay keeps what is written while nobody is connected and hands it, in order,
// to the next client, with the same pipes; told to quit, it flushes and leaves.
func TestRelayOutlivesItsClient(t *testing.T) {
	dir := t.TempDir()
	sock, procs := filepath.Join(dir, "relay.sock"), filepath.Join(dir, "cgroup.procs")
	c := startRelay(t, sock, procs)
	fmt.Fprintln(c.Stdout, "one")
	fmt.Fprintln(c.Stderr, "two")
	// Two pipes: their lines are ordered within a stream, not across.
	if got := collect(t, c, 2); len(got) != 2 || !slices.Contains(got, "1:one") || !slices.Contains(got, "2:two") {
		t.Fatalf("first client got %q", got)
	}
	// Nobody reads now: the writer must not block or fail.
	w := c.Stdout
	for i := 0; i < 1000; i++ {
		if _, err := fmt.Fprintf(w, "while away %d\n", i); err != nil {
			t.Fatalf("write while no client is connected: %v", err)
		}
	}
	c.CloseWriters()
	c2, err := Connect(sock)
	if err != nil {
		t.Fatalf("reconnect: %v", err)
	}
	fmt.Fprintln(c2.Stdout, "back")
	got := collect(t, c2, 1001)
	if len(got) != 1001 || got[0] != "1:while away 0" || got[999] != "1:while away 999" || got[1000] != "1:back" {
		t.Fatalf("second client got %d lines: first %q, last %q", len(got), got[0], got[len(got)-1])
	}
	c3, err := Connect(sock)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(c3.Stderr, "last words")
	c3.CloseWriters()
	if err := c3.Quit(); err != nil {
		t.Fatal(err)
	}
	ended := make(chan []string, 1)
	go func() {
		var got []string
		c3.Read(func(stream byte, at time.Time, data []byte) { got = append(got, string(data)) })
		ended <- got
	}()
	select {
	case got := <-ended:
		if len(got) != 1 || got[0] != "last words" {
			t.Errorf("after quit: %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not end the connection after quit")
	}
	c3.Close()
	time.Sleep(100 * time.Millisecond)
	if c4, err := Connect(sock); err == nil {
		c4.Close()
		t.Error("the relay still answers after quit")
	}
}

// relayPid finds the running relay of the service whose cgroup.procs is procs (the
// socket's peer credentials name whoever listened, which is the relay's starter).
func relayPid(t *testing.T, procs string) int {
	t.Helper()
	want := []byte(`"Stage":"run","Procs":"` + procs + `"`)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil && bytes.Contains(env, want) {
			return pid
		}
	}
	t.Fatalf("no relay for %q runs", procs)
	return 0
}

// The relay dies (kill -9) while its client runs: the program's pipes keep a reader
// (the client holds their read ends), a new relay is started on them, and what the
// program writes afterwards, more than a pipe holds, arrives, after a notice.
func TestRelayDeathRevivesOnTheSamePipes(t *testing.T) {
	dir := t.TempDir()
	sock, procs := filepath.Join(dir, "relay.sock"), filepath.Join(dir, "cgroup.procs")
	c := startRelay(t, sock, procs)
	pid := relayPid(t, procs)
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != Comm {
		t.Errorf("the relay's comm is %q, want %q", comm, Comm)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Lines a dying relay still reads are lost with it: write once it is gone.
	waitDead(t, pid)
	const n = 2000 // about 200 KiB: more than a pipe's buffer
	got := writeAndCollect(t, c, c.Stdout, n, "after the relay's death", "x")
	if len(got) != n+1 || !strings.Contains(got[0], "output relay died: a new one reads") ||
		!strings.HasPrefix(got[1], "1:after the relay's death 0 ") || !strings.HasPrefix(got[n], fmt.Sprintf("1:after the relay's death %d ", n-1)) {
		t.Fatalf("got %d lines, first %q, last %q", len(got), got[0], got[len(got)-1])
	}
	c2, err := Connect(sock)
	if err != nil {
		t.Fatalf("the new relay: %v", err)
	}
	if relayPid(t, procs) == pid {
		t.Error("the dead relay answers")
	}
	c2.CloseWriters()
	c2.Quit()
	c2.Read(func(byte, time.Time, []byte) {})
	c2.Close()
}

// waitDead waits until pid has died (it is reaped by init, or a zombie) with all
// its threads. A leader turns zombie before its other threads are gone, and one of
// those, woken in a read of the pipe by the SIGKILL, may still take what is written
// then.
func waitDead(t *testing.T, pid int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid)); strings.Contains(string(stat), ") Z ") && (err != nil || len(tasks) <= 1) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d did not die of SIGKILL", pid)
		}
	}
}

// The relay dies and no new one can start (its socket's directory is gone): the
// client reads the pipes itself, so the program's output still arrives, and Close
// still ends Read.
func TestRelayDeathWithoutANewOneClientReads(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "state")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	sock, procs := filepath.Join(sub, "relay.sock"), filepath.Join(dir, "cgroup.procs")
	c := startRelay(t, sock, procs)
	pid := relayPid(t, procs)
	// No socket can be made where the relay listened.
	if err := os.RemoveAll(sub); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sub, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Kill(pid, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitDead(t, pid)
	const n = 1000
	got := writeAndCollect(t, c, c.Stderr, n, "no relay", "y")
	if len(got) != n+1 || !strings.Contains(got[0], "ftrun reads the program's output itself") ||
		!strings.HasPrefix(got[1], "2:no relay 0 ") || !strings.HasPrefix(got[n], fmt.Sprintf("2:no relay %d ", n-1)) {
		t.Fatalf("got %d lines, first %q, last %q", len(got), got[0], got[len(got)-1])
	}
	c.CloseWriters()
}

func TestQueueDropsOldestBeyondItsBound(t *testing.T) {
	q := newQueue(1)
	// Each line is a little over a quarter of the bound: three fit.
	big := make([]byte, maxQueued/4)
	for i := 0; i < 6; i++ {
		q.push(line{stream: StreamStdout, data: append([]byte{byte('0' + i)}, big...)})
	}
	ls, more := q.take(func() bool { return false })
	if !more || len(ls) != 4 || ls[0].stream != StreamNotice || !strings.Contains(string(ls[0].data), "3 older lines dropped") || ls[1].data[0] != '3' {
		t.Fatalf("take = %d lines (more %v), first %q", len(ls), more, ls[0].data[:min(len(ls[0].data), 60)])
	}
	q.readerDone()
	if ls, more := q.take(func() bool { return false }); len(ls) != 0 || more {
		t.Errorf("after the last reader: %d lines, more %v", len(ls), more)
	}
}

// writeAndCollect writes n lines "what I FILL..." to w (the program's end of a pipe)
// while it collects n+1 lines from c (ftrun's notice first), and waits for the writer.
func writeAndCollect(t *testing.T, c *Client, w io.Writer, n int, what, fill string) []string {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		for i := 0; i < n; i++ {
			if _, err := fmt.Fprintf(w, "%s %d %s\n", what, i, strings.Repeat(fill, 80)); err != nil {
				done <- fmt.Errorf("write %d (%s): %w", i, what, err)
				return
			}
		}
		done <- nil
	}()
	got := collect(t, c, n+1)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return got
}

// startRelay starts a relay at sock for a group whose cgroup.procs (procs, written
// here) names one process, and connects to it.
func startRelay(t *testing.T, sock, procs string) *Client {
	t.Helper()
	if err := os.WriteFile(procs, []byte("1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := ConnectOrStart(sock, procs)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// notifySocket is a real sd_notify socket, as systemd binds it for Type=notify units.
type notifySocket struct {
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
	done chan struct{}
}

func bindNotify(t *testing.T) (*notifySocket, string) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	n := &notifySocket{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(n.done)
		buf := make([]byte, 4096)
		for {
			k, _, err := conn.ReadFromUnix(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, string(buf[:k]))
			n.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-n.done })
	return n, path
}

func (n *notifySocket) all() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.msgs...)
}

func firstIndex(msgs []string, prefix string) int {
	for i, m := range msgs {
		if strings.HasPrefix(m, prefix) {
			return i
		}
	}
	return -1
}

// systemd integration over the real notify protocol: READY=1 only after the first
// checkpoint, WATCHDOG=1 while alive and checkpointing (and through skipped checkpoints
// up to the tolerance), STATUS= lines that say why it is withheld, STOPPING=1.
func TestSystemdNotify(t *testing.T) {
	requiresRoot(t)
	name := "it-notify"
	t.Cleanup(func() { killService(t, name) })
	sock, path := bindNotify(t)
	state := t.TempDir()
	p := startFtrun(t, state, []string{"NOTIFY_SOCKET=" + path, "WATCHDOG_USEC=400000"},
		"--name", name, "--interval", "200ms", "--discard", "--", "sleep", "1000")
	p.waitFor("checkpoints", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 3 })
	time.Sleep(500 * time.Millisecond)
	// A failed status query would give pid 0, and kill(0, SIGSTOP) stops this test's
	// own process group.
	st := p.waitFor("the program's pid", 10*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	// Stop the program: its checkpoints are skipped. For a while that is tolerated
	// (3 epochs, or 3 checkpoint durations on a slow machine, + 2s) and the watchdog
	// is still fed; then it is not, and STATUS= says why.
	syscall.Kill(st.Pid, syscall.SIGSTOP)
	time.Sleep(200 * time.Millisecond)
	mark := len(sock.all())
	withheld := -1
	for deadline := time.Now().Add(30 * time.Second); withheld < 0 && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for i, m := range sock.all()[mark:] {
			if strings.Contains(m, "watchdog withheld: no checkpoint committed for") {
				withheld = mark + i
				break
			}
		}
	}
	if withheld < 0 {
		syscall.Kill(st.Pid, syscall.SIGCONT)
		t.Fatalf("no STATUS= saying the watchdog is withheld within 30s of SIGSTOP")
	}
	tolerated := sock.all()[mark:withheld]
	time.Sleep(time.Second)
	afterStop := sock.all()[withheld:]
	syscall.Kill(st.Pid, syscall.SIGCONT)
	p.waitFor("checkpoints again", 10*time.Second, func(s supervisor.Status) bool { return s.Checkpoints > st.Checkpoints+2 })
	if code := p.stop(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	msgs := sock.all()
	ready := firstIndex(msgs, "READY=1")
	if ready < 0 {
		t.Fatalf("no READY=1 in %q", msgs)
	}
	if !strings.Contains(msgs[ready], "STATUS=running") || !strings.Contains(msgs[ready], "epoch 1") {
		t.Errorf("READY=1 should come with the first checkpoint's STATUS, got %q", msgs[ready])
	}
	if w := firstIndex(msgs, "WATCHDOG=1"); w < 0 {
		t.Errorf("no WATCHDOG=1 in %q", msgs)
	}
	if firstIndex(tolerated, "WATCHDOG=1") < 0 {
		t.Errorf("watchdog not fed while skipped checkpoints were within the tolerance: %q", tolerated)
	}
	if n := strings.Count(strings.Join(afterStop, "\n"), "WATCHDOG=1"); n > 0 {
		t.Errorf("watchdog fed %d times after STATUS= said it is withheld: %q", n, afterStop)
	}
	if firstIndex(msgs, "STOPPING=1") < 0 {
		t.Errorf("no STOPPING=1 in %q", msgs)
	}
	if !strings.Contains(p.log(), "withholding systemd watchdog ping") {
		t.Errorf("log does not say why the watchdog was withheld")
	}
}

// A hang (SIGSTOP) of redis caught by --health-tcp with a real PING, then restored.
func TestRedisHangDetected(t *testing.T) {
	requiresRoot(t, "redis-server")
	name := "it-redis-hang"
	t.Cleanup(func() { killService(t, name) })
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	state := t.TempDir()
	p := startFtrun(t, state, nil, append([]string{"--name", name, "--interval", "300ms", "--discard",
		"--health-tcp", addr, "--health-send", `PING\r\n`, "--health-expect", "+PONG",
		"--health-interval", "200ms", "--health-timeout", "300ms", "--health-threshold", "3", "--"},
		redisArgs(port, t.TempDir())...)...)
	st := p.waitFor("checkpoint", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch > 1 })
	syscall.Kill(st.Pid, syscall.SIGSTOP)
	t0 := time.Now()
	p.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := waitRedis(ctx, addr); err != nil {
		t.Fatal(err)
	}
	t.Logf("hang detected and recovered in %s", time.Since(t0).Round(time.Millisecond))
	log := p.log()
	for _, want := range []string{"program does not answer: killing it", "hung: health check failed 3 times", "checkpoint skipped"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// A full disk: the checkpoint fails with a clear error, the program keeps running, and
// the checkpoints already there stay intact and restorable.
func TestFullDiskKeepsEarlierCheckpoints(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-full"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	// A small tmpfs: the first checkpoints fit, then the program's memory grows past it.
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "ftrun-it", state).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", state).Run() })
	script := filepath.Join(t.TempDir(), "grow.rb")
	// Grows by 30 MB when it sees the trigger file.
	os.WriteFile(script, []byte(`trig = ARGV[0]; big = nil; n = 0
loop { n += 1; big ||= ("x" * 30_000_000).tap { |s| s.setbyte(1, n % 256) } if File.exist?(trig); sleep 0.05 }`), 0o644)
	trig := filepath.Join(t.TempDir(), "grow")
	p := startFtrun(t, state, nil, "--name", name, "--interval", "1h", "--keep", "1", "--", "ruby", script, trig)
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	time.Sleep(300 * time.Millisecond)
	good := p.checkpoint()
	os.WriteFile(trig, nil, 0o644)
	time.Sleep(1 * time.Second)
	_, err := supervisorQueryCheckpoint(state)
	if err == nil {
		t.Fatal("checkpoint of 30 MB more into a full 24 MB tmpfs succeeded?")
	}
	if !strings.Contains(err.Error(), "no space") || !strings.Contains(err.Error(), "earlier checkpoints are intact") {
		t.Errorf("error does not name the cause and reassure: %v", err)
	}
	st, _ := status(state)
	if st.State != supervisor.StateRunning || st.Epoch != good {
		t.Fatalf("after the failed checkpoint: state %s epoch %d, want running at %d", st.State, st.Epoch, good)
	}
	leftovers, _ := filepath.Glob(filepath.Join(state, supervisor.CheckpointsDir, ".tmp-*"))
	if len(leftovers) != 0 {
		t.Errorf("failed checkpoint left %v behind", leftovers)
	}
	// The earlier checkpoint still restores.
	syscall.Kill(st.Pid, syscall.SIGKILL)
	after := p.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	if !strings.Contains(p.log(), fmt.Sprintf("restored from epoch %d", good)) {
		t.Errorf("did not restore epoch %d; status %+v", good, after)
	}
}

func supervisorQueryCheckpoint(state string) (uint64, error) {
	resp, err := supervisor.Query(state, supervisor.Request{Op: "checkpoint"}, time.Minute)
	return resp.Epoch, err
}

// `ftrun status --json` and the text form show what the issue lists.
func TestStatusCommand(t *testing.T) {
	requiresRoot(t)
	name := "it-status"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	p := startFtrun(t, state, nil, "--name", name, "--interval", "200ms", "--discard", "--", "sleep", "1000")
	p.waitFor("checkpoint", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch > 1 })
	out, err := exec.Command(ftrunBin, "status", "--json", "--state-dir", state).Output()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	for _, k := range []string{"pid", "state", "epoch", "last_checkpoint_age_ns", "last_frozen_ns", "image_bytes", "restores"} {
		if _, ok := m[k]; !ok {
			t.Errorf("status --json lacks %q: %s", k, out)
		}
	}
	text, err := exec.Command(ftrunBin, "status", "--state-dir", state).Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"pid:", "state:", "running", "epoch:", "last checkpoint:", "last frozen time:", "image size:", "restores:"} {
		if !strings.Contains(string(text), k) {
			t.Errorf("status lacks %q:\n%s", k, text)
		}
	}
	if out, err := exec.Command(ftrunBin, "status", "--state-dir", t.TempDir()).CombinedOutput(); err == nil || !strings.Contains(string(out), "no ftrun supervises") {
		t.Errorf("status of an unsupervised dir: %v %s", err, out)
	}
	// Restore by hand through the running supervisor.
	before, _ := status(state)
	if out, err := exec.Command(ftrunBin, "restore", "--state-dir", state).CombinedOutput(); err != nil {
		t.Fatalf("ftrun restore: %v %s", err, out)
	}
	after, _ := status(state)
	if after.Restores != before.Restores+1 || after.Pid == before.Pid {
		t.Errorf("restore by hand: before %+v after %+v", before, after)
	}
}

// A program that dies again right after every recovery climbs the whole ladder:
// restore, then (after a backoff) a fresh start, then ftrun gives up with exit 152 (ExitGaveUp).
func TestLadderEscalatesAndGivesUp(t *testing.T) {
	requiresRoot(t)
	name := "it-ladder"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	p := startFtrun(t, state, nil, "--name", name, "--interval", "1h", "--discard", "--backoff", "300ms",
		"--", "/bin/sh", "-c", "sleep 1; exit 3")
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	p.checkpoint()
	code, err := p.wait(30 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != supervisor.ExitGaveUp {
		t.Fatalf("exit %d, want %d", code, supervisor.ExitGaveUp)
	}
	log := p.log()
	for _, want := range []string{
		"exited with code 3",
		"restoring newest checkpoint",
		"waiting before the next attempt",
		"delay=300ms",
		"every checkpoint was tried: starting the command afresh",
		"recovery gave up",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, tail(log, 30))
		}
	}
	if n := len(cgroupProcs(t, name)); n != 0 {
		t.Errorf("%d processes left after giving up", n)
	}
}

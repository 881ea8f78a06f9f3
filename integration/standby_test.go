package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/failover"
	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/transport/auth"
)

// pair is a primary host and a standby host with keys from one CA and an
// `ftrun standby` running on the standby host.
type pair struct {
	primary, standby host
	keys, state      string // the CA directory; the standby's state dir
	sb               *standbyProc
}

// newPair builds two hosts (plus extra ones, returned after the pair) and starts the
// standby; name's cgroup is cleaned up after the standby has stopped.
func newPair(t *testing.T, name string, extra int) (pair, []host) {
	t.Helper()
	hosts := hostNet(t, 2+extra)
	pr := pair{primary: hosts[0], standby: hosts[1], keys: t.TempDir()}
	if err := auth.Keygen(pr.keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killService(t, name) })
	pr.state = t.TempDir()
	return pr, hosts[2:]
}

func (pr *pair) startStandby(t *testing.T, extra ...string) *standbyProc {
	pr.sb = startStandbyArgs(t, pr.standby, pr.state, pr.keys, extra...)
	return pr.sb
}

// run starts `ftrun run` on the primary host, streaming to the standby.
func (pr pair) run(t *testing.T, name string, args ...string) *ftrunProc {
	t.Helper()
	i := indexOf(args, "--")
	full := append([]string{"--name", name, "--interval", "300ms", "--discard", "--standby", pr.standby.addr + ":7946", "--keys", pr.keys}, args[:i]...)
	return startFtrunIn(t, pr.primary.nsPath(), t.TempDir(), nil, append(full, args[i:]...)...)
}

func indexOf(xs []string, x string) int {
	for i, v := range xs {
		if v == x {
			return i
		}
	}
	return len(xs)
}

// standbyProc is an `ftrun standby` on a host.
type standbyProc struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan struct{}
}

// syncBuffer collects a subprocess's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startStandby(t *testing.T, h host, state, keys string) *standbyProc {
	t.Helper()
	return startStandbyArgs(t, h, state, keys)
}

func startStandbyArgs(t *testing.T, h host, state, keys string, extra ...string) *standbyProc {
	t.Helper()
	var buf syncBuffer
	cmd := h.cmd(ftrunBin, append([]string{"standby", "--listen", h.addr + ":7946", "--state-dir", state, "--keys", keys}, extra...)...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &standbyProc{cmd: cmd, logs: &buf, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("standby log:\n%s", tail(buf.String(), 40))
			logFailedRestores(t, state)
		}
	})
	return p
}

// stop asks the standby to stop (SIGTERM): a program it took over gets its final
// checkpoint and is stopped, as on a primary.
func (p *standbyProc) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.kill()
	}
}

func (p *standbyProc) kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Kill()
		<-p.done
	}
}

// The primary streams every checkpoint to a standby on another host over mutual TLS.
// When the standby dies the program keeps running and ftrun says it is unprotected;
// when the standby comes back (with what it had committed) ftrun reconnects, resyncs
// and is protected again, on its own.
func TestStandbyHoldsEpochsAndSurvivesStandbyLoss(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-standby"
	pr, _ := newPair(t, name, 0)
	sb := pr.startStandby(t)
	stby, keys, standbyState := pr.standby, pr.keys, pr.state
	script, out := writeCounter(t)
	p := pr.run(t, name, "--", "ruby", script, out)
	state := p.stateDir
	st := p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 3
	})
	t.Logf("protected: epoch %d, standby has %d, last shipped %d bytes (full %v)", st.Epoch, st.StandbyEpoch, st.LastShippedBytes, st.LastShipFull)
	if st.LastShipFull {
		t.Errorf("epoch %d was shipped whole: deltas expected after the first", st.StandbyEpoch)
	}

	// What the standby holds is a complete, verified image set of its own, 0700/0600.
	svcDir := filepath.Join(standbyState, name)
	fi, err := os.Stat(svcDir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("standby service dir %s: %v %v", svcDir, fi, err)
	}
	sets, _ := filepath.Glob(filepath.Join(svcDir, "epochs", "0*"))
	if len(sets) == 0 {
		t.Fatalf("no epochs on the standby under %s", svcDir)
	}
	if _, err := checkpoint.VerifyDir(sets[len(sets)-1]); err != nil {
		t.Fatalf("standby's newest epoch does not verify: %v", err)
	}

	// Standby loss: the program keeps running, ftrun reports it unprotected.
	sb.kill()
	lost := p.waitFor("unprotected", 10*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "unprotected")
	})
	if lost.Pid != st.Pid || lost.State != supervisor.StateRunning {
		t.Fatalf("program disturbed by standby loss: %+v", lost)
	}
	p.waitFor("local checkpoints go on", 10*time.Second, func(s supervisor.Status) bool { return s.Epoch >= lost.Epoch+3 })
	if out, _ := exec.Command(ftrunBin, "status", "--state-dir", state).Output(); !strings.Contains(string(out), "unprotected") {
		t.Errorf("ftrun status does not say unprotected:\n%s", out)
	}

	// The standby returns with what it had committed: ftrun catches up on its own.
	startStandby(t, stby, standbyState, keys)
	back := p.waitFor("protected again", 20*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch > lost.Epoch+2
	})
	if back.Pid != st.Pid {
		t.Fatalf("program restarted while the standby came back")
	}
	log := p.log()
	for _, want := range []string{"program is unprotected", "program is protected by standby"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q", want)
		}
	}
}

// Everything on the primary host dies at once (ftrun and the program's cgroup): the
// standby notices the silence, restores the newest epoch it committed and supervises
// the program from there. The counter continues from that epoch, not from zero.
func TestFailoverToStandby(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-failover"
	pr, _ := newPair(t, name, 0)
	pr.startStandby(t, "--metrics", pr.standby.addr+":9465")
	metricsURL := "http://" + pr.standby.addr + ":9465/metrics"
	series := func(m map[string]float64, metric string) float64 { return m[metric+`{service="`+name+`"}`] }
	standbyState := pr.state
	script, out := writeCounter(t)
	// The counter's directory is synced: a checkpoint that catches the counter between
	// writing its temporary file and renaming it holds that file open, and only --sync
	// brings the file back with the memory (without it that one checkpoint cannot be
	// restored, and the standby holds no older one).
	p := pr.run(t, name, "--sync", filepath.Dir(out), "--", "ruby", script, out)
	st := p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 8
	})
	// `ftrun status` on the standby: the service, held, with the primary connected.
	if out, err := exec.Command(ftrunBin, "status", "--state-dir", standbyState).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), name) || !strings.Contains(string(out), "standby") || !strings.Contains(string(out), "connected") ||
		strings.Contains(string(out), "cannot fail over") {
		t.Errorf("standby status before failover: %v\n%s", err, out)
	}
	// The standby's metrics, per service: held and connected, not live.
	m := scrapeIn(t, pr.standby, metricsURL)
	if series(m, "ftrun_standby_committed_epoch") < 8 || series(m, "ftrun_standby_primary_connected") != 1 ||
		series(m, "ftrun_standby_live") != 0 || series(m, "ftrun_standby_received_bytes_total") == 0 {
		t.Errorf("standby metrics before failover: %v", m)
	}
	// The primary host dies: ftrun and the program together.
	p.kill9()
	killService(t, name)
	t0 := time.Now()
	before := readInt(t, out)
	// The standby restores: the counter file moves again, written by the restored program.
	var after int
	deadline := t0.Add(15 * time.Second)
	for {
		if fi, err := os.Stat(out); err == nil && fi.ModTime().After(t0.Add(50*time.Millisecond)) {
			after = readInt(t, out)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby did not take over within 15s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(t0)
	t.Logf("failover: counter %d at the kill, %d after (standby had epoch %d of %d); first write after %s", before, after, st.StandbyEpoch, st.Epoch, took.Round(time.Millisecond))
	if after <= 30 {
		t.Fatalf("counter restarted from zero on the standby: %d", after)
	}
	// At most what happened after the standby's newest epoch is lost (interval 300ms =
	// 6 ticks, plus shipping lag).
	if before-after > 40 {
		t.Errorf("counter went back by %d ticks across failover", before-after)
	}
	if n := countCounters(t, script); n != 1 {
		t.Errorf("%d copies after failover, want 1", n)
	}
	if out, err := exec.Command(ftrunBin, "status", "--state-dir", standbyState).CombinedOutput(); err != nil ||
		!strings.Contains(string(out), "live") || !strings.Contains(string(out), "disconnected") {
		t.Errorf("standby status after failover: %v\n%s", err, out)
	}
	// The failover shows in the standby's metrics.
	m = scrapeIn(t, pr.standby, metricsURL)
	if series(m, "ftrun_failovers_total") != 1 || series(m, "ftrun_standby_live") != 1 || series(m, "ftrun_standby_primary_connected") != 0 {
		t.Errorf("standby metrics after failover: %v", m)
	}
	// The live program is checkpointed again on the standby.
	liveSets := filepath.Join(standbyState, name, "live", supervisor.CheckpointsDir)
	deadline = time.Now().Add(10 * time.Second)
	for {
		sets, _ := filepath.Glob(filepath.Join(liveSets, "0*"))
		if len(sets) >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the program is not checkpointed after take-over (%v)", sets)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// redis-server fails over: every key written before the standby's newest epoch is
// there when the standby answers. (The service address moving with it is the output-
// commit work; here redis listens on all addresses and the client asks the standby.)
func TestRedisFailoverKeepsKeys(t *testing.T) {
	requiresRoot(t, "redis-server", "redis-cli")
	hosts := hostNet(t, 3)
	primary, stby, client := hosts[0], hosts[1], hosts[2]
	keys := t.TempDir()
	if err := auth.Keygen(keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		t.Fatal(err)
	}
	name := "it-redis-failover"
	t.Cleanup(func() { killService(t, name) })
	standbyState := t.TempDir()
	startStandby(t, stby, standbyState, keys)
	args := append([]string{"--name", name, "--interval", "200ms", "--discard", "--standby", stby.addr + ":7946", "--keys", keys, "--"},
		redisArgs(6379, t.TempDir())...)
	for i, a := range args {
		if a == "127.0.0.1" {
			args[i] = "0.0.0.0"
		}
	}
	p := startFtrunIn(t, primary.nsPath(), t.TempDir(), nil, args...)
	p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool { return strings.HasPrefix(s.Protection, "protected") })
	cli := func(h host, args ...string) (string, error) {
		out, err := client.cmd("timeout", append([]string{"2", "redis-cli", "-h", h.addr, "-p", "6379"}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	// "protected" can come with epoch 0, taken before redis listens: wait for it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if out, err := cli(primary, "PING"); err == nil && out == "PONG" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis did not answer on the primary host within 10s")
		}
	}
	const n = 200
	for i := 0; i < n; i++ {
		if out, err := cli(primary, "SET", fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)); err != nil || out != "OK" {
			t.Fatalf("SET k%d: %q %v", i, out, err)
		}
	}
	// Wait until an epoch taken after the writes is acknowledged by the standby.
	after := p.waitFor("epoch with the keys", 5*time.Second, func(s supervisor.Status) bool { return true }).Epoch + 1
	p.waitFor("standby has it", 10*time.Second, func(s supervisor.Status) bool { return s.StandbyEpoch >= after })
	p.kill9()
	killService(t, name)
	t0 := time.Now()
	deadline := t0.Add(15 * time.Second)
	for {
		if out, err := cli(stby, "PING"); err == nil && out == "PONG" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis did not answer on the standby host within 15s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("failover: primary host killed -> first PONG from the standby host in %s", time.Since(t0).Round(time.Millisecond))
	for i := 0; i < n; i++ {
		got, err := cli(stby, "GET", fmt.Sprintf("k%d", i))
		if err != nil || got != fmt.Sprintf("v%d", i) {
			t.Fatalf("k%d on the standby: %q %v", i, got, err)
		}
	}
}

// A file the restore needs (here the program's own binary) that the standby host lacks
// is reported when the service first arrives there, not discovered at failover.
func TestStandbyReportsMissingBinary(t *testing.T) {
	requiresRoot(t)
	hosts := hostNet(t, 2)
	primary, stby := hosts[0], hosts[1]
	keys := t.TempDir()
	if err := auth.Keygen(keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "mysleep")
	data, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, data, 0o755)
	name := "it-missing-bin"
	t.Cleanup(func() { killService(t, name) })
	p := startFtrunIn(t, primary.nsPath(), t.TempDir(), nil, "--name", name, "--interval", "300ms", "--discard",
		"--standby", stby.addr+":7946", "--keys", keys, "--", bin, "1000")
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 1 })
	os.Remove(bin) // the running program keeps its image; the standby host "lacks" it
	standbyState := t.TempDir()
	sb := startStandby(t, stby, standbyState, keys)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, _ := exec.Command(ftrunBin, "status", "--state-dir", standbyState).CombinedOutput()
		if strings.Contains(string(out), "cannot fail over here: "+bin+": missing on this host") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby status does not report the missing binary:\n%s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(sb.logs.String(), "service cannot fail over to this host: "+bin) {
		t.Errorf("standby log does not report it:\n%s", tail(sb.logs.String(), 10))
	}
}

// The standby's disk is full: the primary keeps running, says it is unprotected and
// why, and nothing the standby had committed is lost.
func TestStandbyDiskFull(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-standby-full"
	pr, _ := newPair(t, name, 0)
	standbyState := pr.state
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "ftrun-it", standbyState).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", standbyState).Run() })
	pr.startStandby(t)
	script, out := writeCounter(t)
	p := pr.run(t, name, "--", "ruby", script, out)
	st := p.waitFor("unprotected: disk full", 30*time.Second, func(s supervisor.Status) bool {
		return strings.Contains(s.Protection, "disk is full")
	})
	time.Sleep(time.Second)
	now, _ := status(p.stateDir)
	if now.Pid != st.Pid || now.State != supervisor.StateRunning || now.Epoch <= st.Epoch {
		t.Fatalf("primary disturbed by the standby's full disk: before %+v after %+v", st, now)
	}
	// Once the primary stops sending, no half-written epoch remains on the standby.
	p.stop()
	time.Sleep(500 * time.Millisecond)
	if leftovers, _ := filepath.Glob(filepath.Join(standbyState, name, "epochs", ".tmp-*")); len(leftovers) != 0 {
		t.Errorf("the standby left half-written epochs: %v", leftovers)
	}
}

// Three primaries on three hosts share one standby; when one primary host dies, only
// its service goes live there, and the others stay protected.
func TestOneStandbyThreePrimaries(t *testing.T) {
	requiresRoot(t, "ruby")
	hosts := hostNet(t, 4)
	stby := hosts[3]
	keys := t.TempDir()
	if err := auth.Keygen(keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		t.Fatal(err)
	}
	standbyState := t.TempDir()
	startStandby(t, stby, standbyState, keys)
	var procs []*ftrunProc
	var names []string
	for i := 0; i < 3; i++ {
		name := fmt.Sprintf("it-three-%d", i)
		names = append(names, name)
		t.Cleanup(func() { killService(t, name) })
		script, out := writeCounter(t)
		procs = append(procs, startFtrunIn(t, hosts[i].nsPath(), t.TempDir(), nil, "--name", name, "--interval", "300ms", "--discard",
			"--standby", stby.addr+":7946", "--keys", keys, "--", "ruby", script, out))
	}
	for _, p := range procs {
		p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
			return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 3
		})
	}
	for _, n := range names {
		if fi, err := os.Stat(filepath.Join(standbyState, n)); err != nil || fi.Mode().Perm() != 0o700 {
			t.Fatalf("standby dir for %s: %v %v", n, fi, err)
		}
	}
	procs[1].kill9()
	killService(t, names[1])
	deadline := time.Now().Add(15 * time.Second)
	for {
		out, _ := exec.Command(ftrunBin, "status", "--json", "--state-dir", standbyState).Output()
		var ss []failover.StandbyStatus
		json.Unmarshal(out, &ss)
		roles := map[string]string{}
		for _, s := range ss {
			roles[s.Service] = s.Role
		}
		if roles[names[1]] == "live" {
			if roles[names[0]] != "standby" || roles[names[2]] != "standby" {
				t.Fatalf("only %s should be live: %v", names[1], roles)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not go live on the standby: %s", names[1], out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, i := range []int{0, 2} {
		st := procs[i].waitFor("still protected", 5*time.Second, func(s supervisor.Status) bool { return strings.HasPrefix(s.Protection, "protected") })
		if st.State != supervisor.StateRunning {
			t.Fatalf("%s disturbed: %+v", names[i], st)
		}
	}
}

// --standby-durability memory: the primary asks its standby to ack epochs before they
// are on its disk, and says so in its status; the standby says so in its log. The
// standby's ftrun is then killed (kill -9) right after an ack from memory and started
// again: the epochs it acked are still there (the kernel holds them), the primary is
// protected by it again, and a take-over restores from them, the counter going on.
func TestStandbyAcksFromMemory(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-memack"
	pr, _ := newPair(t, name, 0)
	sb := pr.startStandby(t)
	script, out := writeCounter(t)
	p := pr.run(t, name, "--standby-durability", "memory", "--sync", filepath.Dir(out), "--", "ruby", script, out)
	st := p.waitFor("protected from memory", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected by standby") && strings.Contains(s.Protection, "(acks from memory)") && s.StandbyEpoch >= 5
	})
	if !strings.Contains(sb.logs.String(), "the primary asks for acks from memory") {
		t.Errorf("the standby does not say it acks from memory:\n%s", tail(sb.logs.String(), 10))
	}
	sb.kill()
	sb = pr.startStandby(t)
	held := regexp.MustCompile(`holding committed epoch.* epoch=(\d+)`)
	deadline := time.Now().Add(10 * time.Second)
	for held.FindStringSubmatch(sb.logs.String()) == nil && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if m := held.FindStringSubmatch(sb.logs.String()); m == nil {
		t.Fatalf("the restarted standby does not say what it holds:\n%s", tail(sb.logs.String(), 10))
	} else if n, _ := strconv.ParseUint(m[1], 10, 64); n < st.StandbyEpoch {
		t.Fatalf("the restarted standby holds epoch %d, but epoch %d had been acked from memory", n, st.StandbyEpoch)
	}
	st = p.waitFor("protected again by the restarted standby", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected by standby") && s.StandbyEpoch > st.StandbyEpoch
	})
	p.kill9()
	killService(t, name)
	before := readInt(t, out)
	t0 := time.Now()
	for {
		if fi, err := os.Stat(out); err == nil && fi.ModTime().After(t0.Add(50*time.Millisecond)) && readInt(t, out) > 0 {
			break
		}
		if time.Since(t0) > 20*time.Second {
			t.Fatalf("the standby did not take over from the epoch it acked from memory:\n%s", tail(sb.logs.String(), 20))
		}
		time.Sleep(10 * time.Millisecond)
	}
	if after := readInt(t, out); after < 10 || before-after > 40 {
		t.Fatalf("counter %d at the kill, %d after the take-over (standby had epoch %d): not continued from the acked epoch", before, after, st.StandbyEpoch)
	}
	if n := countCounters(t, script); n != 1 {
		t.Errorf("%d copies after the take-over, want 1", n)
	}
}

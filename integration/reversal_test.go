package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/contrib/demo"
	"github.com/ftrun/ftrun/supervisor"
)

// node is one host of a symmetric pair: its network namespace, its own cgroup root
// (two hosts share this machine's cgroups; each must only ever kill its own) and the
// state dir it keeps across restarts.
type node struct {
	h      host
	cgroot string
	state  string
}

func newNode(t *testing.T, h host, tag string) node {
	n := node{h: h, cgroot: "/ftrun-" + tag, state: t.TempDir()}
	t.Cleanup(func() { n.killCgroups(t) })
	return n
}

func (n node) env() []string { return []string{"FTRUN_CGROUP_ROOT=" + n.cgroot} }

// killCgroups kills everything in this node's cgroups and removes them.
func (n node) killCgroups(t testing.TB) {
	root := filepath.Join(cgroup2Mount(t), n.cgroot)
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(root, e.Name())
		_ = os.WriteFile(filepath.Join(p, "cgroup.kill"), []byte("1"), 0)
		for i := 0; i < 200; i++ {
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			if strings.TrimSpace(string(b)) == "" {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		_ = os.Remove(p)
	}
	_ = os.Remove(root)
}

// procs lists the processes in this node's cgroup of service name.
func (n node) procs(t testing.TB, name string) []string {
	b, _ := os.ReadFile(filepath.Join(cgroup2Mount(t), n.cgroot, name, "cgroup.procs"))
	return strings.Fields(string(b))
}

// describe names processes by pid and command line.
func describe(pids []string) string {
	var out []string
	for _, p := range pids {
		b, _ := os.ReadFile("/proc/" + p + "/cmdline")
		out = append(out, p+" ("+strings.ReplaceAll(strings.TrimRight(string(b), "\x00"), "\x00", " ")+")")
	}
	return strings.Join(out, ", ")
}

// dropServiceLinks removes the service veths on this host: a host that died takes
// its links with it.
func (n node) dropServiceLinks() {
	out, _ := exec.Command("ip", "-n", n.h.name, "-o", "link", "show", "type", "veth").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], "ft-") {
			exec.Command("ip", "-n", n.h.name, "link", "del", strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]).Run()
		}
	}
}

// die kills everything of ftrun on this host at once and cuts its network, as a host
// that loses power.
func (n node) die(t testing.TB) {
	n.killCgroups(t)
	n.dropServiceLinks()
	exec.Command("ip", "-n", n.h.name, "link", "set", "eth0", "down").Run()
}

func (n node) comeBack() {
	exec.Command("ip", "-n", n.h.name, "link", "set", "eth0", "up").Run()
}

// startStandbyOn runs `ftrun standby` on n with its own cgroup root.
func startStandbyOn(t *testing.T, n node, keys string, extra ...string) *standbyProc {
	t.Helper()
	var buf syncBuffer
	cmd := n.h.cmd(ftrunBin, append([]string{"standby", "--listen", n.h.addr + ":7946", "--state-dir", n.state, "--keys", keys}, extra...)...)
	cmd.Stdout, cmd.Stderr = &buf, &buf
	cmd.Env = append(os.Environ(), n.env()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &standbyProc{cmd: cmd, logs: &buf, done: make(chan struct{})}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("standby log (%s):\n%s", n.h.name, tail(buf.String(), 40))
		}
	})
	return p
}

// waitStatus polls the control socket of the supervisor in stateDir.
func waitStatus(t *testing.T, stateDir, what string, timeout time.Duration, ok func(supervisor.Status) bool) supervisor.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last supervisor.Status
	var lastErr error
	for time.Now().Before(deadline) {
		st, err := status(stateDir)
		if err == nil && ok(st) {
			return st
		}
		last, lastErr = st, err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s; last status %+v (%v)", what, timeout, last, lastErr)
	return last
}

// checkPrefix is the acknowledged-writes check on what the client saw so far: the
// i-th write answered i+1, and the connection still works.
func checkPrefix(t *testing.T, w *writer, cycle int) int {
	t.Helper()
	acked, err := w.snapshot()
	if err != nil {
		t.Fatalf("cycle %d: the client's connection broke: %v", cycle, err)
	}
	for _, a := range acked {
		if a.reply != a.i+1 {
			t.Fatalf("cycle %d: write %d was answered %d, want %d: an acknowledged write was lost or doubled", cycle, a.i, a.reply, a.i+1)
		}
	}
	return len(acked)
}

// waitWrites waits until the client has n acknowledged writes.
func waitWrites(t *testing.T, w *writer, n int, timeout time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		acked, err := w.snapshot()
		if err != nil {
			t.Fatalf("%s: the client's connection broke: %v", what, err)
		}
		if len(acked) >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: only %d of %d writes answered within %s", what, len(acked), n, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pairEnv is a symmetric pair: A runs `ftrun run --standby B`, B runs `ftrun standby
// --peer A`; a client on a third host writes to redis at the service address.
type pairEnv struct {
	outputEnv
	a, b    node
	name    string
	port    int
	runArgs []string
}

func newPairEnv(t *testing.T, name string) *pairEnv {
	e := &pairEnv{outputEnv: newOutputEnv(t), name: name, port: freePort(t)}
	e.a = newNode(t, e.primary, name+"-a")
	e.b = newNode(t, e.standby, name+"-b")
	e.runArgs = append([]string{"--name", name, "--interval", "100ms", "--standby", e.b.h.addr + ":7946", "--listen", e.a.h.addr + ":7946",
		"--keys", e.keys, "--net", "--addr", e.svc + "/24", "--"}, redisService.argv(e.port, t.TempDir())...)
	return e
}

func (e *pairEnv) runA(t *testing.T, env ...string) *ftrunProc {
	return startFtrunIn(t, e.a.h.nsPath(), e.a.state, append(e.a.env(), env...), e.runArgs...)
}

func (e *pairEnv) standbyB(t *testing.T) *standbyProc {
	// The live copy after a take-over checkpoints at the standby's --interval.
	return startStandbyOn(t, e.b, e.keys, "--peer", e.a.h.addr+":7946", "--interval", "100ms")
}

// liveB is the state dir of the copy B's standby runs after a take-over.
func (e *pairEnv) liveB() string { return filepath.Join(e.b.state, e.name, "live") }

// aDiesAndReturns kills host A with pa, its ftrun, while B holds its epochs, waits
// for the client's writes to go on on B's live copy, and brings A back with the same
// command; it returns A's new ftrun.
func (e *pairEnv) aDiesAndReturns(t *testing.T, pa *ftrunProc, w *writer) *ftrunProc {
	t.Helper()
	pa.kill9()
	e.a.die(t)
	n := checkPrefix(t, w, 1)
	waitWrites(t, w, n+10, 30*time.Second, "writes on B's live copy")
	e.a.comeBack()
	return e.runA(t)
}

func protectedBy(peer string) func(supervisor.Status) bool {
	return func(s supervisor.Status) bool {
		return s.Pid > 0 && strings.HasPrefix(s.Protection, "protected by standby "+peer) && s.StandbyEpoch > 0
	}
}

// Protection that lasts, with the old primary coming back as the live copy's
// standby: the live host is killed and comes back (same command, same state dir)
// cycles times, alternating between the two hosts, while one client writes on one
// connection. After each cycle: every acknowledged write is there exactly once, the
// connection works, the returned host never started or restored the program (it is
// the standby, says so, and holds epochs), and the live copy is protected by it
// again. FTRUN_SOAK=1 runs 10 cycles.
func TestPingPongFailover(t *testing.T) {
	cycles := 2
	if os.Getenv("FTRUN_SOAK") != "" {
		cycles = 10
	}
	e := newPairEnv(t, "it-pp")
	sb := e.standbyB(t)
	pa := e.runA(t)
	waitStatus(t, e.a.state, "A protected by B", 30*time.Second, protectedBy(e.b.h.addr))
	w := startWriter(t, e.outputEnv, redisService, e.port, 15*time.Second)
	defer w.close()
	waitWrites(t, w, 20, 20*time.Second, "first writes")

	liveOnA := true
	var times []time.Duration
	for c := 1; c <= cycles; c++ {
		before := checkPrefix(t, w, c)
		last := time.Now()
		if acked, _ := w.snapshot(); len(acked) > 0 {
			last = acked[len(acked)-1].at
		}
		killedAt := time.Now()
		if liveOnA {
			pa.kill9()
			e.a.die(t)
		} else {
			sb.kill()
			e.b.die(t)
		}
		waitWrites(t, w, before+10, 30*time.Second, fmt.Sprintf("cycle %d: writes after the take-over", c))
		acked, _ := w.snapshot()
		var pause time.Duration
		for _, a := range acked {
			if a.at.After(killedAt) {
				pause = a.at.Sub(last)
				break
			}
		}
		checkPrefix(t, w, c)
		// The dead host comes back with the same command and state dir.
		back := time.Now()
		if liveOnA {
			e.a.comeBack()
			pa = e.runA(t)
			waitStatus(t, e.a.state, fmt.Sprintf("cycle %d: A serves as standby", c), 30*time.Second, func(s supervisor.Status) bool {
				return s.Role == supervisor.RoleStandby && strings.Contains(s.Protection, "holding epoch")
			})
			waitStatus(t, e.liveB(), fmt.Sprintf("cycle %d: B's live copy protected by A", c), 60*time.Second, protectedBy(e.a.h.addr))
			if lg := pa.log(); strings.Contains(lg, "msg=\"program restored") || strings.Contains(lg, "msg=\"program started") {
				t.Fatalf("cycle %d: the returned primary ran the program beside the live copy:\n%s", c, tail(lg, 30))
			}
			if ps := e.a.procs(t, e.name); len(ps) != 0 {
				t.Fatalf("cycle %d: processes %s in A's cgroup while B is live", c, describe(ps))
			}
		} else {
			e.b.comeBack()
			sb = e.standbyB(t)
			waitStatus(t, e.a.state, fmt.Sprintf("cycle %d: A's live copy protected by B", c), 60*time.Second, protectedBy(e.b.h.addr))
			if ps := e.b.procs(t, e.name); len(ps) != 0 {
				t.Fatalf("cycle %d: processes %s in B's cgroup while A is live", c, describe(ps))
			}
		}
		reprotected := time.Since(back)
		if os.Getenv("FTRUN_PP_LOGS") != "" {
			t.Logf("cycle %d logs; A:\n%s\nB:\n%s", c, tail(pa.log(), 25), tail(sb.logs.String(), 25))
		}
		if reprotected > 10*time.Second {
			t.Logf("cycle %d: slow to protect again; A:\n%s\nB:\n%s", c, tail(pa.log(), 40), tail(sb.logs.String(), 40))
		}
		n := checkPrefix(t, w, c)
		waitWrites(t, w, n+10, 20*time.Second, fmt.Sprintf("cycle %d: writes while protected again", c))
		from, to := "A", "B"
		if !liveOnA {
			from, to = "B", "A"
		}
		t.Logf("cycle %d: %s killed, %s live: client paused %s; %s back and protecting again after %s; %d writes acknowledged",
			c, from, to, pause.Round(time.Millisecond), from, reprotected.Round(time.Millisecond), n)
		times = append(times, pause)
		liveOnA = !liveOnA
	}
	port := e.port
	acked, final, err := w.finish(t, e.outputEnv, port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	p50, mx := supervisorPercentiles(times)
	t.Logf("%d cycles, %d writes acknowledged, 0 lost, 0 doubled; client pause per take-over median %s, max %s", cycles, len(acked), p50, mx)
}

// Without an arbiter, a partition may leave two live copies only while it lasts: the
// primary host is cut off (its uplink down) while its ftrun and program keep running,
// the standby takes over and the client's writes go on there; when the link comes
// back the old primary is refused by the live copy, fences itself (frozen, killed,
// exit 156, one log line), the live copy announces the address again, and every write
// the client saw acknowledged is there exactly once, on the same connection and for a
// new client. Restarted with the same flags (systemd's Restart=), the old primary then
// becomes the live copy's standby.
func TestHealedPartitionOneCopySurvives(t *testing.T) {
	e := newPairEnv(t, "it-heal")
	e.standbyB(t)
	pa := e.runA(t)
	waitStatus(t, e.a.state, "A protected by B", 30*time.Second, protectedBy(e.b.h.addr))
	w := startWriter(t, e.outputEnv, redisService, e.port, 20*time.Second)
	defer w.close()
	waitWrites(t, w, 20, 20*time.Second, "first writes")

	run(t, "ip", "-n", e.a.h.name, "link", "set", "eth0", "down")
	cut := checkPrefix(t, w, 0)
	waitWrites(t, w, cut+15, 30*time.Second, "writes on the standby's copy during the partition")
	if n := len(e.a.procs(t, e.name)); n == 0 {
		t.Fatalf("the cut-off primary's program is gone: the test needs two live copies during the partition")
	}
	duringCut := checkPrefix(t, w, 0)

	run(t, "ip", "-n", e.a.h.name, "link", "set", "eth0", "up")
	code, err := pa.wait(20 * time.Second)
	if err != nil {
		t.Fatalf("the old primary did not fence itself after the partition healed:\n%s", tail(pa.log(), 20))
	}
	if code != supervisor.ExitSuperseded {
		t.Fatalf("old primary exited %d, want %d (superseded)", code, supervisor.ExitSuperseded)
	}
	if !strings.Contains(pa.log(), "the service is live on the peer") {
		t.Errorf("the old primary's log does not say why it stopped:\n%s", tail(pa.log(), 10))
	}
	if ps := e.a.procs(t, e.name); len(ps) != 0 {
		t.Fatalf("processes %s left in the fenced primary's cgroup", describe(ps))
	}
	waitWrites(t, w, duringCut+15, 30*time.Second, "writes after the heal")
	checkPrefix(t, w, 0)

	// systemd restarts it with the same flags (Type=notify, WatchdogSec=): it becomes
	// the live copy's standby, says it is ready and keeps feeding the watchdog.
	notify, path := bindNotify(t)
	pa = e.runA(t, "NOTIFY_SOCKET="+path, "WATCHDOG_USEC=400000")
	waitStatus(t, e.a.state, "A serves as standby", 30*time.Second, func(s supervisor.Status) bool {
		return s.Role == supervisor.RoleStandby && strings.Contains(s.Protection, "holding epoch")
	})
	time.Sleep(time.Second)
	msgs := notify.all()
	if firstIndex(msgs, "READY=1") < 0 || strings.Count(strings.Join(msgs, "\n"), "WATCHDOG=1") < 2 {
		t.Errorf("a standby under systemd must say READY=1 and feed the watchdog; sent %q", msgs)
	}
	waitStatus(t, e.liveB(), "B's live copy protected by A", 60*time.Second, protectedBy(e.a.h.addr))
	n := checkPrefix(t, w, 0)
	waitWrites(t, w, n+10, 20*time.Second, "writes while protected again")

	acked, final, err := w.finish(t, e.outputEnv, e.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	c := dialService(t, e.outputEnv, e.port, 5*time.Second)
	defer c.conn.Close()
	if got, err := redisService.count(c); err != nil || got != len(acked) {
		t.Fatalf("a new client counts %d writes (%v), %d were acknowledged", got, err, len(acked))
	}
	t.Logf("%d writes acknowledged (%d during the partition), 0 lost, 0 doubled, one copy after the heal", len(acked), duringCut-cut)
}

// hostLinks lists the service veths (host ends) on n's host.
func (n node) hostLinks() []string {
	out, _ := exec.Command("ip", "-n", n.h.name, "-o", "link", "show", "type", "veth").Output()
	var links []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "ft-") {
			links = append(links, strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
	return links
}

// When ftrun and its program are SIGKILLed on a host whose network stays up, the
// program's link goes with ftrun (its link namespace had no other holder), although
// the program's own namespace lingers behind orphaned sockets: the address stops
// answering from that host within a second or so, and once the standby has taken
// over, new clients reach the live copy at once and find every acknowledged write.
func TestDeadPrimaryAddressGoes(t *testing.T) {
	e := newPairEnv(t, "it-linkgo")
	sb := e.standbyB(t)
	defer func() { t.Logf("B:\n%s", tail(sb.logs.String(), 40)) }()
	pa := e.runA(t)
	waitStatus(t, e.a.state, "A protected by B", 30*time.Second, protectedBy(e.b.h.addr))
	w := startWriter(t, e.outputEnv, redisService, e.port, 20*time.Second)
	defer w.close()
	waitWrites(t, w, 20, 20*time.Second, "first writes")
	if len(e.a.hostLinks()) != 1 {
		t.Fatalf("want one service link on A, have %v", e.a.hostLinks())
	}

	for i := 0; i < 3; i++ {
		start := time.Now()
		c := dialService(t, e.outputEnv, e.port, 5*time.Second)
		_, err := redisService.count(c)
		c.conn.Close()
		t.Logf("before the kill, a new client is answered in %s (%v)", time.Since(start).Round(time.Millisecond), err)
	}
	killed := time.Now()
	pa.kill9()
	e.a.killCgroups(t)
	for len(e.a.hostLinks()) > 0 {
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("A's service link %v still there 5s after ftrun died: the dead primary shadows the address", e.a.hostLinks())
		}
		time.Sleep(10 * time.Millisecond)
	}
	gone := time.Since(killed)
	before := checkPrefix(t, w, 0)
	waitWrites(t, w, before+10, 30*time.Second, "writes after the take-over")
	// New clients, one after another: each connects at once to the live copy.
	var slowest time.Duration
	var each []string
	for i := 0; i < 5; i++ {
		start := time.Now()
		c := dialService(t, e.outputEnv, e.port, 5*time.Second)
		n, err := redisService.count(c)
		c.conn.Close()
		if err != nil {
			t.Fatalf("new client %d: %v", i, err)
		}
		if acked := checkPrefix(t, w, 0); n < acked-1 {
			t.Fatalf("new client %d counts %d writes, %d were acknowledged", i, n, acked)
		}
		slowest = max(slowest, time.Since(start))
		each = append(each, time.Since(start).Round(time.Millisecond).String())
	}
	t.Logf("new clients answered in %s", strings.Join(each, ", "))
	acked, final, err := w.finish(t, e.outputEnv, e.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	t.Logf("A's service link gone %s after ftrun died; new clients answered by the live copy within %s; %d writes, 0 lost",
		gone.Round(time.Millisecond), slowest.Round(time.Millisecond), len(acked))
}

// The demo's host-level part, as `make demo` runs it: the host running the counter
// dies and the standby takes over, the dead host comes back as the live copy's
// standby, and a partition with the etcd arbiter leaves exactly one copy counting.
func TestCounterDemoHosts(t *testing.T) {
	requiresRoot(t, "ruby", "etcd", "iptables")
	var out strings.Builder
	dir := t.TempDir()
	results, err := demo.RunResults(context.Background(), demo.Options{Ftrun: ftrunBin, WorkDir: dir, Interval: 500 * time.Millisecond,
		Out: &out, Steps: demo.HostSteps})
	t.Logf("demo timeline:\n%s", out.String())
	defer func() {
		if t.Failed() {
			for _, f := range []string{"host-a.log", "host-b.log"} {
				b, _ := os.ReadFile(filepath.Join(dir, f))
				t.Logf("%s:\n%s", f, tail(string(b), 25))
			}
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != len(demo.HostSteps) {
		t.Fatalf("%d results, want %d", len(results), len(demo.HostSteps))
	}
	for _, r := range results {
		if !r.OK {
			t.Errorf("%s: not ok (rollback %d, allowed %d, after %d)", r.Step, r.Rollback, r.Allowed, r.After)
		}
	}
}

// With the etcd arbiter, roles follow the key across a full cycle: A holds it and
// runs the program; A dies, its lease expires, B takes the key and goes live; A comes
// back (same command) and becomes B's standby without asking for the key; B dies and A
// takes the key and the service back. One client connection sees every acknowledged
// write exactly once throughout.
func TestArbiterRoleReversal(t *testing.T) {
	requiresRoot(t, "etcd", "etcdctl")
	e := newPairEnv(t, "it-arbrr")
	etcd := startEtcd(t, e.client)
	i := indexOf(e.runArgs, "--")
	e.runArgs = append(append(append([]string{}, e.runArgs[:i]...), "--arbiter", "etcd:"+etcd), e.runArgs[i:]...)
	sb := startStandbyOn(t, e.b, e.keys, "--peer", e.a.h.addr+":7946", "--interval", "100ms", "--arbiter", "etcd:"+etcd)
	pa := e.runA(t)
	waitStatus(t, e.a.state, "A protected by B", 30*time.Second, protectedBy(e.b.h.addr))
	w := startWriter(t, e.outputEnv, redisService, e.port, 20*time.Second)
	defer w.close()
	waitWrites(t, w, 20, 20*time.Second, "first writes")

	pa.kill9()
	e.a.die(t)
	n := checkPrefix(t, w, 1)
	waitWrites(t, w, n+10, 30*time.Second, "writes on B after it took the key")
	if !strings.Contains(sb.logs.String(), "holding the arbiter's key: going live") {
		t.Fatalf("B went live without the key:\n%s", tail(sb.logs.String(), 20))
	}
	e.a.comeBack()
	pa = e.runA(t)
	waitStatus(t, e.a.state, "A serves as standby", 30*time.Second, func(s supervisor.Status) bool {
		return s.Role == supervisor.RoleStandby && strings.Contains(s.Protection, "holding epoch")
	})
	waitStatus(t, e.liveB(), "B's live copy protected by A", 60*time.Second, protectedBy(e.a.h.addr))
	n = checkPrefix(t, w, 2)

	sb.kill()
	e.b.die(t)
	waitWrites(t, w, n+10, 30*time.Second, "writes on A after it took the key back")
	if !strings.Contains(pa.log(), "holding the arbiter's key: going live") {
		t.Fatalf("A went live without the key:\n%s", tail(pa.log(), 20))
	}
	acked, final, err := w.finish(t, e.outputEnv, e.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	t.Logf("%d writes acknowledged across A -> B -> A with the etcd arbiter, 0 lost, 0 doubled", len(acked))
}

// A host that was the live copy's standby and restarts while it cannot reach the peer
// (no arbiter) does not start the program: the peer may be running it behind a
// partition, and the epochs this host holds may be older than what clients were told.
// It waits as a standby; once the network heals, the live copy connects and is
// protected by it again, and the client's writes were never interrupted.
func TestFormerStandbyWaitsForUnreachablePeer(t *testing.T) {
	e := newPairEnv(t, "it-wait")
	e.standbyB(t)
	pa := e.runA(t)
	waitStatus(t, e.a.state, "A protected by B", 30*time.Second, protectedBy(e.b.h.addr))
	w := startWriter(t, e.outputEnv, redisService, e.port, 20*time.Second)
	defer w.close()
	waitWrites(t, w, 10, 20*time.Second, "first writes")
	pa = e.aDiesAndReturns(t, pa, w)
	waitStatus(t, e.liveB(), "B's live copy protected by A", 60*time.Second, protectedBy(e.a.h.addr))

	// A's ftrun dies and comes back while it cannot reach B (B and the client go on).
	pa.kill9()
	heal := partition(t, e.a.h, e.b.h)
	pa = e.runA(t)
	waitStatus(t, e.a.state, "A decided without the peer", 30*time.Second, func(s supervisor.Status) bool {
		return s.Role == supervisor.RoleStandby && s.State == supervisor.StateStandby
	})
	if !strings.Contains(pa.log(), "this host was its standby: waiting for the live copy") {
		t.Errorf("A's log does not say why it waits:\n%s", tail(pa.log(), 10))
	}
	n := checkPrefix(t, w, 2)
	waitWrites(t, w, n+10, 30*time.Second, "writes on B while A waits")
	if ps := e.a.procs(t, e.name); len(ps) != 0 {
		t.Fatalf("A started the program although the live copy may run on B: %s", describe(ps))
	}
	heal()
	waitStatus(t, e.liveB(), "B's live copy protected by A again", 60*time.Second, protectedBy(e.a.h.addr))
	acked, final, err := w.finish(t, e.outputEnv, e.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
}

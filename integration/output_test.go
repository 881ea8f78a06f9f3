package integration

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/bench"
	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/transport/auth"
)

// bridgeHost turns a host's uplink into a port of a bridge br0 that carries the host's
// address: the client-facing LAN bridge that `ftrun run --net` attaches programs to.
func bridgeHost(t *testing.T, h host) {
	t.Helper()
	h.ip(t, "link", "add", "br0", "type", "bridge")
	h.ip(t, "link", "set", "br0", "up")
	h.ip(t, "addr", "del", h.addr+"/24", "dev", "eth0")
	h.ip(t, "link", "set", "eth0", "master", "br0")
	h.ip(t, "addr", "add", h.addr+"/24", "dev", "br0")
}

// dialIn opens a TCP connection from inside host h. The socket keeps h's network
// namespace for its whole life, whatever thread later uses it.
func dialIn(h host, addr string, timeout time.Duration) (net.Conn, error) {
	return bench.DialIn(h.nsPath(), addr, timeout)
}

// outputEnv is three hosts: a primary and a standby, each with a LAN bridge, and a
// client; the service address lives on their common subnet.
type outputEnv struct {
	primary, standby, client host
	keys, svc                string
}

func newOutputEnv(t *testing.T) outputEnv {
	t.Helper()
	requiresRoot(t, "redis-server", "iptables")
	hosts := hostNet(t, 3)
	e := outputEnv{primary: hosts[0], standby: hosts[1], client: hosts[2], keys: t.TempDir()}
	bridgeHost(t, e.primary)
	bridgeHost(t, e.standby)
	e.svc = e.primary.addr[:strings.LastIndex(e.primary.addr, ".")] + ".100"
	if err := auth.Keygen(e.keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		t.Fatal(err)
	}
	return e
}

// ackedWrite is a write whose reply the client saw.
type ackedWrite struct {
	i     int // the client's i-th write (from 0)
	reply int // the count after it, as the server said
	at    time.Time
}

// service is a real server under test and how one client writes to it: each write
// adds exactly one to a count the server keeps (a redis list's length, a memcached
// counter) and the reply says the count, so one client writing one at a time must see
// replies 1, 2, 3, ... whatever happens in between.
type service struct {
	argv  func(port int, dir string) []string
	write func(c *textConn, i int) (int, error)
	count func(c *textConn) (int, error)
}

var redisService = service{
	argv: func(port int, dir string) []string {
		a := redisArgs(port, dir)
		for i, x := range a {
			if x == "127.0.0.1" {
				a[i] = "0.0.0.0"
			}
		}
		return a
	},
	write: func(c *textConn, i int) (int, error) {
		got, err := c.redis().Do(c.timeout, "RPUSH", "log", fmt.Sprintf("v%d", i))
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(got)
	},
	count: func(c *textConn) (int, error) {
		got, err := c.redis().Do(c.timeout, "LLEN", "log")
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(got)
	},
}

var memcachedService = service{
	argv: func(port int, dir string) []string {
		return []string{"memcached", "-p", strconv.Itoa(port), "-l", "0.0.0.0", "-U", "0", "-u", "root", "-t", "2", "-m", "64"}
	},
	write: func(c *textConn, i int) (int, error) {
		if i == 0 {
			if got, err := c.line("add n 0 0 1\r\n0\r\n"); err != nil || got != "STORED" {
				return 0, fmt.Errorf("add: %q %v", got, err)
			}
		}
		got, err := c.line("incr n 1\r\n")
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(got)
	},
	count: func(c *textConn) (int, error) {
		if _, err := c.conn.Write([]byte("get n\r\n")); err != nil {
			return 0, err
		}
		var n int
		for {
			got, err := c.readLine()
			switch {
			case err != nil:
				return 0, err
			case got == "END":
				return n, nil
			case strings.HasPrefix(got, "VALUE"):
				v, err := c.readLine()
				if err != nil {
					return 0, err
				}
				n, _ = strconv.Atoi(v)
			}
		}
	},
}

// textConn is one client connection with a deadline per request.
type textConn struct {
	conn    net.Conn
	rd      *bufio.Reader
	timeout time.Duration
}

func (c *textConn) redis() *resp { return bench.NewRESP(c.conn, c.rd) }

func (c *textConn) readLine() (string, error) {
	s, err := c.rd.ReadString('\n')
	return strings.TrimRight(s, "\r\n"), err
}

func (c *textConn) line(req string) (string, error) {
	_ = c.conn.SetDeadline(time.Now().Add(c.timeout))
	if _, err := c.conn.Write([]byte(req)); err != nil {
		return "", err
	}
	return c.readLine()
}

// writer writes to the service over one connection, one write at a time, and records
// every reply.
type writer struct {
	svc   service
	c     *textConn
	mu    sync.Mutex
	acked []ackedWrite
	err   error
	stop  chan struct{}
	done  chan struct{}
}

func dialService(t *testing.T, e outputEnv, port int, timeout time.Duration) *textConn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := dialIn(e.client, net.JoinHostPort(e.svc, strconv.Itoa(port)), time.Second)
		if err == nil {
			return &textConn{conn: c, rd: bufio.NewReader(c), timeout: timeout}
		}
		if time.Now().After(deadline) {
			t.Fatalf("client cannot reach the service at %s: %v\n%s", e.svc, err, e.netState())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// netState is what the hosts' network looks like, for a failure message: the
// client's neighbour entry for the service address, the MACs the bridges know, and
// the service namespaces' addresses, output rule, sockets and queues.
func (e outputEnv) netState() string {
	var b strings.Builder
	show := func(name string, args ...string) {
		out, err := exec.Command(name, args...).CombinedOutput()
		fmt.Fprintf(&b, "$ %s %s\n%s", name, strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
	}
	show("ip", "-n", e.client.name, "neigh", "show")
	for _, h := range []host{e.primary, e.standby} {
		show("ip", "-n", h.name, "-br", "link")
		show("bridge", "-n", h.name, "fdb", "show", "br", "br0", "dynamic")
	}
	out, _ := exec.Command("sh", "-c", "for p in $(pgrep -x redis-server); do echo pid $p; nsenter -t $p -n ip -br addr; nsenter -t $p -n ip neigh; nsenter -t $p -n iptables -S OUTPUT; nsenter -t $p -n ss -tan; cat /proc/$p/net/netfilter/nfnetlink_queue; done").CombinedOutput()
	b.Write(out)
	return b.String()
}

func startWriter(t *testing.T, e outputEnv, svc service, port int, replyTimeout time.Duration) *writer {
	t.Helper()
	w := &writer{svc: svc, c: dialService(t, e, port, replyTimeout), stop: make(chan struct{}), done: make(chan struct{})}
	t.Cleanup(func() { w.c.conn.Close() })
	go func() {
		defer close(w.done)
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			n, err := svc.write(w.c, i)
			w.mu.Lock()
			if err != nil {
				w.err = fmt.Errorf("write %d: %w", i, err)
			} else {
				w.acked = append(w.acked, ackedWrite{i: i, reply: n, at: time.Now()})
			}
			w.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return w
}

// close resets the connection rather than leaving a closing socket behind.
func (w *writer) close() {
	if tc, ok := w.c.conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	w.c.conn.Close()
}

// dropServiceLinks removes the veths `ftrun run --net` made on the primary and standby
// hosts, with whatever namespace they led to.
func (e outputEnv) dropServiceLinks(t *testing.T) {
	for _, h := range []host{e.primary, e.standby} {
		out, _ := exec.Command("ip", "-n", h.name, "-o", "link", "show", "type", "veth").Output()
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			if len(f) > 1 && strings.HasPrefix(f[1], "ft-") {
				exec.Command("ip", "-n", h.name, "link", "del", strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]).Run()
			}
		}
	}
}

func (w *writer) snapshot() ([]ackedWrite, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]ackedWrite(nil), w.acked...), w.err
}

// finish stops the writer and reads the count back on the same connection; if that
// connection no longer works (an error of its own), on a new one.
func (w *writer) finish(t *testing.T, e outputEnv, port int) ([]ackedWrite, int, error) {
	close(w.stop)
	<-w.done
	acked, err := w.snapshot()
	if err == nil {
		n, cerr := w.svc.count(w.c)
		if cerr == nil {
			return acked, n, nil
		}
		err = fmt.Errorf("read back on the same connection: %w", cerr)
	}
	c := dialService(t, e, port, 5*time.Second)
	defer c.conn.Close()
	n, cerr := w.svc.count(c)
	if cerr != nil {
		return acked, -1, fmt.Errorf("%w; and on a new connection: %v", err, cerr)
	}
	return acked, n, err
}

// outputViolations is the checker: the i-th write's reply must be i+1 (a write lost
// after it was acknowledged, or applied twice, shifts every later reply), and the count
// at the end must be the number of acknowledged writes.
func outputViolations(acked []ackedWrite, final int) []string {
	var v []string
	for _, a := range acked {
		if a.reply != a.i+1 {
			v = append(v, fmt.Sprintf("write %d was answered %d, want %d: an acknowledged write was lost or one was applied twice", a.i, a.reply, a.i+1))
			break
		}
	}
	if final != len(acked) {
		v = append(v, fmt.Sprintf("after failover the server counts %d writes, the client saw %d acknowledged", final, len(acked)))
	}
	return v
}

// outputRound runs redis under `ftrun run --net --standby` on the primary host with one
// client writing, kills everything on the primary host at killAt after the writes
// start, and returns the checker's findings and the pause the client saw.
type roundResult struct {
	violations []string
	acked      int
	pause      time.Duration // last reply before the kill -> first reply after
	latency    time.Duration // median time per write before the kill
	nudged     bool          // the standby asked the client to resend at once
	err        error
}

type roundOpts struct {
	svc              service
	port             int
	commit, interval string
	killAt           time.Duration // after the writes start
	// checkpointFirst: some writes, an epoch the standby acknowledges, more writes,
	// then the kill (instead of killAt).
	checkpointFirst bool
	replyTimeout    time.Duration
}

func (e outputEnv) round(t *testing.T, name string, o roundOpts) roundResult {
	t.Helper()
	t.Cleanup(func() { killService(t, name) })
	sb := startStandbyArgs(t, e.standby, t.TempDir(), e.keys)
	defer func() {
		sb.kill()
		killService(t, name)
		// Nothing of this round may answer for the service address in the next one.
		e.dropServiceLinks(t)
	}()
	args := append([]string{"--name", name, "--interval", o.interval, "--discard", "--standby", e.standby.addr + ":7946", "--keys", e.keys,
		"--net", "--addr", e.svc + "/24", "--commit", o.commit, "--"}, o.svc.argv(o.port, t.TempDir())...)
	p := startFtrunIn(t, e.primary.nsPath(), t.TempDir(), nil, args...)
	if o.checkpointFirst {
		p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
		p.checkpoint()
	}
	p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch > 0
	})
	w := startWriter(t, e, o.svc, o.port, o.replyTimeout)
	if o.checkpointFirst {
		// Some writes, an epoch that holds them on the standby, then more writes that
		// no epoch holds.
		waitAcked(t, w, 20)
		ep := p.checkpoint()
		p.waitFor("standby has the epoch", 10*time.Second, func(s supervisor.Status) bool { return s.StandbyEpoch >= ep })
		n := len(mustSnapshot(w))
		waitAcked(t, w, n+20)
	} else {
		time.Sleep(o.killAt)
	}
	// The primary host dies: its ftrun, its program and its link at once.
	if st, err := status(p.stateDir); err == nil {
		t.Logf("before the kill: epoch %d, standby epoch %d, commit latency p50 %s p99 %s, last frozen %s, checkpoint %s",
			st.Epoch, st.StandbyEpoch, st.CommitLatencyP50, st.CommitLatencyP99, st.LastFrozen, st.LastCheckpointTime)
	}
	before, _ := w.snapshot()
	killedAt := time.Now()
	p.kill9()
	killService(t, name)
	exec.Command("ip", "-n", e.primary.name, "link", "set", "eth0", "down").Run()
	defer exec.Command("ip", "-n", e.primary.name, "link", "set", "eth0", "up").Run()
	// The client keeps its connection: wait for writes to go on after the failover.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		acked, err := w.snapshot()
		if err != nil || len(acked) >= len(before)+10 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	acked, final, err := w.finish(t, e, o.port)
	w.close()
	res := roundResult{acked: len(acked), err: err, violations: outputViolations(acked, final),
		nudged: strings.Contains(sb.logs.String(), nudgeLogLine)}
	var gaps []time.Duration
	for i := 1; i < len(before); i++ {
		gaps = append(gaps, before[i].at.Sub(before[i-1].at))
	}
	res.latency, _ = supervisorPercentiles(gaps)
	if err == nil {
		last := killedAt
		if len(before) > 0 {
			last = before[len(before)-1].at
		}
		for _, a := range acked {
			if a.at.After(killedAt) {
				res.pause = a.at.Sub(last)
				break
			}
		}
		if len(acked) <= len(before) {
			res.err = fmt.Errorf("no write was answered after the kill")
		}
	}
	if t.Failed() || res.err != nil {
		t.Logf("primary log:\n%s", tail(p.log(), 30))
		t.Logf("standby log:\n%s", tail(sb.logs.String(), 30))
	}
	return res
}

func waitAcked(t *testing.T, w *writer, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for len(mustSnapshot(w)) < n {
		if _, err := w.snapshot(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d writes answered", len(mustSnapshot(w)), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func mustSnapshot(w *writer) []ackedWrite {
	a, _ := w.snapshot()
	return a
}

// The Output Rule, end to end: a client on its own host writes to redis on one TCP
// connection while everything on the primary host is killed at a random moment, 6
// times (20 under `make soak`). After each failover, on the same connection, every
// write whose reply the client saw is there, none is applied twice, and the
// connection still works.
func TestOutputCommitFailover(t *testing.T) {
	e := newOutputEnv(t)
	rounds := 6
	switch {
	case os.Getenv("FTRUN_SOAK") != "":
		rounds = 20
	case testing.Short():
		rounds = 3
	}
	var pauses []time.Duration
	for i := 1; i <= rounds; i++ {
		killAt := 300*time.Millisecond + time.Duration(rand.Int64N(int64(1500*time.Millisecond)))
		res := e.round(t, fmt.Sprintf("it-oc%d", i), roundOpts{svc: redisService, port: 6379, commit: "standby", interval: "100ms", killAt: killAt,
			replyTimeout: 15 * time.Second})
		if res.err != nil {
			t.Fatalf("round %d (kill after %s): %v", i, killAt.Round(time.Millisecond), res.err)
		}
		if len(res.violations) > 0 {
			t.Fatalf("round %d (kill after %s): %d acknowledged writes, violations:\n%s", i, killAt.Round(time.Millisecond), res.acked,
				strings.Join(res.violations, "\n"))
		}
		if !res.nudged {
			t.Errorf("round %d: the standby did not ask the client to resend after restoring its connection", i)
		}
		pauses = append(pauses, res.pause)
		t.Logf("round %d: kill after %s, %d writes acknowledged (median %s each), none lost or doubled; client paused %s", i,
			killAt.Round(time.Millisecond), res.acked, res.latency.Round(time.Millisecond), res.pause.Round(time.Millisecond))
	}
	p50, p99 := supervisorPercentiles(pauses)
	t.Logf("client-seen failover pause over %d rounds: median %s, max %s", rounds, p50.Round(time.Millisecond), p99.Round(time.Millisecond))
	// How long the client paused is a figure for the bench (ftrun bench: failover),
	// not a pass mark: on a shared 2-core machine it swings with the load. What must
	// hold is checked above: nothing lost or doubled, the connection kept, the client
	// asked to resend.
}

// The same test with the gate off must be able to fail: writes acknowledged after the
// standby's newest epoch are lost in the failover, and the checker says so.
func TestOutputCheckerCatchesUngatedLoss(t *testing.T) {
	e := newOutputEnv(t)
	res := e.round(t, "it-oc-off", roundOpts{svc: redisService, port: 6379, commit: "off", interval: "1h", checkpointFirst: true,
		replyTimeout: 2 * time.Second})
	if len(res.violations) == 0 {
		t.Fatalf("without the gate, %d acknowledged writes survived a failover from an older epoch: the checker cannot fail", res.acked)
	}
	t.Logf("without the gate the checker finds: err=%v violations=%d (first: %s)", res.err, len(res.violations), first(res.violations))
}

func first(xs []string) string {
	if len(xs) == 0 {
		return ""
	}
	return xs[0]
}

func supervisorPercentiles(ds []time.Duration) (p50, max time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), ds...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2], s[len(s)-1]
}

// A second real server through the same failover: memcached's counter, incremented on
// one connection, goes on from exactly where the client saw it.
func TestOutputCommitFailoverMemcached(t *testing.T) {
	requiresRoot(t, "memcached")
	e := newOutputEnv(t)
	res := e.round(t, "it-oc-memcached", roundOpts{svc: memcachedService, port: 11211, commit: "standby", interval: "100ms",
		killAt: time.Second, replyTimeout: 15 * time.Second})
	if res.err != nil {
		t.Fatal(res.err)
	}
	if len(res.violations) > 0 {
		t.Fatalf("%d acknowledged increments, violations:\n%s", res.acked, strings.Join(res.violations, "\n"))
	}
	t.Logf("memcached: %d increments acknowledged, none lost or doubled; client paused %s", res.acked, res.pause.Round(time.Millisecond))
}

// --commit local, no standby: output leaves once the epoch that explains it is on local
// disk, so when the program crashes and is restored here, every write a client saw
// acknowledged is still there; and since the sockets' closing never got past the gate,
// the client goes on on the same connection, after a pause.
func TestCommitLocalKeepsAcknowledgedWrites(t *testing.T) {
	e := newOutputEnv(t)
	name := "it-commit-local"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	args := append([]string{"--name", name, "--interval", "100ms", "--discard", "--net", "--addr", e.svc + "/24", "--commit", "local",
		"--metrics", "127.0.0.1:0", "--"}, redisService.argv(6379, t.TempDir())...)
	p := startFtrunIn(t, e.primary.nsPath(), state, nil, args...)
	st := p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.DurableEpoch > 0 })
	if st.Commit != "local" || st.Addr != e.svc+"/24" || st.NetNS == "" {
		t.Fatalf("status does not show the placement: commit %q addr %q netns %q", st.Commit, st.Addr, st.NetNS)
	}
	w := startWriter(t, e, redisService, 6379, 10*time.Second)
	time.Sleep(300*time.Millisecond + time.Duration(rand.Int64N(int64(700*time.Millisecond))))
	held := p.waitFor("held output shown", 5*time.Second, func(s supervisor.Status) bool { return s.Held != nil }).Held
	syscall.Kill(p.waitFor("pid", time.Second, func(s supervisor.Status) bool { return s.Pid > 0 }).Pid, syscall.SIGKILL)
	crash := time.Now()
	before := len(mustSnapshot(w))
	p.waitFor("restored", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	// The client's next writes are answered on its old connection.
	deadline := time.Now().Add(15 * time.Second)
	for len(mustSnapshot(w)) < before+3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	acked, final, err := w.finish(t, e, 6379)
	if err != nil {
		t.Fatalf("the client's connection did not survive the local restore: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%d acknowledged writes, violations:\n%s", len(acked), strings.Join(v, "\n"))
	}
	var pause time.Duration
	for i := 1; i < len(acked); i++ {
		if acked[i-1].at.Before(crash) && !acked[i].at.Before(crash) {
			pause = acked[i].at.Sub(acked[i-1].at)
		}
	}
	t.Logf("%d writes acknowledged before the crash, %d in all on the same connection; client paused %s; gate held %d packets (%d bytes) at one look",
		before, len(acked), pause.Round(time.Millisecond), held.HeldPackets, held.HeldBytes)
	// The pause is a figure (logged above, measured by the bench), not a pass mark: it
	// swings with the load on a shared machine. The restore must have asked the client
	// to resend rather than leave it to its backed-off timer.
	if !strings.Contains(p.log(), nudgeLogLine) {
		t.Errorf("the local restore did not ask the client to resend (no %q in ftrun's log)", nudgeLogLine)
	}
}

// ftrun dies while its program runs behind the gate: what it held dies with it (the
// kernel drops a queue's packets with its socket), the program keeps running, and a
// restarted ftrun adopts the program in its namespace and gates it again. The client's
// connection survives with a pause, and no acknowledged write is lost or doubled.
func TestGatedProgramAdoptedAfterFtrunDies(t *testing.T) {
	e := newOutputEnv(t)
	name := "it-gate-adopt"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	args := append([]string{"--name", name, "--interval", "100ms", "--net", "--addr", e.svc + "/24", "--commit", "local", "--"},
		redisService.argv(6379, t.TempDir())...)
	p := startFtrunIn(t, e.primary.nsPath(), state, nil, append([]string{"--discard"}, args...)...)
	st := p.waitFor("first durable checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.DurableEpoch > 0 })
	w := startWriter(t, e, redisService, 6379, 15*time.Second)
	waitAcked(t, w, 3)
	p.kill9()
	time.Sleep(300 * time.Millisecond)
	p2 := startFtrunIn(t, e.primary.nsPath(), state, nil, args...)
	st2 := p2.waitFor("adopted", 20*time.Second, func(s supervisor.Status) bool { return s.Adoptions == 1 && s.Commit == "local" })
	if st2.Pid != st.Pid {
		t.Fatalf("restarted ftrun runs pid %d, the program was %d", st2.Pid, st.Pid)
	}
	n := len(mustSnapshot(w))
	waitAcked(t, w, n+3)
	acked, final, err := w.finish(t, e, 6379)
	w.close()
	if err != nil {
		t.Fatal(err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("violations:\n%s", strings.Join(v, "\n"))
	}
	t.Logf("%d writes acknowledged on one connection across ftrun's death and adoption", len(acked))
}

// nudgeLogLine is what ftrun logs once it has asked the peers of restored
// connections to resend (ICMP soft errors and the program's unacknowledged output).
const nudgeLogLine = `msg="asked the peers of restored connections to resend now"`

// --epoch-on-output: with an --interval far longer than the test, the program's
// output alone starts the epochs that let it out, one in flight at a time. Every
// write is answered only once the epoch that explains it is durable (--commit local),
// so after a kill -9 and the restore none that was acknowledged is lost.
func TestEpochOnOutputLetsRepliesOutWithoutTheInterval(t *testing.T) {
	e := newOutputEnv(t)
	name := "it-epoch-on-output"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	args := append([]string{"--name", name, "--interval", "1h", "--epoch-on-output", "--discard", "--net", "--addr", e.svc + "/24",
		"--commit", "local", "--"}, redisService.argv(6379, t.TempDir())...)
	p := startFtrunIn(t, e.primary.nsPath(), state, nil, args...)
	w := startWriter(t, e, redisService, 6379, 15*time.Second)
	waitAcked(t, w, 20)
	st := p.waitFor("epochs", time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	syscall.Kill(st.Pid, syscall.SIGKILL)
	p.waitFor("restored", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	n := len(mustSnapshot(w))
	waitAcked(t, w, n+10)
	acked, final, err := w.finish(t, e, 6379)
	if err != nil {
		t.Fatalf("the client's connection did not survive the local restore: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%d acknowledged writes, violations:\n%s", len(acked), strings.Join(v, "\n"))
	}
	end := p.waitFor("status", time.Second, func(supervisor.Status) bool { return true })
	t.Logf("%d writes acknowledged with --interval 1h over %d epochs, none lost or doubled across a kill -9", len(acked), end.Epoch)
}

// With --epoch-on-output and no interval to fall back on, checkpoints that fail (the
// state dir read-only) hold the client's replies only while they fail: once the disk
// is writable again, the next output starts an epoch within about a second, and
// every write the client saw acknowledged is there.
func TestEpochOnOutputResumesAfterFailedCheckpoints(t *testing.T) {
	e := newOutputEnv(t)
	name := "it-epoch-on-output-ro"
	t.Cleanup(func() { killService(t, name) })
	state := tmpfsDir(t, name)
	args := append([]string{"--name", name, "--interval", "1h", "--epoch-on-output", "--discard", "--net", "--addr", e.svc + "/24",
		"--commit", "local", "--"}, redisService.argv(6379, t.TempDir())...)
	p := startFtrunIn(t, e.primary.nsPath(), state, nil, args...)
	w := startWriter(t, e, redisService, 6379, 15*time.Second)
	waitAcked(t, w, 20)
	r := &soakRound{t: t, state: state}
	r.remount("ro")
	p.waitFor("checkpoints failing", 20*time.Second, func(s supervisor.Status) bool { return !s.FailingSince.IsZero() })
	time.Sleep(1500 * time.Millisecond)
	r.remount("rw")
	n := len(mustSnapshot(w))
	waitAcked(t, w, n+10)
	acked, final, err := w.finish(t, e, 6379)
	if err != nil {
		t.Fatalf("the client's connection did not survive the failing checkpoints: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%d acknowledged writes, violations:\n%s", len(acked), strings.Join(v, "\n"))
	}
	end, _ := status(state)
	t.Logf("%d writes acknowledged with --interval 1h, checkpoints failing for a while (%d failures), none lost", len(acked), end.CheckpointFailures)
}

// A set dumped without --net holds its connections closed, so a run that adds --net
// restores it with them closed, and keeps the data: asking CRIU to reopen them would
// fail the restore, and the ladder would end in a fresh start.
func TestSetDumpedWithoutNetRestoresUnderNet(t *testing.T) {
	e := newOutputEnv(t)
	name := "it-addnet"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	argv := redisService.argv(6379, t.TempDir())
	p := startFtrunIn(t, e.primary.nsPath(), state, nil, append([]string{"--name", name, "--interval", "1h", "--"}, argv...)...)
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	var conn net.Conn
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var err error
		if conn, err = dialIn(e.client, net.JoinHostPort(e.primary.addr, "6379"), time.Second); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("client cannot reach redis on the primary host: %v", err)
		}
	}
	c := &textConn{conn: conn, rd: bufio.NewReader(conn), timeout: 5 * time.Second}
	defer c.conn.Close()
	const n = 50
	for i := range n {
		if _, err := redisService.write(c, i); err != nil {
			t.Fatal(err)
		}
	}
	p.checkpoint() // with the client's connection open
	p.kill9()
	killService(t, name)

	p = startFtrunIn(t, e.primary.nsPath(), state, nil, append([]string{"--name", name, "--interval", "200ms",
		"--net", "--addr", e.svc + "/24", "--commit", "local", "--"}, argv...)...)
	st := p.waitFor("restored", 30*time.Second, func(s supervisor.Status) bool {
		return s.State == supervisor.StateRunning && (s.Restores > 0 || s.FreshStarts > 0)
	})
	if st.Restores != 1 {
		t.Fatalf("the set dumped without --net was not restored under --net (restores %d, fresh starts %d):\n%s", st.Restores, st.FreshStarts, tail(p.log(), 30))
	}
	c2 := dialService(t, e, 6379, 5*time.Second)
	defer c2.conn.Close()
	if got, err := redisService.count(c2); err != nil || got != n {
		t.Fatalf("after the restore under --net the list has %d entries (%v), want %d", got, err, n)
	}
}

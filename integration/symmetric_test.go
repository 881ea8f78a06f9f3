package integration

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// symPair is a symmetric pair: both hosts run the very same `ftrun run` command line
// (symArgs); only the environment file differs (FTRUN_STANDBY, the peer, and
// FTRUN_LISTEN, this host's address), as the one unit in contrib/systemd has it.
type symPair struct {
	*pairEnv
	args []string
}

func newSymPair(t *testing.T, name string) *symPair {
	e := newPairEnv(t, name)
	args := append([]string{"--name", name, "--interval", "100ms", "--keys", e.keys, "--net", "--addr", e.svc + "/24", "--"},
		redisService.argv(e.port, t.TempDir())...)
	return &symPair{pairEnv: e, args: args}
}

// peerOf is the other node of the pair.
func (p *symPair) peerOf(n node) node {
	if n.h.name == p.a.h.name {
		return p.b
	}
	return p.a
}

// start runs the pair's one command on n.
func (p *symPair) start(t *testing.T, n node) *ftrunProc {
	env := append(n.env(), "FTRUN_STANDBY="+p.peerOf(n).h.addr+":7946", "FTRUN_LISTEN="+n.h.addr+":7946")
	return startFtrunIn(t, n.h.nsPath(), n.state, env, p.args...)
}

// live waits until exactly one node runs the program, protected by the other, which
// serves as its standby with nothing in its cgroup; it returns the live node first.
func (p *symPair) live(t *testing.T, what string) (live, standby node) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		for _, n := range []node{p.a, p.b} {
			other := p.peerOf(n)
			st, err := status(n.state)
			ost, oerr := status(other.state)
			// The standby holds an epoch of this copy, not only the link: a take-over
			// needs one, and a test that cuts the link before it waits in vain.
			if err == nil && oerr == nil && protectedBy(other.h.addr)(st) && st.Role == supervisor.RolePrimary &&
				ost.Role == supervisor.RoleStandby && strings.Contains(ost.Protection, "holding epoch") && ost.StandbyEpoch > 0 {
				if ps := other.procs(t, p.name); len(ps) != 0 {
					t.Fatalf("%s: %s runs the program and %s, its standby, has %s in its cgroup", what, n.h.name, other.h.name, describe(ps))
				}
				return n, other
			}
		}
		if time.Now().After(deadline) {
			sa, ea := status(p.a.state)
			sb, eb := status(p.b.state)
			t.Fatalf("%s: no node runs the program protected by the other within 60s; A %+v (%v); B %+v (%v)", what, sa, ea, sb, eb)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// failedOverOnce starts both nodes at once and a client writing on one connection,
// kills the live host (the other takes over, and the client's writes go on there)
// and brings it back with the same command. It returns each node's ftrun and the
// writer.
func (p *symPair) failedOverOnce(t *testing.T) (procs map[string]*ftrunProc, w *writer) {
	t.Helper()
	procs = map[string]*ftrunProc{}
	procs[p.a.h.name] = p.start(t, p.a)
	procs[p.b.h.name] = p.start(t, p.b)
	first, _ := p.live(t, "both started at once")
	w = startWriter(t, p.outputEnv, redisService, p.port, 20*time.Second)
	waitWrites(t, w, 20, 20*time.Second, "first writes")
	procs[first.h.name].kill9()
	first.die(t)
	n := checkPrefix(t, w, 1)
	waitWrites(t, w, n+10, 30*time.Second, "writes after the take-over")
	first.comeBack()
	procs[first.h.name] = p.start(t, first)
	return procs, w
}

// bootLine is the line in which ftrun's log states its role decision.
func bootLine(lg string) string {
	for _, l := range strings.Split(lg, "\n") {
		if strings.Contains(l, "role=") && strings.Contains(l, "boot: ") {
			return l
		}
	}
	return "(no decision logged)"
}

// copies counts the hosts whose cgroup of the service holds processes.
func (p *symPair) copies(t *testing.T) int {
	n := 0
	for _, x := range []node{p.a, p.b} {
		if len(x.procs(t, p.name)) > 0 {
			n++
		}
	}
	return n
}

// One command line for both hosts: started at the same instant with identical flags,
// exactly one runs the program and the other protects it. Then, cycle after cycle,
// the live host is killed, the other takes over and keeps every acknowledged write on
// the client's one connection, and the dead host comes back with the same command
// and becomes the standby, protecting the live copy again (2 cycles; FTRUN_SOAK=1
// runs 10).
func TestSymmetricPair(t *testing.T) {
	cycles := 2
	if os.Getenv("FTRUN_SOAK") != "" {
		cycles = 10
	}
	p := newSymPair(t, "f2-sym")
	procs := map[string]*ftrunProc{}
	procs[p.a.h.name] = p.start(t, p.a)
	procs[p.b.h.name] = p.start(t, p.b)
	live, other := p.live(t, "both started at once")
	t.Logf("both started at once: %s runs the program, %s is its standby\n%s\n%s", live.h.name, other.h.name,
		bootLine(procs[live.h.name].log()), bootLine(procs[other.h.name].log()))
	if lg := procs[other.h.name].log(); strings.Contains(lg, `msg="program started`) || strings.Contains(lg, `msg="program restored`) {
		t.Fatalf("the standby ran the program:\n%s", tail(lg, 30))
	}
	w := startWriter(t, p.outputEnv, redisService, p.port, 20*time.Second)
	defer w.close()
	waitWrites(t, w, 20, 20*time.Second, "first writes")

	for c := 1; c <= cycles; c++ {
		killed := time.Now()
		procs[live.h.name].kill9()
		live.die(t)
		n := checkPrefix(t, w, c)
		waitWrites(t, w, n+10, 30*time.Second, fmt.Sprintf("cycle %d: writes after the take-over", c))
		tookOver := time.Since(killed)
		checkPrefix(t, w, c)

		dead := live
		dead.comeBack()
		back := time.Now()
		procs[dead.h.name] = p.start(t, dead)
		now, standby := p.live(t, fmt.Sprintf("cycle %d: the dead host came back", c))
		if now.h.name != other.h.name {
			t.Fatalf("cycle %d: the returned host %s took the program back from the live copy on %s", c, standby.h.name, other.h.name)
		}
		if lg := procs[dead.h.name].log(); strings.Contains(lg, `msg="program started`) || strings.Contains(lg, `msg="program restored`) {
			t.Fatalf("cycle %d: the returned host ran the program beside the live copy:\n%s", c, tail(lg, 30))
		}
		t.Logf("cycle %d: %s killed, %s live (10 more writes %s after the kill); %s protecting again %s after its return",
			c, dead.h.name, now.h.name, tookOver.Round(time.Millisecond), dead.h.name, time.Since(back).Round(time.Millisecond))
		n = checkPrefix(t, w, c)
		waitWrites(t, w, n+10, 20*time.Second, fmt.Sprintf("cycle %d: writes while protected again", c))
		live, other = now, dead
	}
	acked, final, err := w.finish(t, p.outputEnv, p.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	t.Logf("%d cycles, %d writes acknowledged, 0 lost, 0 doubled; one copy at every step", cycles, len(acked))
}

// Both hosts of a symmetric pair die and come back at once: the one holding the newer
// committed epoch runs the program (the one that ran it, here: the standby's newest
// epoch is never newer than what the live copy committed), and no write the client
// saw acknowledged is missing for a new client.
func TestSymmetricBothRestart(t *testing.T) {
	p := newSymPair(t, "f2-both")
	procs := map[string]*ftrunProc{}
	procs[p.a.h.name] = p.start(t, p.a)
	procs[p.b.h.name] = p.start(t, p.b)
	live, _ := p.live(t, "both started at once")
	w := startWriter(t, p.outputEnv, redisService, p.port, 20*time.Second)
	waitWrites(t, w, 30, 20*time.Second, "first writes")
	acked := checkPrefix(t, w, 1)
	w.close()
	liveEpoch := waitStatus(t, live.state, "an epoch after the writes", 20*time.Second, func(s supervisor.Status) bool { return s.StandbyEpoch > 0 }).Epoch
	for _, n := range []node{p.a, p.b} {
		procs[n.h.name].kill9()
		n.die(t)
	}
	for _, n := range []node{p.a, p.b} {
		n.comeBack()
	}
	for _, n := range []node{p.a, p.b} {
		procs[n.h.name] = p.start(t, n)
	}
	again, _ := p.live(t, "both restarted at once")
	lg := procs[again.h.name].log()
	if !strings.Contains(lg, "the peer is deciding too") && !strings.Contains(procs[p.peerOf(again).h.name].log(), "the peer is deciding too") {
		t.Logf("the hosts did not meet while deciding (one decided alone first)")
	}
	t.Logf("epoch %d on %s before both died; %s runs the program after both restarted\n%s\n%s", liveEpoch, live.h.name, again.h.name,
		bootLine(procs[p.a.h.name].log()), bootLine(procs[p.b.h.name].log()))
	c := dialService(t, p.outputEnv, p.port, 10*time.Second)
	defer c.conn.Close()
	got, err := redisService.count(c)
	if err != nil || got < acked {
		t.Fatalf("after both restarted a new client counts %d writes (%v), %d were acknowledged", got, err, acked)
	}
	if n := p.copies(t); n != 1 {
		t.Fatalf("%d hosts run the program", n)
	}
}

// The ftrun that runs the live copy on the former standby host is SIGKILLed (its
// program goes on) and restarted with the same command: it adopts its program as
// `ftrun run` adopts its own (the peer's take-over timeout has not run out), or, if
// the peer took over meanwhile, kills the orphan and serves as standby (the last
// round waits for that on purpose). Either way:
// one copy, the client's connection survives, no acknowledged write is lost.
func TestSymmetricLiveFtrunRestart(t *testing.T) {
	p := newSymPair(t, "f2-adopt")
	procs, w := p.failedOverOnce(t)
	defer w.close()
	live, _ := p.live(t, "the dead host came back")
	// live is the former standby: its ftrun runs the live copy it took over.
	st, _ := status(live.state)
	pid := st.Pid
	rounds := 3
	if os.Getenv("FTRUN_SOAK") != "" {
		rounds = 10
	}
	adopted, n := 0, 0
	for r := 1; r <= rounds; r++ {
		n = checkPrefix(t, w, 2+r)
		procs[live.h.name].kill9()
		procs[live.h.name] = p.start(t, live)
		now, _ := p.live(t, fmt.Sprintf("round %d: the live copy's ftrun restarted", r))
		if p.copies(t) != 1 {
			t.Fatalf("round %d: %d copies", r, p.copies(t))
		}
		st, _ := status(now.state)
		switch {
		case now.h.name == live.h.name && st.Pid == pid && st.Adoptions == 1:
			adopted++
			if !strings.Contains(procs[live.h.name].log(), "adopting it") {
				t.Errorf("round %d: the restarted ftrun's log does not say it adopted the program", r)
			}
		case now.h.name == live.h.name:
			t.Fatalf("round %d: the restarted ftrun runs pid %d (adoptions %d), not its program %d", r, st.Pid, st.Adoptions, pid)
		default:
			t.Logf("round %d: the peer took over before the restarted ftrun was back; the orphan was killed", r)
			live, pid = now, st.Pid
		}
		waitWrites(t, w, n+10, 30*time.Second, fmt.Sprintf("round %d: writes after the restart", r))
		checkPrefix(t, w, 2+r)
	}
	// Restarted only after the peer took over: the orphan is killed, the restarted
	// ftrun serves as standby of the peer's copy.
	n = checkPrefix(t, w, 99)
	procs[live.h.name].kill9()
	peer := p.peerOf(live)
	waitStatus(t, peer.state, "the peer takes over from the silent live copy", 30*time.Second, func(s supervisor.Status) bool {
		return s.Role == supervisor.RolePrimary && s.Pid > 0
	})
	if len(live.procs(t, p.name)) == 0 {
		t.Fatal("the orphan is gone before its ftrun came back: the test needs it running")
	}
	procs[live.h.name] = p.start(t, live)
	now, back := p.live(t, "restarted after the peer took over")
	if now.h.name != peer.h.name {
		t.Fatalf("%s runs the program, want the peer %s that took over", now.h.name, peer.h.name)
	}
	if !strings.Contains(procs[back.h.name].log(), "killing the program an earlier ftrun left running here") {
		t.Errorf("the restarted ftrun's log does not say it killed the orphan:\n%s", tail(procs[back.h.name].log(), 20))
	}
	waitWrites(t, w, n+10, 30*time.Second, "writes after the late restart")
	acked, final, err := w.finish(t, p.outputEnv, p.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	t.Logf("%d of %d restarts adopted the program; %d writes acknowledged, 0 lost, 0 doubled", adopted, rounds, len(acked))
}

// A partition healed after the second take-over (no arbiter): the live copy on the
// former standby is cut off (its host's link down) while its program runs, the old
// primary's host, serving as its standby, takes over and the client's writes go on
// there. Once the link is back both copies are marked live and each refuses the
// other's link; the one that took over later (from a newer epoch of the other's
// stream: the one the client used) stays, the other fences itself (exit 156), and
// every acknowledged write is there on the same connection. Restarted with the same
// command, the fenced host becomes the standby.
func TestSymmetricHealedPartitionLaterTakeoverStays(t *testing.T) {
	p := newSymPair(t, "f2-heal2")
	procs, w := p.failedOverOnce(t)
	defer w.close()
	cut, stays := p.live(t, "the dead host came back")

	run(t, "ip", "-n", cut.h.name, "link", "set", "eth0", "down")
	n := checkPrefix(t, w, 2)
	before := n
	waitWrites(t, w, n+15, 30*time.Second, "writes on the second take-over's copy during the partition")
	if len(cut.procs(t, p.name)) == 0 {
		t.Fatal("the cut-off copy is gone: the test needs two live copies during the partition")
	}
	during := checkPrefix(t, w, 2)
	run(t, "ip", "-n", cut.h.name, "link", "set", "eth0", "up")
	code, err := procs[cut.h.name].wait(30 * time.Second)
	if err != nil {
		t.Fatalf("the cut-off copy did not fence itself after the partition healed:\n%s", tail(procs[cut.h.name].log(), 20))
	}
	if code != supervisor.ExitSuperseded {
		t.Fatalf("the cut-off copy exited %d, want %d", code, supervisor.ExitSuperseded)
	}
	if _, err := procs[stays.h.name].wait(time.Millisecond); err == nil {
		t.Fatalf("the copy the client used fenced itself too:\n%s", tail(procs[stays.h.name].log(), 20))
	}
	if ps := cut.procs(t, p.name); len(ps) != 0 {
		t.Fatalf("processes %s left in the fenced copy's cgroup", describe(ps))
	}
	waitWrites(t, w, during+10, 30*time.Second, "writes after the heal")
	procs[cut.h.name] = p.start(t, cut)
	if live, _ := p.live(t, "the fenced host restarted"); live.h.name != stays.h.name {
		t.Fatalf("%s runs the program after the restart, want %s", live.h.name, stays.h.name)
	}
	n = checkPrefix(t, w, 3)
	waitWrites(t, w, n+10, 20*time.Second, "writes while protected again")
	acked, final, err := w.finish(t, p.outputEnv, p.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	t.Logf("%d writes acknowledged (%d during the partition), 0 lost, 0 doubled; the later take-over stayed", len(acked), during-before)
}

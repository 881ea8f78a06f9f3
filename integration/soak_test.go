package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/supervisor"
)

// The fault soak: redis under `ftrun run --net --standby --commit standby`, one client
// writing on one connection, and faults of every kind at random moments, each followed
// by the acknowledged-writes check on that connection. Every round builds the pair
// afresh (a fault that ends in a failover leaves the service on the standby host,
// which runs it without a further standby), so each fault meets a protected service.
//
// `make test` runs every kind once, in random order; `make soak` runs
// FTRUN_SOAK_FAULTS (default 60) faults of random kinds.

// soakRound is one protected service and its client.
type soakRound struct {
	t       *testing.T
	e       outputEnv
	name    string
	state   string // a tmpfs of its own, so it can be filled and made read-only
	sbState string
	sb      *standbyProc
	p       *ftrunProc
	args    []string
	sbArgs  []string
	w       *writer
	note    string // what the fault did, when it can miss (a CRIU run killed after it ended)
}

// soakFault injects one kind of fault and undoes it. failover says the service ends
// on the standby host.
type soakFault struct {
	kind     string
	failover bool
	arbiter  bool // the round runs with an etcd arbiter
	inject   func(r *soakRound)
}

var soakFaults = []soakFault{
	{kind: "kill-9 program", inject: func(r *soakRound) {
		r.killProgram()
		r.waitRestores(1)
	}},
	{kind: "kill-9 ftrun (restarted)", inject: func(r *soakRound) {
		r.p.kill9()
		time.Sleep(200 * time.Millisecond)
		r.p = startFtrunIn(r.t, r.e.primary.nsPath(), r.state, nil, r.args...)
		r.p.waitFor("adopted", 20*time.Second, func(s supervisor.Status) bool { return s.Adoptions == 1 })
	}},
	{kind: "kill-9 CRIU mid-dump", inject: func(r *soakRound) {
		r.killCriu()
	}},
	{kind: "kill-9 CRIU mid-restore", inject: func(r *soakRound) {
		steps := strings.Count(r.p.log(), "step=restore")
		r.killProgram()
		for deadline := time.Now().Add(10 * time.Second); strings.Count(r.p.log(), "step=restore") == steps; {
			if time.Now().After(deadline) {
				r.t.Fatal("no restore began")
			}
			time.Sleep(time.Millisecond)
		}
		r.killCriu()
		r.waitRestores(1)
		if strings.Contains(r.p.log(), "CRIU died, not the checkpoint") {
			r.note = "the killed restore was retried on the same epoch"
		}
	}},
	{kind: "kill-9 standby mid-commit, then primary host dies", failover: true, inject: func(r *soakRound) {
		r.sb.kill()
		time.Sleep(time.Duration(rand.IntN(500)) * time.Millisecond)
		r.sb = startStandbyArgs(r.t, r.e.standby, r.sbState, r.e.keys, r.sbArgs...)
		now, _ := status(r.state)
		r.p.waitFor("protected again", 30*time.Second, func(s supervisor.Status) bool {
			return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch > now.Epoch
		})
		r.hostDies()
	}},
	{kind: "disk full", inject: func(r *soakRound) {
		// A dump that had finished writing when the disk filled still commits, and the
		// commit frees its parent's space, where the next dump fits: the fill takes
		// whatever is freed until the checkpoints fail.
		var fills []string
		r.p.waitFor("checkpoints failing", 20*time.Second, func(s supervisor.Status) bool {
			if !s.FailingSince.IsZero() {
				return true
			}
			fills = append(fills, r.fill(len(fills)))
			return false
		})
		time.Sleep(time.Duration(500+rand.IntN(1000)) * time.Millisecond)
		for _, f := range fills {
			os.Remove(f)
		}
	}},
	{kind: "state dir read-only, program killed", inject: func(r *soakRound) {
		r.remount("ro")
		r.killProgram()
		r.waitRestores(1)
		r.remount("rw")
	}},
	{kind: "link cut", inject: func(r *soakRound) {
		r.e.primary.ip(r.t, "link", "set", "eth0", "down")
		time.Sleep(time.Duration(200+rand.IntN(600)) * time.Millisecond)
		r.e.primary.ip(r.t, "link", "set", "eth0", "up")
	}},
	{kind: "primary host dies", failover: true, inject: func(r *soakRound) {
		r.hostDies()
	}},
	// Without an arbiter a partition longer than the take-over timeout gives two live
	// copies until it heals; settling that is not part of this soak, so partitions run
	// with the etcd arbiter, which keeps the standby from going live.
	{kind: "partition primary/standby and heal (etcd arbiter)", arbiter: true, inject: func(r *soakRound) {
		heal := partition(r.t, r.e.primary, r.e.standby)
		time.Sleep(time.Duration(2500+rand.IntN(1500)) * time.Millisecond) // > take-over timeout + lease TTL
		heal()
		now, _ := status(r.state)
		r.p.waitFor("protected after the heal", 30*time.Second, func(s supervisor.Status) bool {
			return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch > now.Epoch
		})
	}},
}

// soakResult is what one round found.
type soakResult struct {
	kind       string
	acked      int
	violations []string
	copies     int
	stuck      bool
	err        error
	diff       int // |the server's count - the writes the client saw acknowledged|
	note       string
}

func TestFaultSoak(t *testing.T) {
	requiresRoot(t, "redis-server", "iptables", "etcd", "etcdctl", "mount")
	e := newOutputEnv(t)
	var etcd string
	order := make([]soakFault, 0, len(soakFaults))
	if n, err := strconv.Atoi(os.Getenv("FTRUN_SOAK_FAULTS")); err == nil && n > 0 {
		for range n {
			order = append(order, soakFaults[rand.IntN(len(soakFaults))])
		}
	} else {
		order = append(order, soakFaults...)
		rand.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	var results []soakResult
	for i, f := range order {
		if f.arbiter && etcd == "" {
			etcd = startEtcdOn(t, e)
		}
		res := soakOne(t, e, fmt.Sprintf("rsk%d", i+1), f, etcd)
		results = append(results, res)
		t.Logf("fault %d/%d %q: %d writes acknowledged, %d copies, stuck %v, violations %d, err %v %s",
			i+1, len(order), f.kind, res.acked, res.copies, res.stuck, len(res.violations), res.err, res.note)
	}
	report := soakReport(results)
	fmt.Print(report)
	t.Log("\n" + report)
	for _, r := range results {
		switch {
		case r.err != nil:
			t.Errorf("%s: %v", r.kind, r.err)
		case len(r.violations) > 0:
			t.Errorf("%s: %s", r.kind, strings.Join(r.violations, "; "))
		case r.copies != 1:
			t.Errorf("%s: %d copies", r.kind, r.copies)
		case r.stuck:
			t.Errorf("%s: stuck past the deadline", r.kind)
		}
	}
}

// startEtcdOn runs the arbiter on the client host, which both the primary and the
// standby reach and a partition between the two leaves alone.
func startEtcdOn(t *testing.T, e outputEnv) string {
	return startEtcd(t, e.client)
}

// soakDeadline bounds how long the client may go without an answer after a fault:
// more than a take-over with the arbiter (lease TTL 2 s), a restore and a retry.
const soakDeadline = 45 * time.Second

func soakOne(t *testing.T, e outputEnv, name string, f soakFault, etcd string) (res soakResult) {
	res.kind = f.kind
	r := &soakRound{t: t, e: e, name: name, state: tmpfsDir(t, name), sbState: t.TempDir()}
	defer r.teardown()
	r.sbArgs = []string{"--takeover-timeout", "2s"}
	arbArgs := []string{}
	if f.arbiter {
		arbArgs = []string{"--arbiter", "etcd:" + etcd}
		r.sbArgs = append(r.sbArgs, arbArgs...)
	}
	r.sb = startStandbyArgs(t, e.standby, r.sbState, e.keys, r.sbArgs...)
	r.args = append(append([]string{"--name", name, "--interval", "100ms", "--standby", e.standby.addr + ":7946", "--keys", e.keys,
		"--net", "--addr", e.svc + "/24", "--commit", "standby", "--restore-timeout", "15s", "--dump-timeout", "10s"}, arbArgs...),
		append([]string{"--"}, redisService.argv(6379, t.TempDir())...)...)
	r.p = startFtrunIn(t, e.primary.nsPath(), r.state, nil, append([]string{"--discard"}, r.args...)...)
	r.p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch > 0
	})
	r.w = startWriter(t, e, redisService, 6379, soakDeadline)
	waitAcked(t, r.w, 10)
	time.Sleep(time.Duration(rand.IntN(1000)) * time.Millisecond)
	f.inject(r)
	// The client's writes go on, on the same connection, within the deadline, counted
	// from the end of the injection: a fault that waits for protection again before it
	// kills the host (the standby's) lets the client write meanwhile, and counting from
	// its start would take those writes for the take-over's and look for the live copy
	// while the standby is still taking over.
	before := len(mustSnapshot(r.w))
	faultAt := time.Now()
	for len(mustSnapshot(r.w)) < before+10 {
		if _, err := r.w.snapshot(); err != nil {
			break
		}
		if time.Since(faultAt) > soakDeadline {
			res.stuck = true
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	res.copies = liveCopies(t, name)
	acked, final, err := r.w.finish(t, e, 6379)
	r.w.close()
	res.acked, res.err, res.violations, res.note = len(acked), err, outputViolations(acked, final), r.note
	if final >= 0 {
		res.diff = max(final-len(acked), len(acked)-final)
	}
	if res.err != nil || len(res.violations) > 0 || res.stuck || res.copies != 1 {
		t.Logf("%s: primary log:\n%s", f.kind, tail(r.p.log(), 40))
		t.Logf("%s: standby log:\n%s", f.kind, tail(r.sb.logs.String(), 30))
	}
	return res
}

func (r *soakRound) teardown() {
	r.sb.kill()
	r.p.kill9()
	killService(r.t, r.name)
	r.e.dropServiceLinks(r.t)
	exec.Command("ip", "-n", r.e.primary.name, "link", "set", "eth0", "up").Run()
	_ = syscall.Unmount(r.state, syscall.MNT_DETACH)
	os.RemoveAll(filepath.Join("/run/ftrun", r.name))
}

func (r *soakRound) killProgram() {
	st := r.p.waitFor("running", 10*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		r.t.Fatal(err)
	}
}

// killCriu kills the next CRIU that ftrun runs at a random moment of its run.
func (r *soakRound) killCriu() {
	criu := criuChild(r.p.cmd.Process.Pid, 10*time.Second)
	if criu == 0 {
		r.t.Fatal("no CRIU run seen")
	}
	time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
	_ = syscall.Kill(criu, syscall.SIGKILL)
}

func (r *soakRound) waitRestores(n int) {
	r.p.waitFor("restored", soakDeadline, func(s supervisor.Status) bool {
		return s.Restores >= n && s.State == supervisor.StateRunning
	})
}

// hostDies kills everything on the primary host at once: ftrun, its program, its link.
func (r *soakRound) hostDies() {
	r.p.kill9()
	killService(r.t, r.name)
	r.e.primary.ip(r.t, "link", "set", "eth0", "down")
}

// fill takes all the free space of the state dir's filesystem into a file of its own
// (the i'th).
func (r *soakRound) fill(i int) string {
	path := filepath.Join(r.state, fmt.Sprintf("filler%d", i))
	f, err := os.Create(path)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	var fs unix.Statfs_t
	if err := unix.Statfs(r.state, &fs); err != nil {
		r.t.Fatal(err)
	}
	// The filesystem's own bookkeeping takes a little of what statfs calls free.
	for size := int64(fs.Bavail) * int64(fs.Bsize); size > 0; size -= 256 << 10 {
		err := unix.Fallocate(int(f.Fd()), 0, 0, size)
		if err == nil {
			return path
		}
		if err != unix.ENOSPC {
			r.t.Fatal(err)
		}
	}
	return path
}

// remount makes the state dir read-only or writable again; a checkpoint being written
// keeps it busy for a moment.
func (r *soakRound) remount(mode string) {
	for i := 0; ; i++ {
		out, err := exec.Command("mount", "-o", "remount,"+mode, r.state).CombinedOutput()
		if err == nil {
			return
		}
		if i == 500 {
			r.t.Fatalf("remount %s: %v: %s", mode, err, out)
		}
		time.Sleep(time.Duration(rand.IntN(10)) * time.Millisecond)
	}
}

// tmpfsDir is a small tmpfs of its own, unmounted when the test ends.
func tmpfsDir(t *testing.T, name string) string {
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256m", name, dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, syscall.MNT_DETACH) })
	return dir
}

// liveCopies counts the redis-servers running for the service, on either host.
func liveCopies(t *testing.T, name string) int {
	n := 0
	for _, pid := range cgroupProcs(t, name) {
		if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "redis-server" {
			n++
		}
	}
	return n
}

// soakReport is the table of faults by kind.
func soakReport(results []soakResult) string {
	type row struct{ n, acked, diff, lost, copiesBad, stuck, errs int }
	rows := map[string]*row{}
	var kinds []string
	for _, r := range results {
		if rows[r.kind] == nil {
			rows[r.kind] = &row{}
			kinds = append(kinds, r.kind)
		}
		x := rows[r.kind]
		x.n++
		x.acked += r.acked
		x.diff += r.diff
		if len(r.violations) > 0 {
			x.lost++
		}
		if r.copies != 1 {
			x.copiesBad++
		}
		if r.stuck {
			x.stuck++
		}
		if r.err != nil {
			x.errs++
		}
	}
	slices.Sort(kinds)
	var b strings.Builder
	fmt.Fprintf(&b, "fault soak: %d faults\n", len(results))
	fmt.Fprintf(&b, "| fault | injected | acknowledged writes | lost or doubled (count diff) | rounds with a reply out of order | rounds with copies != 1 | stuck past deadline | client errors |\n")
	fmt.Fprintf(&b, "| --- | --- | --- | --- | --- | --- | --- | --- |\n")
	var tot row
	for _, k := range kinds {
		x := rows[k]
		fmt.Fprintf(&b, "| %s | %d | %d | %d | %d | %d | %d | %d |\n", k, x.n, x.acked, x.diff, x.lost, x.copiesBad, x.stuck, x.errs)
		tot.n += x.n
		tot.acked += x.acked
		tot.diff += x.diff
		tot.lost += x.lost
		tot.copiesBad += x.copiesBad
		tot.stuck += x.stuck
		tot.errs += x.errs
	}
	fmt.Fprintf(&b, "| all | %d | %d | %d | %d | %d | %d | %d |\n", tot.n, tot.acked, tot.diff, tot.lost, tot.copiesBad, tot.stuck, tot.errs)
	return b.String()
}

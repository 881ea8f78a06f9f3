package demo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/transport/auth"
)

// HostSteps are the host-level failures, shown on network-namespace hosts on this
// machine: the host running the counter dies and the standby takes over; the dead host
// comes back (same command line) as the live copy's standby; the network between the
// two goes down while an etcd arbiter on a third host decides who counts.
var HostSteps = []string{"host-dies", "host-returns", "partition-arbiter"}

// A demo host is a network namespace on a bridge, with an address from 198.18.0.0/15
// and its own cgroup root: two hosts on one machine must never kill each other's
// programs.
type dhost struct {
	name, addr, cgroot, state string
}

func (h dhost) cmd(name string, args ...string) *exec.Cmd {
	c := exec.Command("nsenter", append([]string{"--net=/run/netns/" + h.name, "--", name}, args...)...)
	c.Env = append(os.Environ(), "FTRUN_CGROUP_ROOT="+h.cgroot)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return c
}

// hostsRun is the host-level part of a demo run.
type hostsRun struct {
	*run
	script, keys string
	a, b, e      dhost
	undo         []func()
	procs        []*exec.Cmd
}

func ip(args ...string) error {
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// net makes the bridge and the three hosts of network k, each network with names and
// addresses of its own.
func (h *hostsRun) net(k int) error {
	br := fmt.Sprintf("ftdemo%dbr", k)
	_ = ip("link", "del", br)
	if err := ip("link", "add", br, "type", "bridge"); err != nil {
		return err
	}
	h.undo = append(h.undo, func() { _ = ip("link", "del", br) })
	if err := ip("link", "set", br, "up"); err != nil {
		return err
	}
	for i, x := range []*dhost{&h.a, &h.b, &h.e} {
		*x = dhost{name: fmt.Sprintf("ftdemo%d%c", k, 'a'+i), addr: fmt.Sprintf("198.18.%d.%d", 250+k, i+1),
			cgroot: fmt.Sprintf("/ftrun-demo-%c", 'a'+i), state: filepath.Join(h.opt.WorkDir, fmt.Sprintf("host-%c", 'a'+i))}
		_ = ip("netns", "del", x.name)
		veth, peer := fmt.Sprintf("ftdemo%dv%d", k, i), fmt.Sprintf("ftdemo%dp%d", k, i)
		_ = ip("link", "del", peer)
		name := x.name
		h.undo = append(h.undo, func() { _ = ip("netns", "del", name) }, func() { _ = ip("link", "del", peer) })
		for _, s := range [][]string{
			{"netns", "add", x.name},
			{"link", "add", veth, "type", "veth", "peer", "name", peer},
			{"link", "set", peer, "master", br, "up"},
			{"link", "set", veth, "netns", x.name},
			{"-n", x.name, "link", "set", "lo", "up"},
			{"-n", x.name, "link", "set", veth, "name", "eth0"},
			{"-n", x.name, "addr", "add", x.addr + "/24", "dev", "eth0"},
			{"-n", x.name, "link", "set", "eth0", "up"},
		} {
			if err := ip(s...); err != nil {
				return err
			}
		}
	}
	return nil
}

func (h *hostsRun) close() {
	// Last started, first stopped: the ftruns before the etcd they may hold a key in.
	for i := len(h.procs) - 1; i >= 0; i-- {
		c := h.procs[i]
		if c.ProcessState != nil {
			continue
		}
		_ = c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}
	for _, x := range []dhost{h.a, h.b, h.e} {
		killCgroups(x.cgroot)
	}
	for i := len(h.undo) - 1; i >= 0; i-- {
		h.undo[i]()
	}
}

// killCgroups kills everything under a demo host's cgroup root and removes it.
func killCgroups(root string) {
	if root == "" {
		return
	}
	dir := filepath.Join("/sys/fs/cgroup/unified", root)
	if _, err := os.Stat(dir); err != nil {
		dir = filepath.Join("/sys/fs/cgroup", root)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		_ = os.WriteFile(filepath.Join(p, "cgroup.kill"), []byte("1"), 0)
		for i := 0; i < 200; i++ {
			if b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs")); strings.TrimSpace(string(b)) == "" {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		_ = os.Remove(p)
	}
	_ = os.Remove(dir)
}

// start runs ftrun on host x with its log in the work dir.
func (h *hostsRun) start(x dhost, log string, args ...string) (*exec.Cmd, error) {
	c := x.cmd(h.opt.Ftrun, args...)
	f, err := os.OpenFile(filepath.Join(h.opt.WorkDir, log), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	c.Stdout, c.Stderr = f, f
	if err := c.Start(); err != nil {
		return nil, err
	}
	h.procs = append(h.procs, c)
	return c, nil
}

func (h *hostsRun) counterArgs() []string {
	return append(h.syncArgs(), "--", "ruby", h.script, h.counter, strconv.FormatFloat(Tick.Seconds(), 'f', -1, 64))
}

// runA starts `ftrun run --standby B` on host A, with the same command line every time.
func (h *hostsRun) runA(extra ...string) (*exec.Cmd, error) {
	args := []string{"run", "--name", "demo-hosts", "--state-dir", h.a.state, "--interval", h.opt.Interval.String(),
		"--standby", h.b.addr + ":7946", "--listen", h.a.addr + ":7946", "--keys", h.keys}
	return h.start(h.a, "host-a.log", append(append(args, extra...), h.counterArgs()...)...)
}

// standbyB starts `ftrun standby --peer A` on host B.
func (h *hostsRun) standbyB(extra ...string) (*exec.Cmd, error) {
	args := []string{"standby", "--listen", h.b.addr + ":7946", "--state-dir", h.b.state, "--keys", h.keys,
		"--peer", h.a.addr + ":7946", "--interval", h.opt.Interval.String()}
	return h.start(h.b, "host-b.log", append(args, extra...)...)
}

func query(state string) (supervisor.Status, error) {
	resp, err := supervisor.Query(state, supervisor.Request{Op: "status"}, 2*time.Second)
	if err != nil {
		return supervisor.Status{}, err
	}
	if resp.Status == nil {
		return supervisor.Status{}, errors.New("no status")
	}
	return *resp.Status, nil
}

func waitFor(ctx context.Context, state string, timeout time.Duration, ok func(supervisor.Status) bool) error {
	deadline := time.Now().Add(timeout)
	var last supervisor.Status
	var lastErr error
	for time.Now().Before(deadline) && ctx.Err() == nil {
		st, err := query(state)
		if err == nil && ok(st) {
			return nil
		}
		last, lastErr = st, err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("timed out after %s (last: %s %s, %v)", timeout, last.Role, last.Protection, lastErr)
}

// counters counts the running copies of the counter.
func (h *hostsRun) counters() int {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.HasPrefix(string(data), "ruby\x00") && strings.Contains(string(data), h.script) {
			n++
		}
	}
	return n
}

// killHost is a host losing power: ftrun and everything it runs die at once, and its
// network goes.
func (h *hostsRun) killHost(x dhost, c *exec.Cmd) {
	_ = ip("-n", x.name, "link", "set", "eth0", "down")
	killCgroups(x.cgroot)
	_ = c.Process.Kill()
	_ = c.Wait()
}

// runHosts runs the host-level steps after the local ones.
func (r *run) runHosts(ctx context.Context, script string, perInterval int64) ([]Result, error) {
	h := &hostsRun{run: r, script: script, keys: filepath.Join(r.opt.WorkDir, "keys")}
	defer h.close()
	if err := auth.Keygen(h.keys, auth.KeygenOptions{Roles: []string{auth.RolePrimary, auth.RoleStandby}, Services: []string{auth.AnyService}}); err != nil {
		return nil, err
	}
	if err := h.net(0); err != nil {
		return nil, err
	}
	r.say("hosts: A %s runs `ftrun run --standby B`, B %s runs `ftrun standby --peer A` (logs host-a.log, host-b.log)", h.a.addr, h.b.addr)
	if _, err := h.standbyB(); err != nil {
		return nil, err
	}
	a, err := h.runA()
	if err != nil {
		return nil, err
	}
	if err := waitFor(ctx, h.a.state, 30*time.Second, func(s supervisor.Status) bool { return strings.HasPrefix(s.Protection, "protected by standby") }); err != nil {
		return nil, fmt.Errorf("A not protected by B: %w", err)
	}
	// A few epochs in, so that a restart from zero could not pass for a take-over.
	if err := waitFor(ctx, h.a.state, 30*time.Second, func(s supervisor.Status) bool { return s.StandbyEpoch >= 4 }); err != nil {
		return nil, fmt.Errorf("B holds no epochs of A: %w", err)
	}
	r.say("protected: A runs the counter, B holds its epochs")
	allowed := perInterval + perInterval/4 + 4
	var results []Result

	// host-dies
	r.say("inject: host A dies (ftrun, the counter and A's network at once)")
	res := Result{Step: "host-dies", Allowed: allowed, How: "take-over on B"}
	t0 := time.Now()
	h.killHost(h.a, a)
	res.Before = r.readCounter()
	live := filepath.Join(h.b.state, "demo-hosts", "live")
	if err := waitFor(ctx, live, 30*time.Second, func(s supervisor.Status) bool { return s.Restores > 0 && s.State == supervisor.StateRunning }); err != nil {
		return results, fmt.Errorf("host-dies: B did not take over: %w", err)
	}
	after, err := r.firstValueAfter(ctx, t0)
	if err != nil {
		return results, fmt.Errorf("host-dies: %w", err)
	}
	res.Recovery, res.After = time.Since(t0), after
	res.Rollback = max(0, res.Before-res.After)
	res.OK = res.Rollback <= res.Allowed && res.After > perInterval && h.counters() == 1
	results = append(results, res)
	r.report(res)

	// host-returns
	r.say("inject: host A comes back and systemd starts the same `ftrun run` again")
	_ = ip("-n", h.a.name, "link", "set", "eth0", "up")
	res = Result{Step: "host-returns", How: "A becomes B's standby", Before: r.readCounter()}
	t0 = time.Now()
	if _, err := h.runA(); err != nil {
		return results, err
	}
	err = waitFor(ctx, h.a.state, 30*time.Second, func(s supervisor.Status) bool { return s.Role == supervisor.RoleStandby })
	if err == nil {
		err = waitFor(ctx, live, 60*time.Second, func(s supervisor.Status) bool {
			return strings.HasPrefix(s.Protection, "protected by standby "+h.a.addr)
		})
	}
	res.Recovery = time.Since(t0)
	res.After = r.readCounter()
	res.OK = err == nil && h.counters() == 1 && res.After >= res.Before
	if err != nil {
		r.say("  the live copy on B is not protected by A: %v", err)
	}
	results = append(results, res)
	r.report(res)
	h.close()

	// partition-arbiter
	res, err = r.partition(ctx, script, allowed)
	if err != nil {
		return results, fmt.Errorf("partition-arbiter: %w", err)
	}
	results = append(results, res)
	r.report(res)
	return results, nil
}

func (r *run) report(res Result) {
	verdict := "ok"
	if !res.OK {
		verdict = "FAILED"
	}
	r.say("  -> %s in %s: counter %d before, %d after (rolled back %d ticks, allowed %d): %s",
		res.How, res.Recovery.Round(time.Millisecond), res.Before, res.After, res.Rollback, res.Allowed, verdict)
}

// partition runs a fresh pair with Debian's etcd as arbiter on a third host, cuts the
// network between A and B for a while and checks that exactly one copy counts
// throughout: the counter never forks (it only grows) and one process runs it.
func (r *run) partition(ctx context.Context, script string, allowed int64) (Result, error) {
	res := Result{Step: "partition-arbiter", How: "the key holder keeps counting"}
	if _, err := exec.LookPath("etcd"); err != nil {
		return res, errors.New("etcd not found: run scripts/setup")
	}
	h := &hostsRun{run: r, script: script, keys: filepath.Join(r.opt.WorkDir, "keys")}
	defer h.close()
	_ = os.Remove(r.counter) // a new pair counts from zero
	if err := h.net(1); err != nil {
		return res, err
	}
	for _, x := range []*dhost{&h.a, &h.b} {
		x.state += "-arb"
	}
	url := "http://" + h.e.addr
	etcd := h.e.cmd("etcd", "--name", "arb", "--data-dir", filepath.Join(r.opt.WorkDir, "etcd"),
		"--listen-client-urls", url+":2379", "--advertise-client-urls", url+":2379",
		"--listen-peer-urls", url+":2380", "--initial-advertise-peer-urls", url+":2380", "--initial-cluster", "arb="+url+":2380")
	if f, err := os.Create(filepath.Join(r.opt.WorkDir, "etcd.log")); err == nil {
		etcd.Stdout, etcd.Stderr = f, f
		defer f.Close()
	}
	if err := etcd.Start(); err != nil {
		return res, err
	}
	h.procs = append(h.procs, etcd)
	arb := "etcd:" + h.e.addr + ":2379"
	r.say("hosts: etcd on %s decides who may run the counter; A and B start with --arbiter %s", h.e.addr, arb)
	if _, err := h.standbyB("--arbiter", arb); err != nil {
		return res, err
	}
	if _, err := h.runA("--arbiter", arb); err != nil {
		return res, err
	}
	if err := waitFor(ctx, h.a.state, 60*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected by standby") && s.StandbyEpoch >= 2
	}); err != nil {
		return res, fmt.Errorf("A not protected by B: %w", err)
	}
	r.say("inject: the network between A and B goes down for 5 s (both still reach etcd)")
	rules := [][]string{{h.a.name, "INPUT", "-s", h.b.addr}, {h.a.name, "OUTPUT", "-d", h.b.addr},
		{h.b.name, "INPUT", "-s", h.a.addr}, {h.b.name, "OUTPUT", "-d", h.a.addr}}
	for _, x := range rules {
		if out, err := exec.Command("ip", "netns", "exec", x[0], "iptables", "-w", "-A", x[1], x[2], x[3], "-j", "DROP").CombinedOutput(); err != nil {
			return res, fmt.Errorf("iptables: %v: %s", err, out)
		}
	}
	res.Before = r.readCounter()
	t0 := time.Now()
	last, copies, forked := res.Before, h.counters(), false
	for time.Since(t0) < 5*time.Second {
		v := r.readCounter()
		if v >= 0 && v < last {
			forked = true
		}
		if v >= 0 {
			last = v
		}
		copies = max(copies, h.counters())
		time.Sleep(20 * time.Millisecond)
	}
	for _, x := range rules {
		_ = exec.Command("ip", "netns", "exec", x[0], "iptables", "-w", "-D", x[1], x[2], x[3], "-j", "DROP").Run()
	}
	res.Recovery, res.After = time.Since(t0), r.readCounter()
	res.OK = !forked && copies == 1 && res.After > res.Before
	r.say("  during the partition: %d cop%s counted, the counter %s", copies, map[bool]string{true: "y", false: "ies"}[copies == 1],
		map[bool]string{true: "went back (two copies)", false: "only grew"}[forked])
	return res, nil
}

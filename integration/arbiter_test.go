package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// startEtcd runs a one-member etcd (Debian's etcd-server) on host h.
func startEtcd(t *testing.T, h host) string {
	t.Helper()
	requiresRoot(t, "etcd")
	url := "http://" + h.addr
	cmd := h.cmd("etcd", "--name", "arb", "--data-dir", t.TempDir(),
		"--listen-client-urls", url+":2379", "--advertise-client-urls", url+":2379",
		"--listen-peer-urls", url+":2380", "--initial-advertise-peer-urls", url+":2380",
		"--initial-cluster", "arb="+url+":2380")
	logf, _ := os.Create(t.TempDir() + "/etcd.log")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := h.cmd("etcdctl", "--endpoints", url+":2379", "endpoint", "health").CombinedOutput()
		if err == nil && strings.Contains(string(out), "is healthy") {
			return h.addr + ":2379"
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd did not come up: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// With an etcd arbiter reachable from both hosts, a partition between primary and
// standby leaves exactly one live copy (the primary keeps its key, the standby may not
// take it), and the counter never forks. When the primary host then dies, its lease
// expires and the standby takes the key and goes live.
func TestArbiterPartitionOneLiveCopy(t *testing.T) {
	requiresRoot(t, "ruby", "etcd", "etcdctl")
	name := "it-arbiter"
	pr, rest := newPair(t, name, 1)
	primary, stby := pr.primary, pr.standby
	etcd := startEtcd(t, rest[0])
	sb := pr.startStandby(t, "--arbiter", "etcd:"+etcd)
	script, out := writeCounter(t)
	// Synced, as in TestFailoverToStandby: the take-over restores the one epoch the
	// standby holds, and the counter's temporary file must be there for it.
	p := pr.run(t, name, "--arbiter", "etcd:"+etcd, "--sync", filepath.Dir(out), "--", "ruby", script, out)
	st := p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 3
	})

	heal := partition(t, primary, stby)
	time.Sleep(4 * time.Second) // > take-over timeout (1s) + lease TTL (2s)
	now, err := status(p.stateDir)
	if err != nil || now.Pid != st.Pid || now.State != supervisor.StateRunning {
		t.Fatalf("primary after partition: %+v %v", now, err)
	}
	if n := countCounters(t, script); n != 1 {
		t.Fatalf("%d live copies during the partition, want exactly 1", n)
	}
	if !strings.Contains(sb.logs.String(), "asking the arbiter for its key") {
		t.Errorf("standby never considered taking over:\n%s", tail(sb.logs.String(), 20))
	}
	if strings.Contains(sb.logs.String(), "going live") {
		t.Fatalf("standby went live while the primary held the key")
	}
	heal()
	healed, _ := status(p.stateDir)
	p.waitFor("an epoch after the heal acked", 20*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch > healed.Epoch
	})

	// The primary host dies: the lease expires, the standby takes the key and goes live.
	p.kill9()
	killService(t, name)
	t0 := time.Now()
	before := readInt(t, out)
	deadline := t0.Add(20 * time.Second)
	for {
		if fi, err := os.Stat(out); err == nil && fi.ModTime().After(t0.Add(50*time.Millisecond)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("standby did not go live after the primary's lease expired:\n%s", tail(sb.logs.String(), 20))
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond)
	after := readInt(t, out)
	t.Logf("take-over with arbiter in %s: counter %d -> %d", time.Since(t0).Round(time.Millisecond), before, after)
	// The standby's newest epoch is at most a few intervals (6 ticks each) old.
	if after < before-40 {
		t.Fatalf("counter went back from %d to %d across take-over", before, after)
	}
	if n := countCounters(t, script); n != 1 {
		t.Fatalf("%d copies after take-over, want 1", n)
	}
}

// A primary cut off from the arbiter loses its lease: it freezes and kills its program
// and exits 155 (ExitFenced), so the standby (which still reaches the arbiter) can take over.
func TestArbiterFencesPrimaryThatLosesLease(t *testing.T) {
	requiresRoot(t, "ruby", "etcd", "etcdctl")
	hosts := hostNet(t, 2)
	primary, arb := hosts[0], hosts[1]
	etcd := startEtcd(t, arb)
	name := "it-fence"
	t.Cleanup(func() { killService(t, name) })
	script, out := writeCounter(t)
	p := startFtrunIn(t, primary.nsPath(), t.TempDir(), nil, "--name", name, "--interval", "300ms", "--discard",
		"--arbiter", "etcd:"+etcd, "--", "ruby", script, out)
	p.waitFor("running", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch > 1 })
	defer partition(t, primary, arb)()
	code, err := p.wait(20 * time.Second)
	if err != nil {
		t.Fatalf("primary still running 20s after losing the arbiter")
	}
	if code != supervisor.ExitFenced {
		t.Fatalf("exit %d, want %d", code, supervisor.ExitFenced)
	}
	if n := countCounters(t, script); n != 0 {
		t.Fatalf("%d copies still running after fencing", n)
	}
	if !strings.Contains(p.log(), "lost the arbiter lease") {
		t.Errorf("log does not say why:\n%s", tail(p.log(), 10))
	}
}

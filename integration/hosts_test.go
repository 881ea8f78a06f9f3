package integration

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// A host is a network namespace on this machine joined to the others by a bridge, with
// an address from 198.18.0.0/15 (the range set aside for such tests). Programs run in
// it with `nsenter --net` (setns on the network namespace only): `ip netns exec` would
// add a mount namespace, which makes CRIU dumps fail.
type host struct {
	name string
	addr string // without prefix length
}

var netSeq atomic.Int32

// hostNet makes a bridge and n hosts on it, removed when the test ends.
func hostNet(t *testing.T, n int) []host {
	t.Helper()
	requiresRoot(t, "ip", "nsenter")
	// Test processes that run at the same time must not share names: start each one's
	// numbering somewhere of its own.
	netSeq.CompareAndSwap(0, int32(os.Getpid()%60)*4)
	id := netSeq.Add(1)
	br := fmt.Sprintf("ftbr%d", id)
	run(t, "ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { exec.Command("ip", "link", "del", br).Run() })
	run(t, "ip", "link", "set", br, "up")
	var hosts []host
	for i := 1; i <= n; i++ {
		h := host{name: fmt.Sprintf("ft%dh%d", id, i), addr: netAddr(id, i)}
		veth, peer := fmt.Sprintf("ft%dv%d", id, i), fmt.Sprintf("ft%dp%d", id, i)
		run(t, "ip", "netns", "add", h.name)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", h.name).Run() })
		run(t, "ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
		// A namespace outlives its deletion while a closing socket in it still holds
		// it; deleting this end removes the pair at once either way.
		t.Cleanup(func() { exec.Command("ip", "link", "del", peer).Run() })
		run(t, "ip", "link", "set", peer, "master", br, "up")
		run(t, "ip", "link", "set", veth, "netns", h.name)
		h.ip(t, "link", "set", "lo", "up")
		h.ip(t, "link", "set", veth, "name", "eth0")
		h.ip(t, "addr", "add", h.addr+"/24", "dev", "eth0")
		h.ip(t, "link", "set", "eth0", "up")
		hosts = append(hosts, h)
	}
	return hosts
}

// netAddr is host i's address on network id: network id is the id-th /24 of
// 198.18.0.0/15, wrapping around its 512, so that a long run's ids never make an
// address that is none (198.18.256.1).
func netAddr(id int32, i int) string {
	n := int(id) % 512
	return fmt.Sprintf("198.%d.%d.%d", 18+n/256, n%256, i)
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (h host) ip(t *testing.T, args ...string) {
	t.Helper()
	run(t, "ip", append([]string{"-n", h.name}, args...)...)
}

// nsPath is the network namespace file for nsenter --net=.
func (h host) nsPath() string { return "/run/netns/" + h.name }

// cmd runs name in the host's network namespace.
func (h host) cmd(name string, args ...string) *exec.Cmd {
	return exec.Command("nsenter", append([]string{"--net=" + h.nsPath(), "--", name}, args...)...)
}

// partition drops all traffic between a and b (both directions), until heal is called.
func partition(t *testing.T, a, b host) (heal func()) {
	t.Helper()
	rules := [][]string{
		{"-n", a.name, "INPUT", "-s", b.addr}, {"-n", a.name, "OUTPUT", "-d", b.addr},
		{"-n", b.name, "INPUT", "-s", a.addr}, {"-n", b.name, "OUTPUT", "-d", a.addr},
	}
	for _, r := range rules {
		run(t, "ip", "netns", "exec", r[1], "iptables", "-w", "-A", r[2], r[3], r[4], "-j", "DROP")
	}
	return func() {
		for _, r := range rules {
			exec.Command("ip", "netns", "exec", r[1], "iptables", "-w", "-D", r[2], r[3], r[4], "-j", "DROP").Run()
		}
	}
}

// ftrun inside a host namespace protects a redis that a client on another host uses:
// the dump and restore work with the network namespace entered by setns only, and the
// client on the other host finds every key written before the checkpoint.
func TestRedisInHostNamespace(t *testing.T) {
	requiresRoot(t, "redis-server", "redis-cli")
	hosts := hostNet(t, 2)
	server, client := hosts[0], hosts[1]
	name := "it-netns-redis"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	args := append([]string{"--name", name, "--interval", "1h", "--discard", "--"}, redisArgs(6379, t.TempDir())...)
	for i, a := range args {
		if a == "127.0.0.1" {
			args[i] = server.addr
		}
	}
	p := startFtrunIn(t, server.nsPath(), state, nil, args...)
	p.waitFor("running", 20*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	cli := func(args ...string) (string, error) {
		out, err := client.cmd("redis-cli", append([]string{"-h", server.addr, "-p", "6379"}, args...)...).CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if out, err := cli("PING"); err == nil && out == "PONG" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("redis in the server host does not answer the client host")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 50; i++ {
		if _, err := cli("SET", fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	p.checkpoint()
	st, _ := status(state)
	syscall.Kill(st.Pid, syscall.SIGKILL)
	p.waitFor("restore", 20*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	for i := 0; i < 50; i++ {
		got, err := cli("GET", fmt.Sprintf("k%d", i))
		if err != nil || got != fmt.Sprintf("v%d", i) {
			t.Fatalf("k%d after restore: %q %v", i, got, err)
		}
	}
	// A partition between the hosts cuts the client off; healing it restores service.
	heal := partition(t, server, client)
	out, err := client.cmd("timeout", "2", "redis-cli", "-h", server.addr, "-p", "6379", "PING").CombinedOutput()
	if strings.Contains(string(out), "PONG") {
		t.Fatalf("PING crossed a partition: %s", out)
	}
	if err == nil || (!strings.Contains(err.Error(), "exit status 124") && !strings.Contains(string(out), "Could not connect")) {
		t.Fatalf("PING across a partition should time out, got %v: %s", err, out)
	}
	heal()
	if out, err := cli("PING"); err != nil || out != "PONG" {
		t.Fatalf("after healing: %q %v", out, err)
	}
}

func TestNetAddrStaysInRange(t *testing.T) {
	for id, want := range map[int32]string{1: "198.18.1.2", 255: "198.18.255.2", 256: "198.19.0.2", 511: "198.19.255.2", 513: "198.18.1.2"} {
		if got := netAddr(id, 2); got != want {
			t.Errorf("netAddr(%d, 2) = %s, want %s", id, got, want)
		}
	}
}

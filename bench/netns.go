package bench

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Host is a network namespace on this machine, joined to the run's other hosts by a
// bridge, with an address from 198.19.100.0-198.19.199.255. Programs run in it with
// `nsenter --net` (setns on the network namespace only): `ip netns exec` would add a
// mount namespace, which makes CRIU dumps fail.
type Host struct {
	Name string // the namespace, as `ip netns` knows it
	Addr string // IPv4 address, without prefix length
}

// NS is the namespace file for nsenter --net= and setns.
func (h Host) NS() string { return "/run/netns/" + h.Name }

// IP runs `ip -n NAME args...`.
func (h Host) IP(args ...string) error { return run("ip", append([]string{"-n", h.Name}, args...)...) }

// LinkDown takes the host's only link down: what a dead host looks like to the others.
func (h Host) LinkDown() error { return h.IP("link", "set", "eth0", "down") }

// Hosts makes a bridge and n hosts on it; all are removed when the scenario ends.
func (e Env) Hosts(n int) ([]Host, error) {
	k := int(e.nets.Add(1))
	if n < 1 || n > 200 || k > 99 {
		return nil, fmt.Errorf("hosts: %d hosts on network %d is more than this run's address plan allows", n, k)
	}
	subnet := 100 + k // 198.19.100.x - 198.19.199.x
	br := e.Name(fmt.Sprintf("b%d", k))
	if err := run("ip", "link", "add", br, "type", "bridge"); err != nil {
		return nil, err
	}
	e.Defer(func() { _ = run("ip", "link", "del", br) })
	if err := run("ip", "link", "set", br, "up"); err != nil {
		return nil, err
	}
	var hosts []Host
	for i := 1; i <= n; i++ {
		h := Host{Name: e.Name(fmt.Sprintf("n%dh%d", k, i)), Addr: fmt.Sprintf("198.19.%d.%d", subnet, i)}
		veth, peer := e.Name(fmt.Sprintf("v%dx%d", k, i)), e.Name(fmt.Sprintf("p%dx%d", k, i))
		if err := run("ip", "netns", "add", h.Name); err != nil {
			return nil, err
		}
		e.Defer(func() { _ = run("ip", "netns", "del", h.Name) })
		// A namespace outlives its deletion while a closing socket in it holds it;
		// deleting the bridge's end of the pair removes both ends at once anyway.
		e.Defer(func() { _ = run("ip", "link", "del", peer) })
		steps := [][]string{
			{"link", "add", veth, "type", "veth", "peer", "name", peer},
			{"link", "set", peer, "master", br, "up"},
			{"link", "set", veth, "netns", h.Name},
			{"-n", h.Name, "link", "set", "lo", "up"},
			{"-n", h.Name, "link", "set", veth, "name", "eth0"},
			{"-n", h.Name, "addr", "add", h.Addr + "/24", "dev", "eth0"},
			{"-n", h.Name, "link", "set", "eth0", "up"},
		}
		for _, s := range steps {
			if err := run("ip", s...); err != nil {
				return nil, fmt.Errorf("host %s: %w", h.Name, err)
			}
		}
		hosts = append(hosts, h)
	}
	return hosts, nil
}

// Cmd is name run in the host's network namespace, killed when ctx ends. nsenter
// becomes the program (it only enters a network namespace), so the kill reaches it.
func (h Host) Cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + h.NS(), "--", name}, args...)...)
}

// DialIn opens a TCP connection from inside the network namespace at ns ("" for this
// one): the socket is made by a thread that entered the namespace, and a socket stays
// in the namespace it was made in. The thread is never handed back to the scheduler:
// it ends with the goroutine that owns it, which DialIn awaits.
func DialIn(ns, addr string, timeout time.Duration) (net.Conn, error) {
	if ns == "" {
		return net.DialTimeout("tcp", addr, timeout)
	}
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // not unlocked: this thread leaves this namespace never
		f, err := os.Open(ns)
		if err != nil {
			ch <- result{nil, fmt.Errorf("open namespace: %w", err)}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, fmt.Errorf("setns %s: %w", ns, err)}
			return
		}
		c, err := net.DialTimeout("tcp", addr, timeout)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// ServiceNet is three hosts for a program that runs with `ftrun run --net`: a primary
// and a standby, each with a LAN bridge br0 that carries the host's address (the
// bridge the program's own namespace is attached to), and a client. Addr is the
// service address on their common subnet.
type ServiceNet struct {
	Primary, Standby, Client Host
	Addr                     string // without prefix length
}

// NewServiceNet makes the hosts of a ServiceNet; the veths ftrun adds to the hosts
// are removed with them when the scenario ends.
func (e Env) NewServiceNet() (ServiceNet, error) {
	hosts, err := e.Hosts(3)
	if err != nil {
		return ServiceNet{}, err
	}
	n := ServiceNet{Primary: hosts[0], Standby: hosts[1], Client: hosts[2]}
	n.Addr = n.Primary.Addr[:strings.LastIndex(n.Primary.Addr, ".")] + ".100"
	for _, h := range []Host{n.Primary, n.Standby} {
		e.Defer(func() { dropServiceLinks(h) })
		for _, args := range [][]string{
			{"link", "add", "br0", "type", "bridge"},
			{"link", "set", "br0", "up"},
			{"addr", "del", h.Addr + "/24", "dev", "eth0"},
			{"link", "set", "eth0", "master", "br0"},
			{"addr", "add", h.Addr + "/24", "dev", "br0"},
		} {
			if err := h.IP(args...); err != nil {
				return n, fmt.Errorf("bridge on %s: %w", h.Name, err)
			}
		}
	}
	return n, nil
}

// dropServiceLinks removes the veths `ftrun run --net` made on a host (named ft-...),
// with whatever namespace they led to.
func dropServiceLinks(h Host) {
	out, _ := exec.Command("ip", "-n", h.Name, "-o", "link", "show", "type", "veth").Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && strings.HasPrefix(f[1], "ft-") {
			_ = run("ip", "-n", h.Name, "link", "del", strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0])
		}
	}
}

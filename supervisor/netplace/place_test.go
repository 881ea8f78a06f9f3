package netplace

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests build a small LAN out of network namespaces, all named with the
// prefix "ftnp" and addressed from 198.19.88.0/24 only:
//
//	ftnpH<pid>  the "host": bridge br0, where Create puts the host-side veth
//	ftnpC<pid>  a client on br0 through a veth, eth0 198.19.88.2/24
//
// The service under test gets 198.19.88.100/24.

const (
	clientIP  = "198.19.88.2"
	serviceIP = "198.19.88.100"
	gatewayIP = "198.19.88.1"
)

type lan struct {
	host, client         string // namespace names
	hostPath, clientPath string // their files under /run/netns
}

// needRoot skips a test that needs real namespaces when it cannot have them.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veths and bridges")
	}
	for _, tool := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2, util-linux) to build the test LAN", tool)
		}
	}
}

// newLAN builds the host and client namespaces and removes them when t ends.
func newLAN(t *testing.T) *lan {
	t.Helper()
	needRoot(t)
	removeLeftovers(t)
	pid := os.Getpid()
	l := &lan{host: fmt.Sprintf("ftnpH%d", pid), client: fmt.Sprintf("ftnpC%d", pid)}
	l.hostPath = "/run/netns/" + l.host
	l.clientPath = "/run/netns/" + l.client
	t.Cleanup(func() {
		// Ignore errors: either may not have been made.
		_ = exec.Command("ip", "netns", "del", l.client).Run()
		_ = exec.Command("ip", "netns", "del", l.host).Run()
	})
	ipCmd(t, "netns", "add", l.host)
	ipCmd(t, "netns", "add", l.client)
	ipCmd(t, "-n", l.host, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.host, "link", "add", "br0", "type", "bridge")
	ipCmd(t, "-n", l.host, "link", "set", "br0", "up")
	ipCmd(t, "-n", l.host, "link", "add", "ftnpc", "type", "veth", "peer", "name", "eth0", "netns", l.client)
	ipCmd(t, "-n", l.host, "link", "set", "ftnpc", "master", "br0", "up")
	ipCmd(t, "-n", l.client, "link", "set", "lo", "up")
	ipCmd(t, "-n", l.client, "addr", "add", clientIP+"/24", "dev", "eth0")
	ipCmd(t, "-n", l.client, "link", "set", "eth0", "up")
	return l
}

// removeLeftovers deletes test namespaces of test processes that no longer run.
func removeLeftovers(t *testing.T) {
	paths, _ := filepath.Glob("/run/netns/ftnp[HC]*")
	for _, p := range paths {
		name := filepath.Base(p)
		pid, err := strconv.Atoi(name[len("ftnpH"):])
		if err != nil || pid == os.Getpid() {
			continue
		}
		if unix.Kill(pid, 0) == nil {
			continue // another test run is using it
		}
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Logf("removing leftover namespace %s: %v: %s", name, err, out)
		}
	}
}

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func testSpec(service string) Spec {
	return Spec{Service: service, Addr: netip.MustParsePrefix(serviceIP + "/24")}
}

// create is Create against the test host namespace, then Connect; it closes the
// place when t ends.
func (l *lan) create(t *testing.T, spec Spec) *Place {
	t.Helper()
	p := l.createDisconnected(t, spec)
	if err := p.Connect(); err != nil {
		t.Fatalf("Connect: %v", err)
	}
	return p
}

// createDisconnected is create without Connect.
func (l *lan) createDisconnected(t *testing.T, spec Spec) *Place {
	t.Helper()
	p, err := createIn(l.hostPath, spec)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

// inPath runs fn on a thread inside the network namespace at path.
func inPath(t *testing.T, path string, fn func() error) {
	t.Helper()
	f, err := openNS(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := inNS(f, fn); err != nil {
		t.Fatal(err)
	}
}

// ping sends ICMP echo requests from the client namespace to dst until one is
// answered or tries run out, like `nsenter --net=CLIENT ping -c1 -W1 DST` in a loop.
func (l *lan) ping(t *testing.T, dst string, tries int) error {
	t.Helper()
	var conn net.PacketConn
	inPath(t, l.clientPath, func() error {
		c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		conn = c
		return err
	})
	defer conn.Close()
	to := &net.IPAddr{IP: net.ParseIP(dst)}
	id := uint16(os.Getpid())
	buf := make([]byte, 1500)
	for seq := 1; seq <= tries; seq++ {
		if _, err := conn.WriteTo(echoRequest(id, uint16(seq)), to); err != nil {
			return fmt.Errorf("sending echo request: %w", err)
		}
		deadline := time.Now().Add(time.Second)
		_ = conn.SetReadDeadline(deadline)
		for {
			n, from, err := conn.ReadFrom(buf)
			if err != nil {
				break // timed out: try again
			}
			// Echo reply (type 0) to our id and seq, from dst.
			if from.String() == dst && n >= 8 && buf[0] == 0 &&
				binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == uint16(seq) {
				return nil
			}
		}
	}
	return fmt.Errorf("no echo reply from %s in %d tries", dst, tries)
}

func echoRequest(id, seq uint16) []byte {
	b := []byte{8, 0, 0, 0, 0, 0, 0, 0, 'f', 't', 'n', 'p'}
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	var sum uint32
	for i := 0; i < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(b[2:], ^uint16(sum))
	return b
}

// nsenter runs a command with only the network namespace at path entered, as the
// supervisor's tools will.
func nsenter(t *testing.T, path string, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + path}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("nsenter --net=%s %s: %v: %s", path, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestCreate(t *testing.T) {
	l := newLAN(t)
	spec := testSpec("ftnp-create")
	spec.Gateway = netip.MustParseAddr(gatewayIP)
	p := l.create(t, spec)

	if !strings.HasPrefix(p.Path(), fmt.Sprintf("/proc/%d/fd/", os.Getpid())) {
		t.Errorf("Path() = %q, want /proc/<pid>/fd/<n>", p.Path())
	}
	link := nsenter(t, p.Path(), "ip", "-o", "link", "show", "dev", "eth0")
	if want := "link/ether " + MACFor(spec.Service).String(); !strings.Contains(link, want) {
		t.Errorf("eth0 in the place: %q, want %q", link, want)
	}
	if !strings.Contains(link, "state UP") {
		t.Errorf("eth0 is not up: %q", link)
	}
	addr := nsenter(t, p.Path(), "ip", "-o", "-4", "addr", "show", "dev", "eth0")
	if !strings.Contains(addr, "inet "+serviceIP+"/24") {
		t.Errorf("eth0 addresses: %q, want %s/24", addr, serviceIP)
	}
	if lo := nsenter(t, p.Path(), "ip", "-o", "link", "show", "dev", "lo"); !strings.Contains(lo, "LOWER_UP") {
		t.Errorf("lo is not up: %q", lo)
	}
	if r := nsenter(t, p.Path(), "ip", "-4", "route", "show", "default"); !strings.Contains(r, "default via "+gatewayIP+" dev eth0") {
		t.Errorf("default route: %q, want via %s", r, gatewayIP)
	}
	// The namespace is ftrun's own creation, not a named one, and not the host's.
	if target, err := os.Readlink(p.Path()); err != nil || !strings.HasPrefix(target, "net:[") {
		t.Errorf("Path() links to %q (%v), want a net namespace", target, err)
	}

	host := ipCmd(t, "-n", l.host, "-o", "link", "show", "dev", spec.HostLink())
	if !strings.Contains(host, "master br0") || !strings.Contains(host, "state UP") {
		t.Errorf("host end %s: %q, want up on br0", spec.HostLink(), host)
	}

	if err := l.ping(t, serviceIP, 5); err != nil {
		t.Fatalf("client cannot ping the service: %v", err)
	}

	// A service listening inside the place is reachable from the client over TCP.
	var ln net.Listener
	if err := p.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", serviceIP+":0")
		return err
	}); err != nil {
		t.Fatalf("listening in the place: %v", err)
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_, err = io.WriteString(c, "ftnp-hello\n")
		served <- err
	}()
	var got string
	inPath(t, l.clientPath, func() error {
		c, err := net.DialTimeout("tcp4", ln.Addr().String(), 2*time.Second)
		if err != nil {
			return fmt.Errorf("client dialing the service: %w", err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		got, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if err := <-served; err != nil {
		t.Fatalf("serving: %v", err)
	}
	if got != "ftnp-hello\n" {
		t.Fatalf("client read %q", got)
	}
}

func TestCreateErrors(t *testing.T) {
	l := newLAN(t)

	spec := testSpec("ftnp-nobridge")
	spec.Bridge = "ftnpnobr"
	_, err := createIn(l.hostPath, spec)
	if want := `bridge "ftnpnobr" not found: create it and attach the client-facing interface, or pass --bridge`; err == nil || err.Error() != want {
		t.Errorf("missing bridge: %v, want %q", err, want)
	}

	spec = testSpec("ftnp-notbridge")
	spec.Bridge = "ftnpc" // the client's veth, not a bridge
	if _, err := createIn(l.hostPath, spec); err == nil || !strings.Contains(err.Error(), "not a bridge") {
		t.Errorf("non-bridge: %v", err)
	}

	spec = testSpec("ftnp-taken")
	ipCmd(t, "-n", l.host, "link", "add", spec.HostLink(), "type", "bridge")
	if _, err := createIn(l.hostPath, spec); err == nil || !strings.Contains(err.Error(), "not ftrun's veth") {
		t.Errorf("host link name taken by a bridge: %v", err)
	}

	if _, err := createIn(l.hostPath, Spec{Service: "ftnp-bad"}); err == nil || !strings.Contains(err.Error(), "--addr") {
		t.Errorf("invalid spec: %v", err)
	}
}

func TestDo(t *testing.T) {
	l := newLAN(t)
	p := l.create(t, testSpec("ftnp-do"))
	pnsID, err := statNS(p.File())
	if err != nil {
		t.Fatal(err)
	}

	var tid int
	var out []byte
	err = p.Do(func() error {
		tid = unix.Gettid()
		f, err := os.Open(threadNS)
		if err != nil {
			return err
		}
		defer f.Close()
		if id, err := statNS(f); err != nil || id != pnsID {
			return fmt.Errorf("thread is in %v (%v), want the place's %v", id, err, pnsID)
		}
		// A child started here is in the place's network namespace.
		out, err = exec.Command("ip", "-o", "-4", "addr", "show").CombinedOutput()
		return err
	})
	if err != nil {
		t.Fatalf("Do: %v", err)
	}
	if !strings.Contains(string(out), "eth0") || !strings.Contains(string(out), serviceIP+"/24") {
		t.Errorf("ip addr inside Do: %q, want eth0 with %s", out, serviceIP)
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	after, err := os.Readlink(fmt.Sprintf("/proc/self/task/%d/ns/net", tid))
	if err != nil {
		t.Fatalf("Do's thread %d is gone although it could return: %v", tid, err)
	}
	if after != self {
		t.Errorf("Do's thread %d is in %s after Do, want the process's %s", tid, after, self)
	}

	sentinel := errors.New("ftnp sentinel")
	if err := p.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do did not return fn's error: %v", err)
	}
	func() {
		defer func() {
			if v := recover(); v != "ftnp panic" {
				t.Errorf("recovered %v, want fn's panic", v)
			}
		}()
		_ = p.Do(func() error { panic("ftnp panic") })
	}()
}

// arpCapture listens for ARP frames on the client's eth0.
type arpCapture struct{ fd int }

func (l *lan) captureARP(t *testing.T) *arpCapture {
	t.Helper()
	c := &arpCapture{fd: -1}
	inPath(t, l.clientPath, func() error {
		ifi, err := net.InterfaceByName("eth0")
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(etherTypeARP)))
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(etherTypeARP), Ifindex: ifi.Index}); err != nil {
			return err
		}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 100_000})
	})
	t.Cleanup(func() { unix.Close(c.fd) })
	return c
}

// garps collects the gratuitous ARP frames for ip until want have come or a
// second passes, and returns their operations in order.
func (c *arpCapture) garps(mac net.HardwareAddr, ip netip.Addr, want int) []uint16 {
	var ops []uint16
	a := ip.As4()
	buf := make([]byte, 1600)
	for deadline := time.Now().Add(time.Second); len(ops) < want && time.Now().Before(deadline); {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil || n < 42 {
			continue
		}
		f := buf[:n]
		if binary.BigEndian.Uint16(f[12:]) != etherTypeARP || !bytes.Equal(f[0:6], broadcastMAC) {
			continue
		}
		sha, spa, tpa := f[22:28], f[28:32], f[38:42]
		if bytes.Equal(sha, mac) && bytes.Equal(spa, a[:]) && bytes.Equal(tpa, a[:]) && bytes.Equal(f[6:12], mac) {
			ops = append(ops, binary.BigEndian.Uint16(f[20:]))
		}
	}
	return ops
}

func TestAnnounce(t *testing.T) {
	l := newLAN(t)
	spec := testSpec("ftnp-announce")
	p := l.createDisconnected(t, spec)
	mac := spec.HardwareAddr()

	// The client believes the service address is at another MAC, as after a
	// failover: the announcement must move it.
	const stale = "02:00:00:00:00:99"
	ipCmd(t, "-n", l.client, "neigh", "replace", serviceIP, "lladdr", stale, "dev", "eth0", "nud", "stale")
	capture := l.captureARP(t)
	if got := ipCmd(t, "-n", l.client, "neigh", "show", serviceIP, "dev", "eth0"); !strings.Contains(got, "lladdr "+stale) {
		t.Fatalf("client's neighbour entry before Announce: %q, want lladdr %s", got, stale)
	}

	// Announced right after Connect, as the supervisor does: nothing may be lost
	// to a carrier that is not up yet.
	if err := p.Connect(); err != nil {
		t.Fatal(err)
	}
	if err := p.Announce(2, 20*time.Millisecond); err != nil {
		t.Fatalf("Announce: %v", err)
	}
	ops := capture.garps(mac, spec.Addr.Addr(), 4)
	if fmt.Sprint(ops) != fmt.Sprint([]uint16{arpRequest, arpReply, arpRequest, arpReply}) {
		t.Errorf("client saw gratuitous ARP operations %v, want request, reply twice", ops)
	}

	var neigh string
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		neigh = ipCmd(t, "-n", l.client, "neigh", "show", serviceIP, "dev", "eth0")
		if strings.Contains(neigh, "lladdr "+mac.String()) {
			break
		}
	}
	if !strings.Contains(neigh, "lladdr "+mac.String()) {
		t.Fatalf("client's neighbour entry after Announce: %q, want lladdr %s", neigh, mac)
	}

	if err := p.Announce(0, 0); err != nil {
		t.Errorf("Announce(0): %v", err)
	}
}

func TestClose(t *testing.T) {
	l := newLAN(t)
	spec := testSpec("ftnp-close")
	p := l.create(t, spec)
	ipCmd(t, "-n", l.host, "link", "show", "dev", spec.HostLink())

	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if out, err := exec.Command("ip", "-n", l.host, "link", "show", "dev", spec.HostLink()).CombinedOutput(); err == nil {
		t.Errorf("host end %s still there after Close: %s", spec.HostLink(), out)
	}
	if p.Path() != "" || p.File() != nil {
		t.Errorf("after Close: Path %q, File %v", p.Path(), p.File())
	}
	if err := p.Do(func() error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Do after Close: %v, want ErrClosed", err)
	}
	if err := p.Close(); !errors.Is(err, ErrClosed) {
		t.Errorf("second Close: %v, want ErrClosed", err)
	}
	if err := p.Release(); !errors.Is(err, ErrClosed) {
		t.Errorf("Release after Close: %v, want ErrClosed", err)
	}
}

// waitGone waits until the host end of spec's place is gone, as the kernel frees the
// link namespace nothing holds any more.
func waitGone(t *testing.T, l *lan, spec Spec) {
	t.Helper()
	start := time.Now()
	for {
		if err := exec.Command("ip", "-n", l.host, "link", "show", "dev", spec.HostLink()).Run(); err != nil {
			t.Logf("host end gone %s after ftrun let go", time.Since(start).Round(time.Millisecond))
			return
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("host end %s still there 5s after ftrun let go of the link namespace", spec.HostLink())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// When ftrun dies (its files closed by the kernel, not by Close), the link of a
// program that keeps running, and keeps sockets, goes with it: the address stops
// answering from this host, so a standby's take-over elsewhere is not shadowed.
func TestLinkDiesWithFtrun(t *testing.T) {
	l := newLAN(t)
	spec := testSpec("ftnp-dies")
	p := l.create(t, spec)
	pid := startSleep(t, p.Do)
	if err := l.ping(t, serviceIP, 3); err != nil {
		t.Fatalf("service unreachable: %v", err)
	}
	// What the kernel does to a dead ftrun's files: they close, nothing else runs.
	p.mu.Lock()
	p.ns.Close()
	p.link.Close()
	p.ns, p.link = nil, nil
	p.mu.Unlock()
	waitGone(t, l, spec)
	if err := l.ping(t, serviceIP, 1); err == nil {
		t.Fatalf("the address still answers with ftrun gone")
	}
	if out := nsenter(t, fmt.Sprintf("/proc/%d/ns/net", pid), "ip", "-o", "link", "show"); strings.Contains(out, IfName) {
		t.Errorf("the program's %s outlived ftrun: %q", IfName, out)
	}
	// A new ftrun adopts the program and its address answers again.
	a, err := adoptIn(l.hostPath, spec, pid)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if err := l.ping(t, serviceIP, 5); err != nil {
		t.Fatalf("service unreachable after Adopt: %v", err)
	}
}

// startSleep starts `sleep 30` from within do and ends it when t ends.
func startSleep(t *testing.T, do func(func() error) error) int {
	t.Helper()
	cmd := exec.Command("sleep", "30")
	if err := do(cmd.Start); err != nil {
		t.Fatalf("starting sleep: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd.Process.Pid
}

func TestAdopt(t *testing.T) {
	l := newLAN(t)
	spec := testSpec("ftnp-adopt")
	p := l.create(t, spec)
	pid := startSleep(t, p.Do)

	// ftrun exits (or dies), keeping the program: its link goes with ftrun's link
	// namespace, so the address stops answering from this host.
	if err := p.Release(); err != nil {
		t.Fatalf("Release: %v", err)
	}
	waitGone(t, l, spec)
	if err := l.ping(t, serviceIP, 1); err == nil {
		t.Fatalf("service still answers after ftrun let go of its network")
	}

	a, err := adoptIn(l.hostPath, spec, pid)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if got := ipCmd(t, "-n", l.host, "-o", "link", "show", "dev", spec.HostLink()); !strings.Contains(got, "master br0") || !strings.Contains(got, "state UP") {
		t.Errorf("Adopt did not wire a host end to the bridge: %q", got)
	}
	want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.Readlink(a.Path()); err != nil || got != want {
		t.Errorf("adopted Path links to %q (%v), want the program's %q", got, err, want)
	}
	if out := nsenter(t, a.Path(), "ip", "-o", "-4", "addr", "show", "dev", "eth0"); !strings.Contains(out, serviceIP+"/24") {
		t.Errorf("eth0 via adopted Path: %q", out)
	}
	if err := l.ping(t, serviceIP, 5); err != nil {
		t.Fatalf("service unreachable after Adopt: %v", err)
	}

	// Checks that refuse what is not ours.
	other := spec
	other.MAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x42}
	if _, err := adoptIn(l.hostPath, other, pid); err == nil || !strings.Contains(err.Error(), "MAC") {
		t.Errorf("Adopt with another MAC: %v", err)
	}
	other = spec
	other.Addr = netip.MustParsePrefix("198.19.88.101/24")
	if _, err := adoptIn(l.hostPath, other, pid); err == nil || !strings.Contains(err.Error(), "does not carry") {
		t.Errorf("Adopt with another address: %v", err)
	}
	hostPid := startSleep(t, func(fn func() error) error {
		f, err := openNS(l.hostPath)
		if err != nil {
			return err
		}
		defer f.Close()
		return inNS(f, fn)
	})
	if _, err := adoptIn(l.hostPath, spec, hostPid); err == nil || !strings.Contains(err.Error(), "shares ftrun's network namespace") {
		t.Errorf("Adopt of a process in the host namespace: %v", err)
	}
	if _, err := adoptIn(l.hostPath, spec, 0x7ffffff0); err == nil {
		t.Error("Adopt of a missing process succeeded")
	}

	// Close of the adopted place removes the network though the program runs.
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := exec.Command("ip", "-n", l.host, "link", "show", "dev", spec.HostLink()).CombinedOutput(); err == nil {
		t.Errorf("host end %s still there after Close of the adopted place", spec.HostLink())
	}
}

// Until Connect nothing from the LAN reaches the namespace (a restore must have its
// sockets in place first); after it, the service address answers.
func TestCreateConnectsOnlyOnConnect(t *testing.T) {
	l := newLAN(t)
	spec := testSpec("ftnp-connect")
	p := l.createDisconnected(t, spec)
	if link := ipCmd(t, "-n", l.host, "-o", "link", "show", "dev", spec.HostLink()); strings.Contains(link, "state UP") {
		t.Errorf("host end is up before Connect: %q", link)
	}
	if err := l.ping(t, serviceIP, 1); err == nil {
		t.Fatal("service address answered before Connect")
	}
	if err := p.Connect(); err != nil {
		t.Fatal(err)
	}
	if err := l.ping(t, serviceIP, 5); err != nil {
		t.Fatalf("service unreachable after Connect: %v", err)
	}
	if err := p.Connect(); err != nil {
		t.Errorf("second Connect: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Connect(); !errors.Is(err, ErrClosed) {
		t.Errorf("Connect after Close = %v, want ErrClosed", err)
	}
}

func TestCreateReplacesStale(t *testing.T) {
	l := newLAN(t)
	spec := testSpec("ftnp-stale")
	old := l.create(t, spec)
	// Something (a program left running) keeps the old namespace alive after ftrun
	// let go; its pairs go with the link namespace, a moment later or at once when
	// the second Create removes the host end of the same name.
	keep, err := dupFile(old.File())
	if err != nil {
		t.Fatal(err)
	}
	defer keep.Close()
	if err := old.Release(); err != nil {
		t.Fatal(err)
	}

	p := l.create(t, spec)
	if err := l.ping(t, serviceIP, 5); err != nil {
		t.Fatalf("service unreachable after second Create: %v", err)
	}
	// The stale pair is gone: the old namespace has no eth0 any more.
	h, err := routeHandle(keep)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for start := time.Now(); ; time.Sleep(10 * time.Millisecond) {
		if _, err := h.LinkByName("eth0"); err != nil {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatal("old namespace still has eth0 5s after second Create")
		}
	}
	// Exactly one host end, and it is the new place's peer.
	host := ipCmd(t, "-n", l.host, "-o", "link", "show", "master", "br0")
	if n := strings.Count(host, spec.HostLink()); n != 1 {
		t.Errorf("%d host ends named %s on br0: %q", n, spec.HostLink(), host)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

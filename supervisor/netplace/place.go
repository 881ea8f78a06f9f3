package netplace

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ownNS is ftrun's own network namespace, where the host bridge is.
const ownNS = "/proc/self/ns/net"

// ErrClosed is returned by a Place's methods after Close or Release.
var ErrClosed = errors.New("network place already closed")

// Names inside a place's link namespace.
const (
	linkBridge = "lbr"  // joins the two pairs
	linkUp     = "up0"  // peer of the host end
	linkSvc    = "svc0" // peer of the program's eth0
)

// Place is a service's network namespace, held open by ftrun, and the link namespace
// between it and the host's bridge, held by ftrun alone.
type Place struct {
	spec Spec
	host string // path of the network namespace that holds the bridge

	mu   sync.Mutex
	ns   *os.File // nil after Close or Release
	link *os.File // the link namespace; nil after Close or Release
}

// Create makes the service's network: a new network namespace with lo up and eth0
// carrying spec's address and MAC (and a default route when spec has a gateway),
// joined by a veth pair to spec's bridge in ftrun's own namespace, whose end is named
// spec.HostLink(). That end stays down until Connect: nothing from the LAN reaches the
// namespace before its program holds its sockets. A host-side veth of that name left
// behind by an earlier run is removed first.
func Create(spec Spec) (*Place, error) {
	return createIn(ownNS, spec)
}

// createIn is Create with the host side in the network namespace at hostPath.
func createIn(hostPath string, spec Spec) (*Place, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	host, err := openNS(hostPath)
	if err != nil {
		return nil, fmt.Errorf("host %w", err)
	}
	defer host.Close()
	hh, err := routeHandle(host)
	if err != nil {
		return nil, fmt.Errorf("netlink in host network namespace: %w", err)
	}
	defer hh.Close()

	br, err := findBridge(hh, spec.BridgeName())
	if err != nil {
		return nil, err
	}
	if err := removeStale(hh, spec.HostLink()); err != nil {
		return nil, err
	}

	ns, err := unshareNet()
	if err != nil {
		return nil, err
	}
	p := &Place{spec: spec, host: hostPath, ns: ns}
	if err := p.build(hh, br); err != nil {
		// The half-built network goes with the namespace; remove the host end now
		// rather than when the kernel gets round to freeing the namespace.
		if l, lerr := hh.LinkByName(spec.HostLink()); lerr == nil {
			_ = hh.LinkDel(l)
		}
		if p.link != nil {
			p.link.Close()
		}
		ns.Close()
		return nil, fmt.Errorf("setting up network of service %q: %w", spec.Service, err)
	}
	return p, nil
}

// build wires the namespace to the bridge and configures its eth0.
func (p *Place) build(hh *netlink.Handle, br netlink.Link) error {
	if err := p.wire(hh, br); err != nil {
		return err
	}
	return p.configure()
}

// wire makes the link namespace and its two veth pairs: the host end (down, on the
// bridge) to up0, and svc0 to the program's eth0 (with the service MAC), up0 and
// svc0 joined by a bridge. Nothing but p.link holds that namespace, so when ftrun
// dies, however, the kernel frees it and deletes both pairs with it: the program's
// eth0 and the host end go, and the address stops answering from this host, while
// the program's own namespace may linger for minutes behind orphaned sockets.
func (p *Place) wire(hh *netlink.Handle, br netlink.Link) error {
	s := p.spec
	mtu := br.Attrs().MTU
	link, err := unshareNet()
	if err != nil {
		return err
	}
	p.link = link
	lh, err := routeHandle(link)
	if err != nil {
		return fmt.Errorf("netlink in link namespace: %w", err)
	}
	defer lh.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: s.HostLink(), MTU: mtu},
		PeerName:      linkUp,
		PeerNamespace: netlink.NsFd(int(link.Fd())),
		PeerMTU:       uint32(mtu),
	}
	if err := hh.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s: %w", s.HostLink(), err)
	}
	host, err := hh.LinkByName(s.HostLink())
	if err != nil {
		return fmt.Errorf("finding new veth %s: %w", s.HostLink(), err)
	}
	if err := hh.LinkSetMaster(host, br); err != nil {
		return fmt.Errorf("attaching %s to bridge %q: %w", s.HostLink(), s.BridgeName(), err)
	}
	inner := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: linkSvc, MTU: mtu},
		PeerName:         IfName,
		PeerHardwareAddr: s.HardwareAddr(),
		PeerNamespace:    netlink.NsFd(int(p.ns.Fd())),
		PeerMTU:          uint32(mtu),
	}
	if err := lh.LinkAdd(inner); err != nil {
		return fmt.Errorf("adding veth %s to the service namespace: %w", IfName, err)
	}
	if err := lh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: linkBridge, MTU: mtu}}); err != nil {
		return fmt.Errorf("adding bridge in link namespace: %w", err)
	}
	lbr, err := lh.LinkByName(linkBridge)
	if err != nil {
		return fmt.Errorf("finding bridge in link namespace: %w", err)
	}
	for _, name := range []string{linkUp, linkSvc} {
		l, err := lh.LinkByName(name)
		if err != nil {
			return fmt.Errorf("finding %s in link namespace: %w", name, err)
		}
		if err := lh.LinkSetMaster(l, lbr); err != nil {
			return fmt.Errorf("attaching %s in link namespace: %w", name, err)
		}
		if err := lh.LinkSetUp(l); err != nil {
			return fmt.Errorf("bringing up %s in link namespace: %w", name, err)
		}
	}
	if err := lh.LinkSetUp(lbr); err != nil {
		return fmt.Errorf("bringing up bridge in link namespace: %w", err)
	}
	return nil
}

// configure gives the program's eth0 the service address and route, and brings up lo.
func (p *Place) configure() error {
	s := p.spec
	nh, err := routeHandle(p.ns)
	if err != nil {
		return fmt.Errorf("netlink in service namespace: %w", err)
	}
	defer nh.Close()
	lo, err := nh.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("finding lo: %w", err)
	}
	if err := nh.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing up lo: %w", err)
	}
	eth, err := nh.LinkByName(IfName)
	if err != nil {
		return fmt.Errorf("finding %s: %w", IfName, err)
	}
	if err := nh.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(s.Addr)}); err != nil {
		return fmt.Errorf("adding %s to %s: %w", s.Addr, IfName, err)
	}
	if err := nh.LinkSetUp(eth); err != nil {
		return fmt.Errorf("bringing up %s: %w", IfName, err)
	}
	if s.Gateway.IsValid() {
		r := &netlink.Route{
			LinkIndex: eth.Attrs().Index,
			Dst:       &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
			Gw:        net.IP(s.Gateway.AsSlice()),
		}
		if err := nh.RouteAdd(r); err != nil {
			return fmt.Errorf("adding default route via %s: %w", s.Gateway, err)
		}
	}
	return nil
}

// Adopt reopens the network namespace of the running process pid, placed there by
// an earlier ftrun, checks it is spec's, and wires it to the bridge anew: the link
// namespace of the ftrun that placed it died with that ftrun. An eth0 still there
// (the kernel frees a namespace a moment after its last holder) must carry spec's MAC
// and address; it is replaced. The adopted place is connected at once.
func Adopt(spec Spec, pid int) (*Place, error) {
	return adoptIn(ownNS, spec, pid)
}

// adoptIn is Adopt with the host side in the network namespace at hostPath.
func adoptIn(hostPath string, spec Spec, pid int) (*Place, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if pid <= 0 {
		return nil, fmt.Errorf("adopting network of service %q: bad pid %d", spec.Service, pid)
	}
	host, err := openNS(hostPath)
	if err != nil {
		return nil, fmt.Errorf("host %w", err)
	}
	defer host.Close()
	ns, err := openNS(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil, fmt.Errorf("adopting network of service %q from process %d: %w", spec.Service, pid, err)
	}
	p := &Place{spec: spec, host: hostPath, ns: ns}
	if err := p.rewire(host, pid); err != nil {
		if p.link != nil {
			p.link.Close()
		}
		ns.Close()
		return nil, fmt.Errorf("adopting network of service %q from process %d: %w", spec.Service, pid, err)
	}
	if err := p.Connect(); err != nil {
		_ = p.Close()
		return nil, err
	}
	return p, nil
}

// rewire checks an adopted namespace and wires it to the bridge again.
func (p *Place) rewire(host *os.File, pid int) error {
	spec := p.spec
	hid, err := statNS(host)
	if err != nil {
		return err
	}
	nid, err := statNS(p.ns)
	if err != nil {
		return err
	}
	if hid == nid {
		return fmt.Errorf("process %d shares ftrun's network namespace: it was not started with --net; restart it", pid)
	}
	nh, err := routeHandle(p.ns)
	if err != nil {
		return fmt.Errorf("netlink in service namespace: %w", err)
	}
	defer nh.Close()
	if eth, err := nh.LinkByName(IfName); err == nil {
		if eth.Type() != "veth" {
			return fmt.Errorf("its %s is a %s, not a veth: not placed by ftrun --net; restart it", IfName, eth.Type())
		}
		if got, want := eth.Attrs().HardwareAddr, spec.HardwareAddr(); !bytes.Equal(got, want) {
			return fmt.Errorf("its %s has MAC %s, the service's is %s: placed for another service or another --mac; restart it", IfName, got, want)
		}
		addrs, err := addrList(nh, eth)
		if err != nil {
			return fmt.Errorf("listing addresses of %s: %w", IfName, err)
		}
		if len(addrs) > 0 && !hasAddr(addrs, spec.Addr) {
			return fmt.Errorf("its %s does not carry %s: placed with another --addr; restart it", IfName, spec.Addr)
		}
		if err := nh.LinkDel(eth); err != nil {
			return fmt.Errorf("replacing %s: %w", IfName, err)
		}
	}
	hh, err := routeHandle(host)
	if err != nil {
		return fmt.Errorf("netlink in host network namespace: %w", err)
	}
	defer hh.Close()
	br, err := findBridge(hh, spec.BridgeName())
	if err != nil {
		return err
	}
	if err := removeStale(hh, spec.HostLink()); err != nil {
		return err
	}
	return p.build(hh, br)
}

// Connect brings up the host end of the veth: from now on the LAN reaches the
// namespace. A restored program's sockets must be in place first: a client's
// retransmission that reaches the namespace before them is answered with a reset,
// which ends the very connection the restore brings back. Connect on a connected or
// adopted place does nothing.
func (p *Place) Connect() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ns == nil {
		return ErrClosed
	}
	host, err := openNS(p.host)
	if err != nil {
		return fmt.Errorf("host %w", err)
	}
	defer host.Close()
	hh, err := routeHandle(host)
	if err != nil {
		return fmt.Errorf("netlink in host network namespace: %w", err)
	}
	defer hh.Close()
	l, err := hh.LinkByName(p.spec.HostLink())
	if err != nil {
		return fmt.Errorf("connecting service %q: host end %s: %w", p.spec.Service, p.spec.HostLink(), err)
	}
	if err := hh.LinkSetUp(l); err != nil {
		return fmt.Errorf("connecting service %q: bringing up %s: %w", p.spec.Service, p.spec.HostLink(), err)
	}
	// Nothing gets through until the kernel has seen the carrier of both ends come
	// up and the bridge has enabled its port: a gratuitous ARP sent before that is
	// dropped, and clients keep a stale neighbour entry for the address.
	nh, err := routeHandle(p.ns)
	if err != nil {
		return fmt.Errorf("netlink in service namespace: %w", err)
	}
	defer nh.Close()
	deadline := time.Now().Add(connectTimeout)
	for {
		eth, err := nh.LinkByName(IfName)
		if err != nil {
			return fmt.Errorf("connecting service %q: %s: %w", p.spec.Service, IfName, err)
		}
		hl, err := hh.LinkByName(p.spec.HostLink())
		if err != nil {
			return fmt.Errorf("connecting service %q: %s: %w", p.spec.Service, p.spec.HostLink(), err)
		}
		if eth.Attrs().OperState == netlink.OperUp && hl.Attrs().OperState == netlink.OperUp && p.linkUp() {
			return forgetNeighbours(nh, eth)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("connecting service %q: no carrier %s after %s came up (%s %s, %s %s)", p.spec.Service, connectTimeout,
				p.spec.HostLink(), IfName, eth.Attrs().OperState, p.spec.HostLink(), hl.Attrs().OperState)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// linkUp says whether the link namespace's end of the host pair has its carrier;
// p.mu is held.
func (p *Place) linkUp() bool {
	lh, err := routeHandle(p.link)
	if err != nil {
		return false
	}
	defer lh.Close()
	l, err := lh.LinkByName(linkUp)
	return err == nil && l.Attrs().OperState == netlink.OperUp
}

// forgetNeighbours drops the namespace's unfinished neighbour entries on eth. A
// restored socket sends (a window probe, a retransmission) before the link is up;
// the ARP request that sets off is lost, and the entry would wait a whole retransmit
// interval (a second) before asking again, holding every packet to that peer
// meanwhile. Dropped, the next packet asks at once.
func forgetNeighbours(nh *netlink.Handle, eth netlink.Link) error {
	neighs, err := nh.NeighList(eth.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing neighbours on %s: %w", IfName, err)
	}
	for _, n := range neighs {
		if n.State&(netlink.NUD_PERMANENT|netlink.NUD_NOARP) != 0 {
			continue
		}
		if err := nh.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("forgetting neighbour %s on %s: %w", n.IP, IfName, err)
		}
	}
	return nil
}

// connectTimeout bounds the wait for eth0's carrier in Connect.
const connectTimeout = 2 * time.Second

// Spec is the placement p was made or adopted for.
func (p *Place) Spec() Spec { return p.spec }

// File is the open namespace file, or nil after Close or Release. It stays owned by
// p: do not close it.
func (p *Place) File() *os.File {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ns
}

// Path names the namespace for other tools (`nsenter --net=PATH`, CRIU) while p is
// open: /proc/<ftrun pid>/fd/<n>. It is "" after Close or Release.
func (p *Place) Path() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ns == nil {
		return ""
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), p.ns.Fd())
}

// Do runs fn on a locked OS thread that entered the namespace (the network namespace
// only) and returns the thread to its namespace afterwards; if that fails, the thread
// is discarded. Processes fn starts from its own goroutine begin inside the
// namespace; goroutines fn starts do not run in it.
func (p *Place) Do(fn func() error) error {
	ns, err := p.dup()
	if err != nil {
		return err
	}
	defer ns.Close()
	return inNS(ns, fn)
}

// dup returns a private copy of the namespace file, so Do never races Close.
func (p *Place) dup() (*os.File, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ns == nil {
		return nil, ErrClosed
	}
	fd, err := unix.FcntlInt(p.ns.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicating namespace file: %w", err)
	}
	return os.NewFile(uintptr(fd), p.ns.Name()), nil
}

// Close removes the service's network and lets the namespace go: it deletes eth0 in
// the namespace and up0 in the link namespace, which destroys both veth pairs with
// the host end, and closes the files. The namespace itself is freed once no process
// is left in it. Deleting from inside removes exactly this place's pairs, never a
// newer one of the same name.
func (p *Place) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ns == nil {
		return ErrClosed
	}
	err := deleteLink(p.ns, IfName)
	if lerr := deleteLink(p.link, linkUp); lerr != nil {
		err = errors.Join(err, lerr)
	}
	if cerr := p.ns.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing namespace file: %w", cerr))
	}
	p.link.Close()
	p.ns, p.link = nil, nil
	if err != nil {
		return fmt.Errorf("removing network of service %q: %w", p.spec.Service, err)
	}
	return nil
}

// Release closes the files only, for ftrun exiting while the program keeps running
// to be adopted later. The link namespace goes with its file, and the address with
// it: nothing answers for the service from this host until a new ftrun adopts it.
func (p *Place) Release() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ns == nil {
		return ErrClosed
	}
	err := p.ns.Close()
	p.link.Close()
	p.ns, p.link = nil, nil
	if err != nil {
		return fmt.Errorf("releasing network namespace of service %q: %w", p.spec.Service, err)
	}
	return nil
}

func deleteLink(ns *os.File, name string) error {
	nh, err := routeHandle(ns)
	if err != nil {
		return fmt.Errorf("netlink in service namespace: %w", err)
	}
	defer nh.Close()
	eth, err := nh.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil // the pair is gone already
		}
		return fmt.Errorf("finding %s: %w", name, err)
	}
	if err := nh.LinkDel(eth); err != nil {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

// findBridge returns the bridge named name, or an error that says what to do.
func findBridge(h *netlink.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("bridge %q not found: create it and attach the client-facing interface, or pass --bridge", name)
		}
		return nil, fmt.Errorf("looking up bridge %q: %w", name, err)
	}
	if l.Type() != "bridge" {
		return nil, fmt.Errorf("%q is a %s, not a bridge: pass --bridge with the client-facing bridge", name, l.Type())
	}
	return l, nil
}

// removeStale deletes a host-side veth of the given name left by an earlier run;
// deleting it destroys its peer, whatever namespace that is in.
func removeStale(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("looking up host link %s: %w", name, err)
	}
	if l.Type() != "veth" {
		return fmt.Errorf("host link %s exists and is a %s, not ftrun's veth: remove it (ip link del %s) or rename the service", name, l.Type(), name)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("removing stale host link %s: %w", name, err)
	}
	return nil
}

// addrList lists a link's IPv4 addresses, retrying once if the dump was
// interrupted by a concurrent change.
func addrList(h *netlink.Handle, l netlink.Link) ([]netlink.Addr, error) {
	addrs, err := h.AddrList(l, netlink.FAMILY_V4)
	if errors.Is(err, netlink.ErrDumpInterrupted) {
		addrs, err = h.AddrList(l, netlink.FAMILY_V4)
	}
	return addrs, err
}

func hasAddr(addrs []netlink.Addr, want netip.Prefix) bool {
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		if netip.PrefixFrom(ip.Unmap(), ones) == want {
			return true
		}
	}
	return false
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// routeHandle is a netlink (rtnetlink only) handle acting in the namespace ns.
func routeHandle(ns *os.File) (*netlink.Handle, error) {
	return netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
}

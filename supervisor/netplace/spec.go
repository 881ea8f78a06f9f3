package netplace

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// DefaultBridge is the host bridge a Spec with no Bridge attaches to.
const DefaultBridge = "br0"

// IfName is the name of the program's interface inside its namespace.
const IfName = "eth0"

// maxIfName is the longest interface name Linux accepts (IFNAMSIZ less the NUL).
const maxIfName = 15

// Spec says where the program of one service sits on the network.
type Spec struct {
	Service string
	Addr    netip.Prefix     // service address with its subnet, e.g. 198.18.5.100/24
	MAC     net.HardwareAddr // nil: MACFor(Service)
	Bridge  string           // host bridge to attach to; "": DefaultBridge
	Gateway netip.Addr       // optional default route inside the namespace
}

// ParseSpec builds a Spec from the command-line forms of its fields (as given to
// --addr, --mac, --bridge and --gateway; empty strings for the optional ones) and
// validates it.
func ParseSpec(service, addr, mac, bridge, gateway string) (Spec, error) {
	s := Spec{Service: service, Bridge: bridge}
	if addr == "" {
		return Spec{}, errors.New("--net needs --addr: the service address with its subnet, e.g. 198.18.5.100/24")
	}
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		return Spec{}, fmt.Errorf("--addr %q is not an address with a subnet (want e.g. 198.18.5.100/24)", addr)
	}
	s.Addr = p
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return Spec{}, fmt.Errorf("--mac %q is not a MAC address (want e.g. 02:00:5e:10:00:01)", mac)
		}
		s.MAC = hw
	}
	if gateway != "" {
		gw, err := netip.ParseAddr(gateway)
		if err != nil {
			return Spec{}, fmt.Errorf("--gateway %q is not an IP address", gateway)
		}
		s.Gateway = gw
	}
	if err := s.Validate(); err != nil {
		return Spec{}, err
	}
	return s, nil
}

// MACFor is the MAC a service gets when none is given: 02 (locally administered,
// unicast) followed by five bytes of a hash of the name, so every host derives the
// same one for the same service.
func MACFor(service string) net.HardwareAddr {
	sum := sha256.Sum256([]byte("ftrun/netplace/mac\x00" + service))
	mac := make(net.HardwareAddr, 6)
	mac[0] = 0x02
	copy(mac[1:], sum[:5])
	return mac
}

// HardwareAddr is the MAC of the program's eth0: MAC, or MACFor(Service) when unset.
func (s Spec) HardwareAddr() net.HardwareAddr {
	if s.MAC != nil {
		return s.MAC
	}
	return MACFor(s.Service)
}

// BridgeName is the host bridge the veth attaches to: Bridge, or DefaultBridge.
func (s Spec) BridgeName() string {
	if s.Bridge != "" {
		return s.Bridge
	}
	return DefaultBridge
}

// HostLink is the name of the host-side end of the service's veth pair: "ft-", up to
// three characters of the service name as a hint for people reading `ip link`, "-",
// and eight hex digits of a hash of the whole name, which is what makes it unique.
// It is at most 15 bytes, the kernel's limit.
func (s Spec) HostLink() string {
	sum := sha256.Sum256([]byte("ftrun/netplace/link\x00" + s.Service))
	var hint strings.Builder
	for _, r := range strings.ToLower(s.Service) {
		if hint.Len() == 3 {
			break
		}
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			hint.WriteRune(r)
		}
	}
	name := "ft-"
	if hint.Len() > 0 {
		name += hint.String() + "-"
	}
	return name + hex.EncodeToString(sum[:4])
}

// Validate reports the first thing wrong with s, in one line that says how to fix it.
func (s Spec) Validate() error {
	if s.Service == "" {
		return errors.New("network placement needs a service name")
	}
	if err := validateAddr(s.Addr); err != nil {
		return err
	}
	if err := validateMAC(s.MAC); err != nil {
		return err
	}
	if err := validateIfName(s.BridgeName()); err != nil {
		return fmt.Errorf("--bridge: %w", err)
	}
	if s.Gateway.IsValid() {
		if err := validateGateway(s.Gateway, s.Addr); err != nil {
			return err
		}
	}
	return nil
}

func validateAddr(p netip.Prefix) error {
	if !p.IsValid() {
		return errors.New("--addr: missing service address with its subnet, e.g. 198.18.5.100/24")
	}
	a := p.Addr()
	if !a.Is4() {
		return fmt.Errorf("--addr %s: only IPv4 service addresses are supported (failover announces them with ARP)", p)
	}
	switch {
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("--addr %s: not a unicast host address; pick one clients can reach on the LAN", p)
	}
	if p.Bits() == 0 {
		return fmt.Errorf("--addr %s: a /0 subnet is not a LAN; give the LAN's prefix length, e.g. /24", p)
	}
	if p.Bits() <= 30 {
		if a == p.Masked().Addr() {
			return fmt.Errorf("--addr %s: that is the subnet's network address; pick a host address inside %s", p, p.Masked())
		}
		if a == lastAddr(p) {
			return fmt.Errorf("--addr %s: that is the subnet's broadcast address; pick a host address inside %s", p, p.Masked())
		}
	}
	return nil
}

func validateMAC(mac net.HardwareAddr) error {
	if mac == nil {
		return nil
	}
	if len(mac) != 6 {
		return fmt.Errorf("--mac %s: want a 6-byte Ethernet address, e.g. 02:00:5e:10:00:01", mac)
	}
	if mac[0]&0x01 != 0 {
		return fmt.Errorf("--mac %s: a multicast address (low bit of the first byte set); use a unicast one, e.g. 02:...", mac)
	}
	if allZero(mac) {
		return fmt.Errorf("--mac %s: the all-zero address; leave --mac out to derive one from the service name", mac)
	}
	return nil
}

func validateGateway(gw netip.Addr, p netip.Prefix) error {
	if !gw.Is4() {
		return fmt.Errorf("--gateway %s: must be an IPv4 address like --addr", gw)
	}
	if !p.Contains(gw) {
		return fmt.Errorf("--gateway %s: not inside the service subnet %s; the gateway must be on the LAN", gw, p.Masked())
	}
	if gw == p.Addr() {
		return fmt.Errorf("--gateway %s: the service address itself; give the LAN's router", gw)
	}
	return nil
}

// validateIfName checks a name the kernel would accept for a network interface.
func validateIfName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) > maxIfName:
		return fmt.Errorf("interface name %q is longer than %d bytes", name, maxIfName)
	case name == "." || name == "..":
		return fmt.Errorf("interface name %q is not allowed", name)
	case strings.ContainsAny(name, "/: \t\n\x00"):
		return fmt.Errorf("interface name %q contains '/', ':' or white space", name)
	}
	return nil
}

// lastAddr is the highest address of p's subnet (its broadcast address for IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

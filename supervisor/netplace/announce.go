package netplace

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

const (
	etherTypeARP = 0x0806
	arpRequest   = 1
	arpReply     = 2
)

var broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// garpFrames builds one round of gratuitous ARP for ip at mac, as whole Ethernet
// frames to the broadcast address: a request and a reply, both with sender and
// target protocol address ip. Some hosts heed only one of the two kinds, so each
// round sends both. Either makes a host that already has a neighbour entry for ip
// update it to mac, and makes bridges on the way learn mac's port.
func garpFrames(mac net.HardwareAddr, ip netip.Addr) ([][]byte, error) {
	if len(mac) != 6 {
		return nil, fmt.Errorf("ARP needs a 6-byte MAC, have %s", mac)
	}
	if !ip.Is4() {
		return nil, fmt.Errorf("ARP needs an IPv4 address, have %s", ip)
	}
	// A request's target hardware address is unknown, hence zero (as arping -U
	// sends); a reply's is the broadcast address it goes to (as arping -A sends).
	return [][]byte{
		arpFrame(arpRequest, mac, ip, make(net.HardwareAddr, 6)),
		arpFrame(arpReply, mac, ip, broadcastMAC),
	}, nil
}

// arpFrame is a broadcast Ethernet frame carrying an IPv4-over-Ethernet ARP packet
// whose sender and target protocol addresses are both ip.
func arpFrame(op uint16, mac net.HardwareAddr, ip netip.Addr, targetHW net.HardwareAddr) []byte {
	f := make([]byte, 0, 14+28)
	f = append(f, broadcastMAC...)
	f = append(f, mac...)
	f = binary.BigEndian.AppendUint16(f, etherTypeARP)
	f = binary.BigEndian.AppendUint16(f, 1)      // hardware type: Ethernet
	f = binary.BigEndian.AppendUint16(f, 0x0800) // protocol type: IPv4
	f = append(f, 6, 4)                          // address lengths
	f = binary.BigEndian.AppendUint16(f, op)
	a := ip.As4()
	f = append(f, mac...)
	f = append(f, a[:]...)
	f = append(f, targetHW...)
	f = append(f, a[:]...)
	return f
}

// Announce tells the LAN that the service address is here: count rounds of
// gratuitous ARP (a request and a reply each) sent from eth0 inside the namespace,
// gap apart. It returns once all are sent.
func (p *Place) Announce(count int, gap time.Duration) error {
	if count < 1 {
		return nil
	}
	ip := p.spec.Addr.Addr()
	err := p.Do(func() error {
		ifi, err := net.InterfaceByName(IfName)
		if err != nil {
			return fmt.Errorf("finding %s: %w", IfName, err)
		}
		frames, err := garpFrames(ifi.HardwareAddr, ip)
		if err != nil {
			return err
		}
		// A packet socket belongs to the namespace it was opened in: this one
		// is opened here, on the thread inside the service's namespace.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(etherTypeARP)))
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		defer unix.Close(fd)
		to := &unix.SockaddrLinklayer{
			Protocol: htons(etherTypeARP),
			Ifindex:  ifi.Index,
			Halen:    6,
		}
		copy(to.Addr[:], broadcastMAC)
		for i := range count {
			if i > 0 && gap > 0 {
				time.Sleep(gap)
			}
			for _, f := range frames {
				if err := unix.Sendto(fd, f, 0, to); err != nil {
					return fmt.Errorf("sending gratuitous ARP on %s: %w", IfName, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("announcing %s of service %q: %w", ip, p.spec.Service, err)
	}
	return nil
}

// htons converts a 16-bit value to network byte order, as packet sockets want their
// protocol number.
func htons(v uint16) uint16 {
	return binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, v))
}

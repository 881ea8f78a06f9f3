package netplace

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Peer is the far end of one of the program's restored TCP connections, with what
// the program's side of it held at the checkpoint.
type Peer struct {
	Local, Remote netip.AddrPort
	// Una is the peer's oldest unacknowledged sequence number: the next byte the
	// restored program expects from it.
	Una uint32
	// Seq is the sequence number of Unacked[0]: the program's output the peer had
	// not acknowledged, which the restored program sends again in time.
	Seq     uint32
	Unacked []byte
	MSS     uint32
	Window  uint32 // the program's receive window, bytes
	WScale  uint32 // the program's receive window scale
	// TSval is the program's timestamp clock at the checkpoint, for connections
	// with TCP timestamps (Timestamps).
	Timestamps bool
	TSval      uint32
}

const (
	icmpDestUnreach = 3
	icmpHostUnreach = 1
)

// hostUnreachable builds an ICMP "host unreachable" message about the segment the
// peer sent at p.Una: it quotes an IPv4 header from the peer to the program and the
// first 8 bytes of a TCP header, as a router on the way would (pure).
func hostUnreachable(p Peer) []byte {
	m := make([]byte, 8, 8+20+8)
	m[0], m[1] = icmpDestUnreach, icmpHostUnreach
	src, dst := p.Remote.Addr().As4(), p.Local.Addr().As4()
	ip := []byte{0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, unix.IPPROTO_TCP, 0, 0}
	ip = append(ip, src[:]...)
	ip = append(ip, dst[:]...)
	binary.BigEndian.PutUint16(ip[10:], checksum(ip))
	m = append(m, ip...)
	m = binary.BigEndian.AppendUint16(m, p.Remote.Port())
	m = binary.BigEndian.AppendUint16(m, p.Local.Port())
	m = binary.BigEndian.AppendUint32(m, p.Una)
	binary.BigEndian.PutUint16(m[2:], checksum(m))
	return m
}

// checksum is the Internet checksum (RFC 1071) of b.
func checksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Flags of a TCP header.
const (
	tcpPSH = 0x08
	tcpACK = 0x10
)

// maxResend bounds the segments resent per connection.
const maxResend = 16

// resendSegments builds the TCP segments (headers and data, no IP header) that carry
// the program's unacknowledged output to the peer again, as its restored socket will
// on its first retransmission (pure): from Seq, acknowledging Una, advertising the
// program's window, with a timestamp not below any the program had sent.
func resendSegments(p Peer) [][]byte {
	optLen := 0
	if p.Timestamps {
		optLen = 12 // NOP, NOP, timestamp
	}
	mss := int(p.MSS)
	if mss <= 0 || mss > 1460 {
		mss = 1460
	}
	mss -= optLen
	src, dst := p.Local.Addr().As4(), p.Remote.Addr().As4()
	var segs [][]byte
	for off := 0; off < len(p.Unacked) && len(segs) < maxResend; off += mss {
		data := p.Unacked[off:min(off+mss, len(p.Unacked))]
		seg := make([]byte, 20+optLen, 20+optLen+len(data))
		binary.BigEndian.PutUint16(seg[0:], p.Local.Port())
		binary.BigEndian.PutUint16(seg[2:], p.Remote.Port())
		binary.BigEndian.PutUint32(seg[4:], p.Seq+uint32(off))
		binary.BigEndian.PutUint32(seg[8:], p.Una)
		seg[12] = byte((20+optLen)/4) << 4
		seg[13] = tcpACK
		if off+len(data) == len(p.Unacked) {
			seg[13] |= tcpPSH
		}
		binary.BigEndian.PutUint16(seg[14:], uint16(min(p.Window>>min(p.WScale, 14), 0xffff)))
		if p.Timestamps {
			// The echo only feeds the peer's RTT estimate, which skips a zero one.
			copy(seg[20:], []byte{1, 1, 8, 10})
			binary.BigEndian.PutUint32(seg[24:], p.TSval)
		}
		seg = append(seg, data...)
		// The checksum covers a pseudo-header of addresses, protocol and length.
		sum := make([]byte, 0, 12+len(seg))
		sum = append(sum, src[:]...)
		sum = append(sum, dst[:]...)
		sum = append(sum, 0, unix.IPPROTO_TCP)
		sum = binary.BigEndian.AppendUint16(sum, uint16(len(seg)))
		binary.BigEndian.PutUint16(seg[16:], checksum(append(sum, seg...)))
		segs = append(segs, seg)
	}
	return segs
}

// NudgeRounds is how many messages each peer gets: each takes back one doubling of
// its retransmission timeout, and a peer that waited about a second has doubled it
// three times at most.
const NudgeRounds = 4

// Nudge hurries the program's restored connections along. While the program was
// down, a peer waiting for an acknowledgement doubled its retransmission timeout with
// every unanswered try; and a restored socket, having no round-trip estimate, would
// send its unacknowledged output again only after a second. So, from inside the
// namespace, from the service address, by ftrun (not the program, so the output gate
// does not hold it):
//   - each peer gets rounds ICMP "host unreachable" messages about its oldest
//     unacknowledged segment: each takes one doubling back, and once the time since
//     its last try exceeds its timeout it resends at once (RFC 6069, which Linux
//     implements). To the peer this is a soft error; the connection stays up (unless
//     its application asked for hard errors with IP_RECVERR).
//   - with resend, the program's unacknowledged output goes out again now, as the
//     restored socket would retransmit it. Only for output the caller may release.
//
// Peers in the namespace itself are left alone. It returns how many peers it reached.
func (p *Place) Nudge(peers []Peer, rounds int, resend bool) (int, error) {
	var sent int
	err := p.Do(func() error {
		icmp, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return fmt.Errorf("opening a raw ICMP socket: %w", err)
		}
		defer unix.Close(icmp)
		var errs []error
		for _, peer := range peers {
			if !peer.Remote.Addr().Is4() || !peer.Local.Addr().Is4() || peer.Remote.Addr().IsLoopback() ||
				peer.Remote.Addr() == peer.Local.Addr() || peer.Remote.Addr() == p.spec.Addr.Addr() {
				continue
			}
			to := &unix.SockaddrInet4{Addr: peer.Remote.Addr().As4()}
			if resend && len(peer.Unacked) > 0 {
				if err := sendSegments(peer, to); err != nil {
					errs = append(errs, fmt.Errorf("resending to %s: %w", peer.Remote, err))
				}
			}
			msg := hostUnreachable(peer)
			for range rounds {
				if err := unix.Sendto(icmp, msg, 0, to); err != nil {
					errs = append(errs, fmt.Errorf("to %s: %w", peer.Remote, err))
					break
				}
			}
			sent++
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return sent, fmt.Errorf("hurrying the connections of service %q: %w", p.spec.Service, err)
	}
	return sent, nil
}

// sendSegments sends peer's resent segments from a raw TCP socket bound to the
// program's address (the kernel adds the IP header).
func sendSegments(peer Peer, to *unix.SockaddrInet4) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("opening a raw TCP socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: peer.Local.Addr().As4()}); err != nil {
		return fmt.Errorf("binding to %s: %w", peer.Local.Addr(), err)
	}
	for _, seg := range resendSegments(peer) {
		if err := unix.Sendto(fd, seg, 0, to); err != nil {
			return err
		}
	}
	return nil
}

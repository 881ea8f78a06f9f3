package netplace

import (
	"encoding/binary"
	"net/netip"
	"testing"
)

func TestHostUnreachable(t *testing.T) {
	p := Peer{Local: netip.MustParseAddrPort("198.18.5.100:6379"), Remote: netip.MustParseAddrPort("198.18.5.3:45016"), Una: 104900514}
	m := hostUnreachable(p)
	if len(m) != 8+20+8 {
		t.Fatalf("message is %d bytes, want 36", len(m))
	}
	if m[0] != 3 || m[1] != 1 {
		t.Errorf("type/code %d/%d, want 3/1 (host unreachable)", m[0], m[1])
	}
	if checksum(m) != 0 {
		t.Error("ICMP checksum does not verify")
	}
	ip := m[8:28]
	if checksum(ip) != 0 {
		t.Error("quoted IPv4 header checksum does not verify")
	}
	if ip[9] != 6 || netip.AddrFrom4([4]byte(ip[12:16])) != p.Remote.Addr() || netip.AddrFrom4([4]byte(ip[16:20])) != p.Local.Addr() {
		t.Errorf("quoted IPv4 header % x is not TCP from the peer to the program", ip)
	}
	tcp := m[28:]
	if binary.BigEndian.Uint16(tcp[0:]) != 45016 || binary.BigEndian.Uint16(tcp[2:]) != 6379 || binary.BigEndian.Uint32(tcp[4:]) != p.Una {
		t.Errorf("quoted TCP header % x: want ports 45016->6379 and seq %d", tcp, p.Una)
	}
}

func TestChecksum(t *testing.T) {
	// RFC 1071's example: the one's complement sum of these words is 0xddf2.
	if got := checksum([]byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}); got != ^uint16(0xddf2) {
		t.Errorf("checksum = %#04x, want %#04x", got, ^uint16(0xddf2))
	}
}

func TestResendSegments(t *testing.T) {
	data := make([]byte, 3000)
	for i := range data {
		data[i] = byte(i)
	}
	p := Peer{Local: netip.MustParseAddrPort("198.18.5.100:6379"), Remote: netip.MustParseAddrPort("198.18.5.3:45016"), Una: 7,
		Seq: 0xfffffff0, Unacked: data, MSS: 1460, Window: 65536, WScale: 10, Timestamps: true, TSval: 12345}
	segs := resendSegments(p)
	if len(segs) != 3 {
		t.Fatalf("%d segments for 3000 bytes at MSS 1460 with timestamps, want 3", len(segs))
	}
	var got []byte
	for i, seg := range segs {
		pseudo := append(append(append([]byte{}, 198, 18, 5, 100), 198, 18, 5, 3), 0, 6, byte(len(seg)>>8), byte(len(seg)))
		if checksum(append(pseudo, seg...)) != 0 {
			t.Errorf("segment %d: TCP checksum does not verify", i)
		}
		if binary.BigEndian.Uint16(seg[0:]) != 6379 || binary.BigEndian.Uint16(seg[2:]) != 45016 {
			t.Errorf("segment %d: ports %d->%d", i, binary.BigEndian.Uint16(seg[0:]), binary.BigEndian.Uint16(seg[2:]))
		}
		if seq := binary.BigEndian.Uint32(seg[4:]); seq != p.Seq+uint32(len(got)) {
			t.Errorf("segment %d: seq %d, want %d (wrapping)", i, seq, p.Seq+uint32(len(got)))
		}
		if binary.BigEndian.Uint32(seg[8:]) != 7 || seg[13]&0x10 == 0 {
			t.Errorf("segment %d does not acknowledge the peer's bytes up to 7", i)
		}
		if w := binary.BigEndian.Uint16(seg[14:]); w != 64 {
			t.Errorf("segment %d: window %d, want 65536>>10", i, w)
		}
		if seg[12]>>4 != 8 || binary.BigEndian.Uint32(seg[24:]) != 12345 {
			t.Errorf("segment %d: want a 32-byte header with TSval 12345", i)
		}
		if len(seg)-32 > 1460-12 {
			t.Errorf("segment %d carries %d bytes, more than the MSS allows", i, len(seg)-32)
		}
		got = append(got, seg[32:]...)
	}
	if string(got) != string(data) {
		t.Error("the segments do not carry the unacknowledged bytes in order")
	}
	if segs[2][13]&0x08 == 0 || segs[0][13]&0x08 != 0 {
		t.Error("PSH belongs on the last segment only")
	}
}

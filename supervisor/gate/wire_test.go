package gate

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
)

// attr builds one netlink attribute by hand: native-endian length and type, the data,
// padding to 4 bytes.
func attr(typ uint16, data ...byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestEncode(t *testing.T) {
	const queue = 0x0107 // both bytes non-zero, to catch a swapped res_id
	nfgen := []byte{0, 0, 0x01, 0x07}
	cases := []struct {
		name     string
		build    func() (netlink.Message, error)
		wantType netlink.HeaderType
		wantData []byte
	}{
		{
			name:     "bind",
			build:    func() (netlink.Message, error) { return bindMsg(queue) },
			wantType: 0x0302,
			wantData: cat(nfgen, attr(1, 1, 0, 0, 0)),
		},
		{
			name:     "unbind",
			build:    func() (netlink.Message, error) { return unbindMsg(queue) },
			wantType: 0x0302,
			wantData: cat(nfgen, attr(1, 2, 0, 0, 0)),
		},
		{
			name:     "params: copy 64 bytes, maxlen, GSO on and fail-open off",
			build:    func() (netlink.Message, error) { return paramsMsg(queue, 8192) },
			wantType: 0x0302,
			wantData: cat(nfgen,
				attr(2, 0, 0, 0, 64, 2), // NFQA_CFG_PARAMS {copy_range=64, NFQNL_COPY_PACKET}
				attr(3, 0, 0, 0x20, 0),  // NFQA_CFG_QUEUE_MAXLEN 8192
				attr(4, 0, 0, 0, 4|1),   // NFQA_CFG_MASK: GSO and FAIL_OPEN
				attr(5, 0, 0, 0, 4)),    // NFQA_CFG_FLAGS: GSO only
		},
		{
			name:     "barrier",
			build:    func() (netlink.Message, error) { return barrierMsg(queue) },
			wantType: 0x0302,
			wantData: nfgen,
		},
		{
			name:     "batch accept",
			build:    func() (netlink.Message, error) { return verdictBatchMsg(queue, nfAccept, 0xdeadbeef) },
			wantType: 0x0303,
			wantData: cat(nfgen, attr(2, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef)),
		},
		{
			name:     "batch drop",
			build:    func() (netlink.Message, error) { return verdictBatchMsg(queue, nfDrop, 42) },
			wantType: 0x0303,
			wantData: cat(nfgen, attr(2, 0, 0, 0, 0, 0, 0, 0, 42)),
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m, err := tc.build()
			if err != nil {
				t.Fatal(err)
			}
			if m.Header.Type != tc.wantType {
				t.Errorf("type = %#x, want %#x", m.Header.Type, tc.wantType)
			}
			if m.Header.Flags != netlink.Request|netlink.Acknowledge {
				t.Errorf("flags = %v, want request|acknowledge", m.Header.Flags)
			}
			if !bytes.Equal(m.Data, tc.wantData) {
				t.Errorf("data =\n %x, want\n %x", m.Data, tc.wantData)
			}
		})
	}
}

func TestMsgTypes(t *testing.T) {
	for msg, want := range map[uint16]netlink.HeaderType{
		nfqnlMsgPacket: 0x0300, nfqnlMsgVerdict: 0x0301, nfqnlMsgConfig: 0x0302, nfqnlMsgVerdictBatch: 0x0303,
	} {
		if got := msgType(msg); got != want {
			t.Errorf("msgType(%d) = %#x, want %#x", msg, got, want)
		}
	}
}

func TestDecodePacket(t *testing.T) {
	hdr := func(id uint32) []byte {
		b := make([]byte, 7)
		binary.BigEndian.PutUint32(b, id)
		binary.BigEndian.PutUint16(b[4:], 0x0800) // ETH_P_IP
		b[6] = 3                                  // NF_INET_LOCAL_OUT
		return b
	}
	payload := bytes.Repeat([]byte{0x45}, 64)
	cases := []struct {
		name   string
		data   []byte
		want   packet
		errHas string
	}{
		{
			name: "truncated packet: length from NFQA_CAP_LEN",
			data: cat([]byte{2, 0, 0x01, 0x07},
				attr(nfqaPacketHdr, hdr(0x01020304)...),
				attr(5, 0, 0, 0, 9), // NFQA_IFINDEX_OUTDEV: ignored
				attr(nfqaCapLen, 0, 0, 0x05, 0xdc),
				attr(nfqaPayload, payload...)),
			want: packet{family: 2, queue: 0x0107, id: 0x01020304, proto: 0x0800, hook: 3, length: 1500},
		},
		{
			name: "whole packet: length from the payload",
			data: cat([]byte{10, 0, 0, 7},
				attr(nfqaPacketHdr, hdr(9)...),
				attr(nfqaPayload, payload[:40]...)),
			want: packet{family: 10, queue: 7, id: 9, proto: 0x0800, hook: 3, length: 40},
		},
		{
			name: "packet without payload",
			data: cat([]byte{2, 0, 0, 7}, attr(nfqaPacketHdr, hdr(1)...)),
			want: packet{family: 2, queue: 7, id: 1, proto: 0x0800, hook: 3},
		},
		{name: "shorter than nfgenmsg", data: []byte{2, 0}, errHas: "shorter than nfgenmsg"},
		{name: "no packet header", data: cat([]byte{2, 0, 0, 7}, attr(nfqaPayload, 1, 2)), errHas: "no NFQA_PACKET_HDR"},
		{name: "short packet header", data: cat([]byte{2, 0, 0, 7}, attr(nfqaPacketHdr, 0, 0, 0, 1)), errHas: "want 7"},
		{name: "malformed attribute", data: cat([]byte{2, 0, 0, 7}, []byte{0xff, 0, 1, 0}), errHas: "decode packet attributes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodePacket(tc.data)
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("error = %v, want one containing %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("packet = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDecodeRoundTrip decodes a whole packet message as the kernel frames it.
func TestDecodeRoundTrip(t *testing.T) {
	data := cat([]byte{2, 0, 0, 7}, attr(nfqaPacketHdr, 0, 0, 0, 5, 8, 0, 3), attr(nfqaPayload, 1, 2, 3))
	m := netlink.Message{Header: netlink.Header{Length: uint32(16 + len(data)), Type: msgType(nfqnlMsgPacket)}, Data: data}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var back netlink.Message
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	p, err := decodePacket(back.Data)
	if err != nil {
		t.Fatal(err)
	}
	if p.id != 5 || p.length != 3 {
		t.Fatalf("packet = %+v, want id 5 length 3", p)
	}
}

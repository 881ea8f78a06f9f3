package gate

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
)

// The nfnetlink_queue protocol, from the kernel's include/uapi/linux/netfilter/
// nfnetlink_queue.h and nfnetlink.h. Attribute types are native-endian in the netlink
// attribute header; integers inside attributes are big-endian.
const (
	nfnlSubsysQueue = 3 // NFNL_SUBSYS_QUEUE: message type = subsystem<<8 | message
	nfnetlinkV0     = 0 // nfgenmsg.version

	nfqnlMsgPacket       = 0 // kernel → ftrun: a queued packet
	nfqnlMsgVerdict      = 1 // ftrun → kernel: verdict on one packet (unused)
	nfqnlMsgConfig       = 2 // ftrun → kernel: bind, unbind, configure
	nfqnlMsgVerdictBatch = 3 // ftrun → kernel: verdict on every packet with id <= id

	// Packet and verdict attributes (enum nfqnl_attr_type).
	nfqaPacketHdr  = 1  // struct nfqnl_msg_packet_hdr {__be32 packet_id; __be16 hw_protocol; __u8 hook}
	nfqaVerdictHdr = 2  // struct nfqnl_msg_verdict_hdr {__be32 verdict; __be32 id}
	nfqaPayload    = 10 // the first copy_range bytes of the packet
	nfqaCapLen     = 13 // __be32 original length, present when the payload was truncated

	// Config attributes (enum nfqnl_attr_config).
	nfqaCfgCmd         = 1 // struct nfqnl_msg_config_cmd {__u8 command; __u8 _pad; __be16 pf}
	nfqaCfgParams      = 2 // struct nfqnl_msg_config_params {__be32 copy_range; __u8 copy_mode} (packed)
	nfqaCfgQueueMaxlen = 3 // __be32
	nfqaCfgMask        = 4 // __be32: which flags to change
	nfqaCfgFlags       = 5 // __be32: their values

	cfgCmdBind   = 1 // NFQNL_CFG_CMD_BIND
	cfgCmdUnbind = 2 // NFQNL_CFG_CMD_UNBIND

	copyModePacket = 2 // NFQNL_COPY_PACKET

	// NFQA_CFG_F_FAIL_OPEN (1<<0) would let packets through when the queue is full or
	// the socket overflows; the gate never sets it. NFQA_CFG_F_CONNTRACK (1<<1) is not
	// needed.
	cfgFlagFailOpen = 1 << 0
	cfgFlagGSO      = 1 << 2 // NFQA_CFG_F_GSO: queue GSO packets whole, unsegmented

	nfDrop   = 0 // NF_DROP
	nfAccept = 1 // NF_ACCEPT

	// copyRange is how many bytes of each packet the kernel copies to ftrun. The gate
	// needs only the id and the length; a few bytes of header help debugging.
	copyRange = 64
)

// msgType is the netlink message type of an nfnetlink_queue message.
func msgType(msg uint16) netlink.HeaderType {
	return netlink.HeaderType(nfnlSubsysQueue<<8 | msg)
}

// nfgenmsg encodes struct nfgenmsg {__u8 nfgen_family; __u8 version; __be16 res_id}.
func nfgenmsg(family uint8, queue uint16) []byte {
	b := []byte{family, nfnetlinkV0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], queue)
	return b
}

// request builds an acknowledged request for queue with attributes written by fill.
func request(msg uint16, queue uint16, fill func(ae *netlink.AttributeEncoder)) (netlink.Message, error) {
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian
	if fill != nil {
		fill(ae)
	}
	attrs, err := ae.Encode()
	if err != nil {
		return netlink.Message{}, fmt.Errorf("gate: encode nfqueue message: %w", err)
	}
	return netlink.Message{
		Header: netlink.Header{Type: msgType(msg), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(nfgenmsg(0, queue), attrs...),
	}, nil
}

// configCmd encodes struct nfqnl_msg_config_cmd. pf is unused by BIND and UNBIND.
func configCmd(cmd uint8) []byte { return []byte{cmd, 0, 0, 0} }

// bindMsg binds queue to the sending socket.
func bindMsg(queue uint16) (netlink.Message, error) {
	return request(nfqnlMsgConfig, queue, func(ae *netlink.AttributeEncoder) {
		ae.Bytes(nfqaCfgCmd, configCmd(cfgCmdBind))
	})
}

// unbindMsg unbinds queue; the kernel drops the packets still queued on it.
func unbindMsg(queue uint16) (netlink.Message, error) {
	return request(nfqnlMsgConfig, queue, func(ae *netlink.AttributeEncoder) {
		ae.Bytes(nfqaCfgCmd, configCmd(cfgCmdUnbind))
	})
}

// paramsMsg configures a bound queue: copy the first copyRange bytes of each packet,
// hold at most maxlen packets, queue GSO packets whole. Fail-open stays off (the mask
// names it, the flags clear it), so a full queue drops rather than passes.
func paramsMsg(queue uint16, maxlen uint32) (netlink.Message, error) {
	return request(nfqnlMsgConfig, queue, func(ae *netlink.AttributeEncoder) {
		params := make([]byte, 5)
		binary.BigEndian.PutUint32(params, copyRange)
		params[4] = copyModePacket
		ae.Bytes(nfqaCfgParams, params)
		ae.Uint32(nfqaCfgQueueMaxlen, maxlen)
		ae.Uint32(nfqaCfgMask, cfgFlagGSO|cfgFlagFailOpen)
		ae.Uint32(nfqaCfgFlags, cfgFlagGSO)
	})
}

// barrierMsg is a config message with no attribute: it changes nothing, and its
// acknowledgement arrives after every packet message the kernel queued on the socket
// before it.
func barrierMsg(queue uint16) (netlink.Message, error) {
	return request(nfqnlMsgConfig, queue, nil)
}

// verdictBatchMsg applies verdict to every packet queued on queue whose id is not
// after id.
func verdictBatchMsg(queue uint16, verdict uint32, id uint32) (netlink.Message, error) {
	return request(nfqnlMsgVerdictBatch, queue, func(ae *netlink.AttributeEncoder) {
		hdr := make([]byte, 8)
		binary.BigEndian.PutUint32(hdr[0:], verdict)
		binary.BigEndian.PutUint32(hdr[4:], id)
		ae.Bytes(nfqaVerdictHdr, hdr)
	})
}

// packet is what the gate reads from an NFQNL_MSG_PACKET message.
type packet struct {
	family uint8  // nfgenmsg family: 2 (IPv4) or 10 (IPv6)
	queue  uint16 // nfgenmsg res_id
	id     uint32
	proto  uint16 // hw_protocol (ethertype)
	hook   uint8
	length int // original length: NFQA_CAP_LEN when present, else the payload's
}

var errNoPacketHeader = errors.New("gate: packet message has no NFQA_PACKET_HDR")

// decodePacket decodes the data of an NFQNL_MSG_PACKET message (after the netlink
// header).
func decodePacket(data []byte) (packet, error) {
	if len(data) < 4 {
		return packet{}, fmt.Errorf("gate: packet message of %d bytes is shorter than nfgenmsg", len(data))
	}
	p := packet{family: data[0], queue: binary.BigEndian.Uint16(data[2:4])}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return packet{}, fmt.Errorf("gate: decode packet attributes: %w", err)
	}
	ad.ByteOrder = binary.BigEndian
	var haveHdr, haveCap bool
	var payload, capLen int
	for ad.Next() {
		switch ad.Type() {
		case nfqaPacketHdr:
			b := ad.Bytes()
			if len(b) < 7 {
				return packet{}, fmt.Errorf("gate: NFQA_PACKET_HDR of %d bytes, want 7", len(b))
			}
			p.id = binary.BigEndian.Uint32(b[0:4])
			p.proto = binary.BigEndian.Uint16(b[4:6])
			p.hook = b[6]
			haveHdr = true
		case nfqaPayload:
			payload = len(ad.Bytes())
		case nfqaCapLen:
			capLen = int(ad.Uint32())
			haveCap = true
		}
	}
	if err := ad.Err(); err != nil {
		return packet{}, fmt.Errorf("gate: decode packet attributes: %w", err)
	}
	if !haveHdr {
		return packet{}, errNoPacketHeader
	}
	p.length = payload
	if haveCap {
		p.length = capLen
	}
	return p, nil
}

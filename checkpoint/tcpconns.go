package checkpoint

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/checkpoint-restore/go-criu/v8/crit"
	"github.com/checkpoint-restore/go-criu/v8/crit/images/fdinfo"
	tcpstream "github.com/checkpoint-restore/go-criu/v8/crit/images/tcp-stream"
	"google.golang.org/protobuf/proto"
)

// TCPConn is an established TCP connection of a checkpointed program, from its side.
type TCPConn struct {
	Local, Peer netip.AddrPort
	// RcvNxt is the sequence number of the next byte the program expects from the
	// peer: the peer's oldest unacknowledged byte, once the program is restored.
	RcvNxt uint32
	// SndUna is the sequence number of Unacked[0]: the program's output from there on
	// had not been acknowledged by the peer (at most maxUnacked bytes of it are kept).
	SndUna  uint32
	Unacked []byte
	MSS     uint32 // the connection's MSS clamp
	Window  uint32 // the receive window the program advertised, in bytes
	WScale  uint32 // the program's receive window scale
	// Timestamps says the connection uses TCP timestamps; TSval is the program's
	// timestamp clock at the checkpoint, not below any it had sent.
	Timestamps bool
	TSval      uint32
}

// maxUnacked bounds the send-queue bytes TCPConns keeps per connection.
const maxUnacked = 64 << 10

// tcpiOptTimestamps is Linux's TCPI_OPT_TIMESTAMPS bit of CRIU's opt_mask.
const tcpiOptTimestamps = 1

// Values of CRIU's inet socket entries (Linux's own numbers).
const (
	afInet         = 2
	ipprotoTCP     = 6
	tcpEstablished = 1
)

// TCPConns lists the established IPv4 TCP connections in the image set in dir, from
// files.img and CRIU's tcp-stream images.
func TCPConns(dir string) ([]TCPConn, error) {
	socks, err := filesOfType(dir, fdinfo.FdTypes_INETSK)
	if err != nil {
		return nil, err
	}
	var out []TCPConn
	for _, fe := range socks {
		sk := fe.GetIsk()
		if sk == nil || sk.GetFamily() != afInet || sk.GetProto() != ipprotoTCP || sk.GetState() != tcpEstablished ||
			len(sk.GetSrcAddr()) != 1 || len(sk.GetDstAddr()) != 1 {
			continue
		}
		c := TCPConn{
			Local: netip.AddrPortFrom(ipv4(sk.GetSrcAddr()[0]), uint16(sk.GetSrcPort())),
			Peer:  netip.AddrPortFrom(ipv4(sk.GetDstAddr()[0]), uint16(sk.GetDstPort())),
		}
		if err := c.readStream(filepath.Join(dir, fmt.Sprintf("tcp-stream-%x.img", sk.GetIno()))); err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// readStream fills c from CRIU's image of the connection's queues: the entry, then
// the receive queue's bytes, then the send queue's.
func (c *TCPConn) readStream(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("read CRIU image: %w", err)
	}
	defer f.Close()
	img, err := crit.New(f, nil, "", false, false).Decode(&tcpstream.TcpStreamEntry{})
	if err != nil {
		return fmt.Errorf("decode %q: %w", path, err)
	}
	var ts *tcpstream.TcpStreamEntry
	if len(img.Entries) > 0 {
		ts, _ = img.Entries[0].Message.(*tcpstream.TcpStreamEntry)
	}
	if ts == nil {
		return fmt.Errorf("%q holds no connection", path)
	}
	var queues struct {
		Out []byte `json:"out_q"`
	}
	if err := json.Unmarshal([]byte(img.Entries[0].Extra), &queues); err != nil {
		return fmt.Errorf("the queues in %q: %w", path, err)
	}
	c.RcvNxt = ts.GetInqSeq()
	c.SndUna = ts.GetOutqSeq() - ts.GetOutqLen()
	c.Unacked = queues.Out[:min(len(queues.Out), maxUnacked)]
	c.MSS, c.Window, c.WScale = ts.GetMssClamp(), ts.GetRcvWnd(), ts.GetRcvWscale()
	c.Timestamps, c.TSval = ts.GetOptMask()&tcpiOptTimestamps != 0, ts.GetTimestamp()
	return nil
}

// ipv4 turns an address as CRIU stores it (the in_addr's four bytes, read as a
// host-order integer) back into an address.
func ipv4(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// decodeImage reads the entries of one CRIU image, without payloads.
func decodeImage(path string, entryType proto.Message) ([]proto.Message, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read CRIU image: %w", err)
	}
	defer f.Close()
	img, err := crit.New(f, nil, "", false, true).Decode(entryType)
	if err != nil {
		return nil, fmt.Errorf("decode %q: %w", path, err)
	}
	out := make([]proto.Message, 0, len(img.Entries))
	for _, e := range img.Entries {
		out = append(out, e.Message)
	}
	return out, nil
}

package supervisor

import (
	"log/slog"
)

// How a dump treats the program's established TCP connections, which the status
// names. A connection is only ever restored open where the program has an address of
// its own (--net, see keepConnections): there a dump saves each one, and ftrun keeps
// the incoming TCP still meanwhile itself, queued in the program's namespace
// (gate.DumpLock), where CRIU's lock would run iptables-restore or set up a libnftables
// table while the program is frozen (45-65 ms) and drop the packets. Without --net
// every restore brings the connections back closed, so a dump does not save them
// (CRIU's --tcp-close): nothing is locked, nothing is dropped, and the program's peers
// do not notice the dump at all.
const (
	tcpDumpQueued = "saved; incoming TCP queued by ftrun during the dump"
	tcpDumpCRIU   = "saved; incoming TCP held by CRIU's lock during the dump"
	tcpDumpClosed = "not saved (no --net: a restore reopens none); nothing is locked"
)

// dumpClosesTCP is the pure rule for whether a dump leaves the connections out.
func dumpClosesTCP(hasNet bool) bool { return !hasNet }

// tcpHold is one dump's lock: taken in the pre-dump hook, let go when CRIU returns.
type tcpHold struct {
	lock, unlock func() error
}

// release lets the held TCP in again.
func (h *tcpHold) release(log *slog.Logger) {
	if h == nil {
		return
	}
	if err := h.unlock(); err != nil {
		log.Error("let in the program's incoming TCP after the dump", "err", err)
	}
}

// holdTCP is this dump's lock (nil: none of ftrun's), and says in the status how the
// dump treats the connections.
func (s *Supervisor) holdTCP() *tcpHold {
	switch {
	case dumpClosesTCP(s.cfg.Net != nil):
		s.st.TCPDump = tcpDumpClosed
		return nil
	case s.dumpLock != nil:
		s.st.TCPDump = tcpDumpQueued
		return &tcpHold{lock: s.dumpLock.Lock, unlock: s.dumpLock.Unlock}
	}
	s.st.TCPDump = tcpDumpCRIU
	return nil
}

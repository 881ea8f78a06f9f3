package supervisor

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

// tcpDumpText is what the status says of a dump's connections (pure).
func tcpDumpText(hasNet, ownLock bool) string {
	switch {
	case dumpClosesTCP(hasNet):
		return tcpDumpClosed
	case ownLock:
		return tcpDumpQueued
	}
	return tcpDumpCRIU
}

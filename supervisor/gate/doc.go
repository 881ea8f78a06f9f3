// Package gate holds the protected program's network output until the standby has
// acknowledged the checkpoint epoch that explains it: ftrun's Output Rule, as in Remus.
//
// # Why
//
// ftrun checkpoints the program every epoch and ships each checkpoint to a standby. If
// the primary dies, the standby resumes from the last epoch it holds. Anything the
// program said to the outside world after that epoch would then come from a state that
// no longer exists: a client could see a reply that the resumed program never sent, or
// an acknowledgement of data it does not have. So every packet the program sends is
// held until the epoch that covers it is committed on the standby, and only then let
// out. Incoming packets are never delayed: they change the program's state, and that
// state is what the next checkpoint captures.
//
// # Design
//
// The decisions live in a pure type, ledger, which performs no I/O and reads time only
// from an injected clock. It records each held packet's arrival (its kernel packet id,
// its length, the time), groups the packets held so far into the epoch named by each
// Cut, and computes for Release(epoch) the single highest packet id to pass in one
// batch verdict, together with the totals that remain held. It also keeps the counters
// behind Stats and decides Pressure. It is table-tested without a kernel.
//
// The effects live in NFQueue, the Linux backend. Inside the program's network
// namespace it binds an NFQUEUE queue, then installs
//
//	iptables  -w -I OUTPUT ! -o lo -j NFQUEUE --queue-num N
//	ip6tables -w -I OUTPUT ! -o lo -j NFQUEUE --queue-num N
//
// so every packet the program sends, except on loopback, waits in the kernel's queue.
// The kernel copies only the first 64 bytes of each packet to ftrun; the packet itself
// stays in the kernel until a verdict lets it out or drops it. One reader goroutine,
// owned by the NFQueue and stopped and awaited by Close, records arrivals in the
// ledger. Release and Discard send one NFQNL_MSG_VERDICT_BATCH message, which the
// kernel applies to every queued packet whose id is at most the given id; packet ids are
// sequential per queue, so the packets of all epochs up to the released one form a
// prefix of the queue. Ids wrap at 2^32; both the kernel and the ledger compare them
// with serial-number arithmetic, which is exact while fewer than 2^31 packets are held,
// far above any queue bound. Requests are acknowledged (NLM_F_ACK) and the reader routes
// each acknowledgement back to the waiting caller by sequence number, so Release
// reports the kernel's answer.
//
// The netlink protocol (nfnetlink_queue) is written by hand on
// github.com/mdlayher/netlink: the usual Go library for it, florianl/go-nfqueue, cannot
// be fetched in ftrun's build environment, and the part ftrun needs — bind, configure,
// read packet ids, batch verdicts — is small. wire.go holds the encoding, checked
// against the kernel's include/uapi/linux/netfilter/nfnetlink_queue.h.
//
// # Failing closed
//
// Held output must never escape because ftrun failed. The queue is bound without
// NFQA_CFG_F_FAIL_OPEN and the rule has no --queue-bypass, so:
//
//   - when the kernel queue is full (MaxPackets), new packets are dropped, not passed;
//   - when ftrun dies, the kernel destroys the queue with its socket and drops the
//     held packets, and later packets hitting the rule with no listener are dropped
//     too, until a new ftrun binds the queue (it first removes any rule a dead ftrun
//     left behind, then installs its own);
//   - Close unbinds first, which drops every held packet, and removes the rules only
//     after that. Output the program sends after Close is not gated: close the gate
//     only once the program is stopped or no longer protected.
//
// Dropped packets are not lost for good: TCP retransmits them, so a drop costs latency,
// not correctness. To avoid the drops, Pressure reports when held packets or bytes reach
// 3/4 of their bounds, and the supervisor then starts the next epoch early. If the
// reader falls behind and the socket's receive buffer overflows, the kernel drops
// packets too; the gap in packet ids shows how many (Stats.Lost), and each overflow is
// counted (Stats.Overruns).
//
// # Timing of Cut and Discard
//
// Cut assigns only the packets the reader has already recorded. A packet the program
// sent before the freeze but still unread in the socket goes to the next epoch: it is
// held one epoch longer, never released early. Discard, which must not let any output
// of a lost state escape, first makes a round trip to the kernel so that every packet
// already queued has been recorded, then drops them all.
package gate

package gate

import (
	"encoding/binary"
	"fmt"
	"os"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// DumpQueue is the queue number the dump lock holds incoming TCP in (the output gate
// uses 0).
const DumpQueue = 1

// DumpLock holds the TCP packets that reach the program's namespace while CRIU dumps
// its sockets, so that no socket changes under the dump, and lets them in right after.
//
// CRIU's own lock drops those packets (a peer then waits out a retransmission timeout,
// 200 ms at least) and runs iptables twice per connection inside the frozen window,
// which grows with the number of clients. The dump lock instead queues them, in one
// nftables rule added and flushed over netlink (no process started), so a client's
// request is delayed by the dump only. Its table and base chain are made once, when
// the namespace is new: the kernel drops every queued packet of a namespace whose
// netfilter hooks change, so hooks must not come and go while output is held.
type DumpLock struct {
	q      *NFQueue
	nft    *nftables.Conn
	tables []*nftables.Table // ip and ip6
	chains []*nftables.Chain

	mu     sync.Mutex
	locked bool
	epoch  uint64 // the ledger's cuts: one per unlock
}

// OpenDumpLock binds the dump lock's queue in cfg.NetNS (cfg.Queue is ignored) and
// makes its table and input chain there, with no rule in it yet.
func OpenDumpLock(cfg Config) (*DumpLock, error) {
	cfg.Queue = DumpQueue
	q, err := openQueue(cfg, false)
	if err != nil {
		return nil, err
	}
	l := &DumpLock{q: q}
	if err := l.setup(cfg.NetNS); err != nil {
		q.Close()
		return nil, fmt.Errorf("gate: dump lock: %w (nftables with its xtables compat layer is needed: modprobe nf_tables nft_compat xt_NFQUEUE)", err)
	}
	return l, nil
}

func (l *DumpLock) setup(netns string) error {
	var opts []nftables.ConnOption
	if netns != "" {
		f, err := os.Open(netns)
		if err != nil {
			return fmt.Errorf("open network namespace %s: %w", netns, err)
		}
		defer f.Close()
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(append(opts, nftables.AsLasting())...)
	if err != nil {
		return err
	}
	l.nft = c
	accept := nftables.ChainPolicyAccept
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		t := c.AddTable(&nftables.Table{Family: fam, Name: "ftrun-dumplock"})
		ch := c.AddChain(&nftables.Chain{Name: "input", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		c.FlushChain(ch)
		l.tables, l.chains = append(l.tables, t), append(l.chains, ch)
	}
	if err := c.Flush(); err != nil {
		c.CloseLasting()
		return fmt.Errorf("make tables ip/ip6 ftrun-dumplock: %w", err)
	}
	return nil
}

// nfqueueTarget is xtables' NFQUEUE target (struct xt_NFQ_info_v3: queue number,
// queues in total, flags; host byte order) with no flags, so never --queue-bypass.
// This kernel has no native nft queue expression, but it has xtables' target, which
// nftables runs through its compat layer as iptables-nft does.
func nfqueueTarget(queue uint16) *expr.Target {
	info := make(xt.Unknown, 6)
	binary.NativeEndian.PutUint16(info[0:], queue)
	binary.NativeEndian.PutUint16(info[2:], 1)
	return &expr.Target{Name: "NFQUEUE", Rev: 3, Info: &info}
}

// Lock starts holding incoming TCP.
func (l *DumpLock) Lock() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.locked {
		return nil
	}
	for i := range l.tables {
		l.nft.AddRule(&nftables.Rule{Table: l.tables[i], Chain: l.chains[i], Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			// No bypass: with the listener gone the kernel drops, never lets in.
			nfqueueTarget(DumpQueue),
		}})
	}
	if err := l.nft.Flush(); err != nil {
		return fmt.Errorf("gate: dump lock: add rule: %w", err)
	}
	l.locked = true
	return nil
}

// Unlock stops holding and lets in, in order, every packet held.
func (l *DumpLock) Unlock() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.locked {
		return nil
	}
	for _, ch := range l.chains {
		l.nft.FlushChain(ch)
	}
	if err := l.nft.Flush(); err != nil {
		return fmt.Errorf("gate: dump lock: remove rule: %w", err)
	}
	l.locked = false
	if err := l.q.barrier(); err != nil {
		return fmt.Errorf("gate: dump lock: wait for queued packets: %w", err)
	}
	l.epoch++
	l.q.Cut(l.epoch)
	return l.q.Release(l.epoch)
}

// Held reports the packets held now.
func (l *DumpLock) Held() int { return l.q.Stats().HeldPackets }

// Close removes the table (the namespace's hooks change: only when nothing else is
// held in it) and the queue.
func (l *DumpLock) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range l.tables {
		l.nft.DelTable(t)
	}
	err := l.nft.Flush()
	l.nft.CloseLasting()
	if qerr := l.q.Close(); qerr != nil && err == nil {
		err = qerr
	}
	return err
}

package checkpoint

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/checkpoint-restore/go-criu/v8/rpc"

	"github.com/ftrun/ftrun/internal/procfs"
)

// Measured on this kind of machine, frozen time of a redis dump with CRIU's two
// network locks: iptables adds ~45 ms per established TCP connection (one
// iptables-restore each to lock, and again to unlock) and nothing without
// connections; nftables adds ~65 ms whatever the count (libnftables setting up and
// removing its table). So iptables is the cheaper lock up to one connection.
const nftablesFrom = 2

// cheaperLock is the pure rule for a dump's network lock, given the program's
// established TCP connections and whether this CRIU has the nftables lock.
func cheaperLock(established int, nft bool) rpc.CriuNetworkLockMethod {
	if nft && established >= nftablesFrom {
		return rpc.CriuNetworkLockMethod_NFTABLES
	}
	return rpc.CriuNetworkLockMethod_IPTABLES
}

// establishedTCP counts the established TCP connections held by the process tree
// rooted at pid, as seen from its network namespace, up to limit: a dump asks only
// whether there are at least nftablesFrom, so a server with thousands of clients
// costs a few readlinks, not thousands, before every dump.
func establishedTCP(pid, limit int) (int, error) {
	est := map[uint64]bool{}
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			if table == "tcp" {
				return 0, err
			}
			continue // no IPv6
		}
		establishedInodes(f, est)
		f.Close()
	}
	if len(est) == 0 {
		return 0, nil
	}
	n := 0
	for _, p := range procfs.Tree(pid) {
		err := procfs.Sockets(p, func(ino uint64) bool {
			if est[ino] {
				delete(est, ino) // a socket shared by several fds counts once
				n++
			}
			return n < limit
		})
		if err != nil && p == pid {
			return 0, err
		} // else a child that just exited
		if n >= limit {
			return n, nil
		}
	}
	return n, nil
}

// establishedInodes adds to est the socket inodes of the lines of a /proc/net/tcp
// table in state ESTABLISHED (01).
func establishedInodes(f *os.File, est map[uint64]bool) {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 9 && fs[3] == "01" {
			if ino, err := strconv.ParseUint(fs[9], 10, 64); err == nil {
				est[ino] = true
			}
		}
	}
}

package standby

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/transport/auth"
)

// Quota bounds what one certificate (by its name: a host keeps its quota across a
// certificate rotation) may hold on this standby, so that one primary, or one stolen
// key, cannot fill the disk or the connection table for the others. Zero fields are
// unlimited.
type Quota struct {
	// Services is how many services one certificate may hold here.
	Services int
	// Bytes bounds the disk one certificate's services take: their committed sets
	// and the epochs on their way in. An epoch that would pass it is refused with
	// NackDiskFull (for that primary alone; the disk keeps room for the others).
	Bytes int64
	// Conns bounds one certificate's connections past their Hello.
	Conns int
}

// ErrQuota means a certificate asked for more than its quota.
var ErrQuota = errors.New("quota exceeded")

// ownerFile in a service's directory names the certificate that holds it, so that
// quotas count it after a restart. The newest certificate whose Hello names the
// service holds it (a service moved to another primary host moves with it).
const ownerFile = "owner"

// quotas keeps the accounts: who holds which service, what each service takes on
// disk (measured when an epoch begins and ends) and in flight (counted as it
// arrives).
type quotas struct {
	root string
	q    Quota

	mu      sync.Mutex
	owner   map[string]string // service -> certificate name
	used    map[string]int64  // service -> bytes of committed sets
	pending map[string]int64  // service -> bytes of the epoch on its way in
	conns   map[string]int    // certificate name -> connections
}

func newQuotas(s *Store, q Quota) *quotas {
	qs := &quotas{root: s.Root(), q: q, owner: map[string]string{}, used: map[string]int64{}, pending: map[string]int64{}, conns: map[string]int{}}
	for _, svc := range s.Services() {
		if b, err := os.ReadFile(filepath.Join(qs.root, svc, ownerFile)); err == nil {
			qs.owner[svc] = strings.TrimSpace(string(b))
		}
		qs.used[svc] = diskUsage(filepath.Join(qs.root, svc))
	}
	return qs
}

// claim gives service to id's certificate for one connection, within its quotas of
// services and connections; release undoes the connection's part.
func (qs *quotas) claim(id auth.Identity, service string) (release func(), err error) {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	if qs.q.Conns > 0 && qs.conns[id.Name] >= qs.q.Conns {
		return nil, fmt.Errorf("%w: certificate %q has %d connections here (quota %d, --quota-conns)", ErrQuota, id.Name, qs.conns[id.Name], qs.q.Conns)
	}
	if qs.owner[service] != id.Name {
		n := 0
		for _, o := range qs.owner {
			if o == id.Name {
				n++
			}
		}
		if qs.q.Services > 0 && n >= qs.q.Services {
			return nil, fmt.Errorf("%w: certificate %q holds %d services here (quota %d, --quota-services); service %q refused", ErrQuota, id.Name, n, qs.q.Services, service)
		}
		dir := filepath.Join(qs.root, service)
		if err := mkdir(dir); err != nil {
			return nil, fmt.Errorf("standby: service %q: %w", service, checkpoint.MarkNoSpace(err))
		}
		if err := writeOwner(dir, id.Name); err != nil {
			return nil, fmt.Errorf("standby: service %q: %w", service, checkpoint.MarkNoSpace(err))
		}
		qs.owner[service] = id.Name
	}
	qs.conns[id.Name]++
	return func() {
		qs.mu.Lock()
		defer qs.mu.Unlock()
		if qs.conns[id.Name]--; qs.conns[id.Name] <= 0 {
			delete(qs.conns, id.Name)
		}
	}, nil
}

func writeOwner(dir, name string) error {
	tmp := filepath.Join(dir, ownerFile+".tmp")
	if err := os.WriteFile(tmp, []byte(name+"\n"), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, ownerFile))
}

// begin measures service's committed sets anew and starts counting an epoch.
func (qs *quotas) begin(service string) {
	used := diskUsage(filepath.Join(qs.root, service))
	qs.mu.Lock()
	defer qs.mu.Unlock()
	qs.used[service], qs.pending[service] = used, 0
}

// end stops counting service's epoch in flight (committed, its bytes are measured at
// the next begin).
func (qs *quotas) end(service string) {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	qs.pending[service] = 0
}

// charge counts n more bytes of service's epoch in flight, refusing them when its
// owner's services would then take more than the quota.
func (qs *quotas) charge(service string, n int64) error {
	qs.mu.Lock()
	defer qs.mu.Unlock()
	qs.pending[service] += n
	if qs.q.Bytes <= 0 {
		return nil
	}
	owner := qs.owner[service]
	var total int64
	for svc, o := range qs.owner {
		if o == owner {
			total += qs.used[svc] + qs.pending[svc]
		}
	}
	if total > qs.q.Bytes {
		return fmt.Errorf("%w: certificate %q would hold %d bytes here (quota %d, --quota-bytes)", ErrQuota, owner, total, qs.q.Bytes)
	}
	return nil
}

// diskUsage is the bytes the files under dir take, each inode once (the sets of a
// service share unchanged files as hard links).
func diskUsage(dir string) int64 {
	seen := map[uint64]bool{}
	var n int64
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			if seen[st.Ino] {
				return nil
			}
			seen[st.Ino] = true
			n += st.Blocks * 512
			return nil
		}
		n += fi.Size()
		return nil
	})
	return n
}

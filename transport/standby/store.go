package standby

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/checkpoint/delta"
	"github.com/ftrun/ftrun/transport/svcname"
)

// keep is how many committed epochs a service keeps: the newest (restored on failover,
// base of the next delta) and one before it, which the next delta epoch is written
// over (see incoming.retireOlder).
const keep = 2

// epochsDir is the subdirectory of a service that holds its checkpoint.Store.
const epochsDir = "epochs"

// Store holds the committed epochs of every service this standby protects, one
// directory per service under a root.
type Store struct {
	root string
	// NoSync skips fsync (tests that measure without it). An epoch is then acked
	// before it is durable, which breaks the Output Rule on power loss.
	NoSync bool

	// build, when set, replaces how a received epoch is turned into a committed set
	// (see incoming.build); the benchmarks run the earlier way through it.
	build func(*incoming, *checkpoint.Manifest, map[string]bool, []byte) *epochError

	mu       sync.Mutex
	services map[string]*service
}

// service is one service's epochs. mu serialises commits, so two connections claiming
// the same service cannot interleave a base check with another's commit.
type service struct {
	name  string
	store *checkpoint.Store

	mu        sync.Mutex
	committed uint64
	// verified is the newest epoch whose files were checked against its manifest and
	// made durable by this process; a set reloaded from disk is checked (and fsynced)
	// once before it is a base.
	verified uint64
	// chain is what the newest committed epoch changed of its base, if it was a
	// delta committed by this process (see incoming.retireOlder).
	chain *chain
	build func(*incoming, *checkpoint.Manifest, map[string]bool, []byte) *epochError
}

// chain links a committed delta epoch to its base: epoch was built from base;
// copies are the copy runs of its page deltas, per pagemap, and blocks the byte
// ranges its file deltas wrote, per file.
type chain struct {
	epoch, base uint64
	copies      map[string][]delta.CopyRun
	blocks      map[string][]delta.Span
}

// OpenStore opens (creating it 0700) the root and reloads every service's committed
// epochs. Unfinished epochs left by a crash are removed, never used.
func OpenStore(root string) (*Store, error) {
	if err := mkdir(root); err != nil {
		return nil, fmt.Errorf("standby: store root: %w", err)
	}
	s := &Store{root: root, services: map[string]*service{}}
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("standby: read store root: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() || svcname.Check(e.Name()) != nil {
			continue
		}
		if _, err := s.service(e.Name()); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Root is the store's directory.
func (s *Store) Root() string { return s.root }

// mkdir creates dir 0700 whatever the umask says; an existing one is left alone.
func mkdir(dir string) error {
	err := os.Mkdir(dir, 0o700)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// service returns the state of name, opening its directory on first use.
func (s *Store) service(name string) (*service, error) {
	if err := svcname.Check(name); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if svc := s.services[name]; svc != nil {
		return svc, nil
	}
	dir := filepath.Join(s.root, name)
	if err := mkdir(dir); err != nil {
		return nil, fmt.Errorf("standby: service %q: %w", name, checkpoint.MarkNoSpace(err))
	}
	cs, err := checkpoint.OpenStore(filepath.Join(dir, epochsDir))
	if err != nil {
		return nil, fmt.Errorf("standby: service %q: %w", name, err)
	}
	cs.NoSync = s.NoSync
	latest, err := cs.Latest()
	if err != nil {
		return nil, fmt.Errorf("standby: service %q: %w", name, err)
	}
	svc := &service{name: name, store: cs, committed: latest, build: s.build}
	s.services[name] = svc
	return svc, nil
}

// LastCommitted is the newest epoch of service committed here, 0 if none.
func (s *Store) LastCommitted(service string) uint64 {
	s.mu.Lock()
	svc := s.services[service]
	s.mu.Unlock()
	if svc == nil {
		return 0
	}
	svc.mu.Lock()
	defer svc.mu.Unlock()
	return svc.committed
}

// Sets lists the committed image sets of service, newest first.
func (s *Store) Sets(service string) ([]checkpoint.Set, error) {
	svc, err := s.service(service)
	if err != nil {
		return nil, err
	}
	return svc.store.List()
}

// Services lists the services that have a directory here, sorted.
func (s *Store) Services() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.services))
	for n := range s.services {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

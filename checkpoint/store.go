package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// tmpPrefix marks image sets being written; they are never restored from and are
// removed when a store is opened.
const tmpPrefix = ".tmp-"

// ErrNoSpace is returned when an image set could not be written for lack of disk space.
var ErrNoSpace = errors.New("no space left for the image set")

// Store keeps committed image sets in one directory, one subdirectory per epoch.
type Store struct {
	dir string
	// NoSync skips fsync; only for tests and benchmarks that measure without it.
	NoSync bool
}

// Set names one committed image set.
type Set struct {
	Epoch uint64
	Dir   string
}

// OpenStore creates dir (0700) if needed and removes image sets that were never
// committed (a crash while writing leaves them behind).
func OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create checkpoint dir %q: %w", dir, err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint dir %q: %w", dir, err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("remove unfinished image set %q: %w", e.Name(), err)
			}
		}
	}
	return &Store{dir: dir}, nil
}

// Dir is the directory the store keeps its sets in.
func (s *Store) Dir() string { return s.dir }

func epochName(epoch uint64) string { return fmt.Sprintf("%016d", epoch) }

// Pending is an image set being written; it becomes visible only through Commit.
type Pending struct {
	Dir   string
	Epoch uint64
	store *Store
}

// Begin makes the temporary directory CRIU writes epoch's images into.
func (s *Store) Begin(epoch uint64) (*Pending, error) {
	final := filepath.Join(s.dir, epochName(epoch))
	if _, err := os.Stat(final); err == nil {
		return nil, fmt.Errorf("image set for epoch %d already exists in %q", epoch, s.dir)
	}
	dir, err := os.MkdirTemp(s.dir, tmpPrefix+epochName(epoch)+"-")
	if err != nil {
		return nil, wrapNoSpace(fmt.Errorf("create image dir: %w", err))
	}
	return &Pending{Dir: dir, Epoch: epoch, store: s}, nil
}

// Abort removes a pending set; earlier sets are untouched.
func (p *Pending) Abort() error {
	return os.RemoveAll(p.Dir)
}

// Commit checksums and fsyncs every file, writes the manifest, and renames the set into
// place. On any error the pending directory is removed and no committed set changes.
func (p *Pending) Commit(m *Manifest) (Set, error) {
	set, err := p.commit(m)
	if err != nil {
		_ = p.Abort()
		return Set{}, wrapNoSpace(err)
	}
	return set, nil
}

func (p *Pending) commit(m *Manifest) (Set, error) {
	names, err := listFiles(p.Dir)
	if err != nil {
		return Set{}, fmt.Errorf("list images: %w", err)
	}
	durable := !p.store.NoSync
	sums, err := sumFiles(p.Dir, names, durable)
	if err != nil {
		return Set{}, err
	}
	m.Version = manifestVersion
	m.Epoch = p.Epoch
	m.Files = sums
	if err := writeManifest(p.Dir, m); err != nil {
		return Set{}, err
	}
	if durable {
		if err := syncDir(p.Dir); err != nil {
			return Set{}, err
		}
	}
	final := filepath.Join(p.store.dir, epochName(p.Epoch))
	if err := os.Rename(p.Dir, final); err != nil {
		return Set{}, fmt.Errorf("commit image set: %w", err)
	}
	if durable {
		if err := syncDir(p.store.dir); err != nil {
			// The rename happened; the set is complete and verifiable, only its durability
			// across a power loss is in doubt. Say so rather than pretend it failed.
			return Set{Epoch: p.Epoch, Dir: final}, nil
		}
	}
	return Set{Epoch: p.Epoch, Dir: final}, nil
}

// sumFiles checksums (and fsyncs) files on two workers: one large pages image and many
// small ones are typical, and fsync latency overlaps well.
func sumFiles(dir string, names []string, durable bool) ([]FileSum, error) {
	sums := make([]FileSum, len(names))
	errs := make([]error, len(names))
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				sums[i], errs[i] = sumFile(filepath.Join(dir, names[i]), durable)
			}
		}()
	}
	for i := range names {
		next <- i
	}
	close(next)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return sums, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync dir %q: %w", dir, err)
	}
	return nil
}

func wrapNoSpace(err error) error {
	if err != nil && errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrNoSpace) {
		return fmt.Errorf("%w: %w", ErrNoSpace, err)
	}
	return err
}

// List returns the committed sets, newest first. It does not verify them.
func (s *Store) List() ([]Set, error) {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, fmt.Errorf("read checkpoint dir %q: %w", s.dir, err)
	}
	var sets []Set
	for _, e := range ents {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		epoch, err := strconv.ParseUint(e.Name(), 10, 64)
		if err != nil {
			continue
		}
		sets = append(sets, Set{Epoch: epoch, Dir: filepath.Join(s.dir, e.Name())})
	}
	sort.Slice(sets, func(i, j int) bool { return sets[i].Epoch > sets[j].Epoch })
	return sets, nil
}

// Latest returns the newest committed epoch, or 0 when there is none.
func (s *Store) Latest() (uint64, error) {
	sets, err := s.List()
	if err != nil || len(sets) == 0 {
		return 0, err
	}
	return sets[0].Epoch, nil
}

// Remove deletes one committed set.
func (s *Store) Remove(set Set) error {
	if filepath.Dir(set.Dir) != filepath.Clean(s.dir) {
		return fmt.Errorf("refusing to remove %q: not in %q", set.Dir, s.dir)
	}
	return os.RemoveAll(set.Dir)
}

// Prune removes all but the newest keep sets and returns what it removed.
func (s *Store) Prune(keep int) ([]Set, error) {
	sets, err := s.List()
	if err != nil {
		return nil, err
	}
	drop := Retain(sets, keep)
	for _, set := range drop {
		if err := s.Remove(set); err != nil {
			return nil, fmt.Errorf("prune epoch %d: %w", set.Epoch, err)
		}
	}
	return drop, nil
}

// Retain decides which sets (newest first) to drop so that keep remain. keep < 1 is
// treated as 1: the newest committed set is never dropped.
func Retain(newestFirst []Set, keep int) []Set {
	if keep < 1 {
		keep = 1
	}
	if len(newestFirst) <= keep {
		return nil
	}
	return append([]Set(nil), newestFirst[keep:]...)
}

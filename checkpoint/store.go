package checkpoint

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
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
	// NoSync makes Sync a no-op; for tests and benchmarks that measure without it.
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
			// On a read-only filesystem it stays: it is never restored from, and the
			// next start on a writable one removes it.
			if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil && !errors.Is(err, syscall.EROFS) {
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
		return nil, MarkNoSpace(fmt.Errorf("create image dir: %w", err))
	}
	return &Pending{Dir: dir, Epoch: epoch, store: s}, nil
}

// Abort removes a pending set; earlier sets are untouched.
func (p *Pending) Abort() error {
	return os.RemoveAll(p.Dir)
}

// Commit checksums every file, writes the manifest, and renames the set into place; it
// does not wait for the disk (see Sync). On any error the pending directory is removed
// and no committed set changes.
//
// Why rename before fsync: the epoch's critical path then costs what CRIU costs plus a
// checksum, and safety does not depend on the order. Every restore verifies a set
// against its manifest first, so a set torn by a power loss before its Sync is refused
// and the ladder takes the one before, which Sync made durable; pruning never removes
// the newest durable set.
func (p *Pending) Commit(m *Manifest) (Set, error) {
	set, err := p.commit(m)
	if err != nil {
		_ = p.Abort()
		return Set{}, MarkNoSpace(err)
	}
	return set, nil
}

func (p *Pending) commit(m *Manifest) (Set, error) {
	names, err := listFiles(p.Dir)
	if err != nil {
		return Set{}, fmt.Errorf("list images: %w", err)
	}
	m.Files = make([]FileSum, len(names))
	for i, name := range names {
		// CRIU writes its images 0644 (umask permitting); they hold the program's
		// memory, so they are owner-only whatever the directory's mode.
		if err := os.Chmod(filepath.Join(p.Dir, name), 0o600); err != nil {
			return Set{}, fmt.Errorf("image %q: %w", name, err)
		}
		if m.Files[i], err = sumFile(filepath.Join(p.Dir, name)); err != nil {
			return Set{}, err
		}
	}
	m.Version = manifestVersion
	m.Epoch = p.Epoch
	if err := writeManifest(p.Dir, m); err != nil {
		return Set{}, err
	}
	final := filepath.Join(p.store.dir, epochName(p.Epoch))
	if err := os.Rename(p.Dir, final); err != nil {
		return Set{}, fmt.Errorf("commit image set: %w", err)
	}
	return Set{Epoch: p.Epoch, Dir: final}, nil
}

// CommitDurable commits a pending set whose manifest is already in its directory and
// was checked against its files (m is that manifest as VerifyDirKnown returned it):
// nothing is checksummed again. Unlike Commit it returns only once the set is durable,
// and it makes durable only what is new: the files named in written (those written
// for this set; every other file must be a hard link of a file already on stable
// storage, which needs nothing but the directory entry), the manifest and the
// directory are fsynced before the rename, the store's directory after it. So a crash
// at any point leaves either no set of this epoch or a complete one. On any error the
// set is removed, pending or committed, and no other set changes.
func (p *Pending) CommitDurable(m *Manifest, written []string) (Set, error) {
	return p.commitSet(m, written, true)
}

// CommitCached commits the set as CommitDurable does, but leaves it to the kernel to
// write out: it is complete and readable at once, and survives this process, but a
// power loss before the kernel writes it back may tear it (Verify then refuses it).
// It serves a standby that acks from memory.
func (p *Pending) CommitCached(m *Manifest) (Set, error) {
	return p.commitSet(m, nil, false)
}

func (p *Pending) commitSet(m *Manifest, written []string, durable bool) (Set, error) {
	set, err := p.place(m, written, durable && !p.store.NoSync)
	if err != nil {
		_ = p.Abort()
		return Set{}, MarkNoSpace(err)
	}
	return set, nil
}

// place renames the pending set into the store, fsyncing what is new first (and the
// store's directory after) when durable.
func (p *Pending) place(m *Manifest, written []string, durable bool) (Set, error) {
	if m.Epoch != p.Epoch {
		return Set{}, fmt.Errorf("%w: manifest is for epoch %d, not %d", ErrCorrupt, m.Epoch, p.Epoch)
	}
	if durable {
		for _, name := range append(written, ManifestName) {
			if name != filepath.Base(name) {
				return Set{}, fmt.Errorf("sync %q: not a file of the set", name)
			}
			if err := syncFile(filepath.Join(p.Dir, name)); err != nil {
				return Set{}, err
			}
		}
		if err := syncDir(p.Dir); err != nil {
			return Set{}, err
		}
	}
	final := filepath.Join(p.store.dir, epochName(p.Epoch))
	if err := os.Rename(p.Dir, final); err != nil {
		return Set{}, fmt.Errorf("commit image set: %w", err)
	}
	set := Set{Epoch: p.Epoch, Dir: final}
	if durable {
		if err := syncDir(p.store.dir); err != nil {
			// Its name may not survive a power loss: not durable, so not committed.
			_ = os.RemoveAll(final)
			return Set{}, err
		}
	}
	return set, nil
}

// Sync makes a committed set durable: its files, its directory and its name. Until it
// returns, a power loss may tear the set (which Verify then refuses).
func (s *Store) Sync(set Set) error {
	if s.NoSync {
		return nil
	}
	names, err := listFiles(set.Dir)
	if err != nil {
		return MarkNoSpace(fmt.Errorf("list %q: %w", set.Dir, err))
	}
	for _, name := range append(names, ManifestName) {
		if err := syncFile(filepath.Join(set.Dir, name)); err != nil {
			return MarkNoSpace(err)
		}
	}
	if err := syncDir(set.Dir); err != nil {
		return err
	}
	return syncDir(s.dir)
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fsync(f); err != nil {
		return fmt.Errorf("fsync dir %q: %w", dir, err)
	}
	return nil
}

// MarkNoSpace marks a lack of disk space (ENOSPC, or EDQUOT, a quota) with ErrNoSpace,
// so one errors.Is answers "is the disk full" whichever layer failed.
func MarkNoSpace(err error) error {
	if err == nil || errors.Is(err, ErrNoSpace) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
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

// Retire takes a committed set out of the store ahead of its removal, so that its
// files may be reused: it renames the set's directory to a name that List ignores and
// OpenStore removes and returns the new directory, which the caller removes when done
// with it. With durable it makes the rename durable (unless NoSync), so that a crash
// at any point leaves the set either committed and intact or gone; without, a crash
// may bring the set back with what was written over, which its manifest refuses.
func (s *Store) Retire(set Set, durable bool) (string, error) {
	if filepath.Dir(set.Dir) != filepath.Clean(s.dir) {
		return "", fmt.Errorf("refusing to retire %q: not in %q", set.Dir, s.dir)
	}
	dir := filepath.Join(s.dir, tmpPrefix+"retired-"+epochName(set.Epoch))
	if err := os.RemoveAll(dir); err != nil {
		return "", err
	}
	if err := os.Rename(set.Dir, dir); err != nil {
		return "", fmt.Errorf("retire epoch %d: %w", set.Epoch, err)
	}
	if durable && !s.NoSync {
		if err := syncDir(s.dir); err != nil {
			return dir, err
		}
	}
	return dir, nil
}

// Prune removes all but the newest keep sets, never the newest durable one (epoch
// durable, 0 if none is known), and returns what it removed.
func (s *Store) Prune(keep int, durable uint64, pinned ...uint64) ([]Set, error) {
	sets, err := s.List()
	if err != nil {
		return nil, err
	}
	drop := Retain(sets, keep, durable, pinned...)
	for _, set := range drop {
		if err := s.Remove(set); err != nil {
			return nil, fmt.Errorf("prune epoch %d: %w", set.Epoch, err)
		}
	}
	return drop, nil
}

// Retain decides which sets (newest first) to drop so that keep remain. keep < 1 is
// treated as 1: the newest committed set is never dropped, and neither is the set of
// epoch durable, the newest known to be on stable storage, nor a pinned one (the
// standby's newest, which the next page delta is computed against).
func Retain(newestFirst []Set, keep int, durable uint64, pinned ...uint64) []Set {
	if keep < 1 {
		keep = 1
	}
	var drop []Set
	for i, set := range newestFirst {
		if i >= keep && set.Epoch != durable && !slices.Contains(pinned, set.Epoch) {
			drop = append(drop, set)
		}
	}
	return drop
}

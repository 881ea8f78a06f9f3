package supervisor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/fsnotify/fsnotify"

	"github.com/ftrun/ftrun/checkpoint"
)

// syncedFiles keeps the program's state files (--sync) consistent with its checkpoints:
// they are captured while CRIU holds the program frozen, so the files of epoch k match
// its memory at epoch k, and every restore puts them back first. fsnotify says what
// changed since the last epoch; unchanged files are hard-linked from the previous set,
// and so also do not travel to a standby (which skips files whose checksum it has).
type syncedFiles struct {
	roots   []string
	watcher *fsnotify.Watcher

	mu    sync.Mutex
	dirty map[string]bool
	all   bool // everything counts as changed (start, restore, lost events)
}

func newSyncedFiles(roots []string) (*syncedFiles, error) {
	f := &syncedFiles{dirty: map[string]bool{}, all: true}
	for _, r := range roots {
		abs, err := filepath.Abs(r)
		if err != nil {
			return nil, err
		}
		f.roots = append(f.roots, abs)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch --sync paths: %w", err)
	}
	f.watcher = w
	for _, r := range f.roots {
		if err := f.watch(r); err != nil {
			w.Close()
			return nil, err
		}
	}
	return f, nil
}

// watch adds root (a directory and its subdirectories, or a file's directory).
func (f *syncedFiles) watch(root string) error {
	fi, err := os.Stat(root)
	if errors.Is(err, fs.ErrNotExist) {
		// Not there yet: watch the directory it will appear in.
		return f.watcher.Add(filepath.Dir(root))
	}
	if err != nil {
		return fmt.Errorf("--sync %q: %w", root, err)
	}
	if !fi.IsDir() {
		return f.watcher.Add(filepath.Dir(root))
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			err = f.watcher.Add(p)
		}
		return err
	})
}

// run marks what changes until ctx ends.
func (f *syncedFiles) run(ctx context.Context) {
	defer f.watcher.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-f.watcher.Events:
			if !ok {
				return
			}
			f.mu.Lock()
			f.dirty[ev.Name] = true
			f.mu.Unlock()
			if ev.Has(fsnotify.Create) {
				if fi, err := os.Stat(ev.Name); err == nil && fi.IsDir() && checkpoint.UnderAny(ev.Name, f.roots) {
					_ = f.watch(ev.Name)
				}
			}
		case _, ok := <-f.watcher.Errors:
			if !ok {
				return
			}
			f.mu.Lock()
			f.all = true // events were lost: trust nothing
			f.mu.Unlock()
		}
	}
}

// files lists the regular files under the roots now, but for crash-time copies set
// aside by a recovery (see setAsideSynced), which are ftrun's, not the program's.
func (f *syncedFiles) files() ([]string, error) {
	var out []string
	for _, r := range f.roots {
		err := filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			if d.Type().IsRegular() && !strings.HasSuffix(p, crashSuffix) {
				out = append(out, p)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("--sync %q: %w", r, err)
		}
	}
	return out, nil
}

func syncName(path string) string {
	h := sha256.Sum256([]byte(path))
	return "sync-" + hex.EncodeToString(h[:8]) + ".data"
}

// capture copies the state files into the image set being written (dir); prev and
// prevDir are the previous committed set, whose unchanged files are linked instead.
// It runs while the program is frozen.
func (f *syncedFiles) capture(dir string, prev *checkpoint.Manifest, prevDir string) ([]checkpoint.SyncedFile, error) {
	f.mu.Lock()
	dirty, all := f.dirty, f.all
	f.dirty, f.all = map[string]bool{}, false
	f.mu.Unlock()
	old := map[string]checkpoint.SyncedFile{}
	if prev != nil && !all {
		for _, s := range prev.Synced {
			old[s.Path] = s
		}
	}
	paths, err := f.files()
	if err != nil {
		f.markAll()
		return nil, err
	}
	var out []checkpoint.SyncedFile
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			continue // gone since the walk
		}
		s := checkpoint.SyncedFile{Name: syncName(p), Path: p, Mode: uint32(fi.Mode().Perm()), Size: fi.Size(), ModTime: fi.ModTime()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			s.UID, s.GID, s.Owned = st.Uid, st.Gid, true
		}
		o, had := old[p]
		same := had && !dirty[p] && o.Size == s.Size && o.ModTime.Equal(s.ModTime)
		if !same || os.Link(filepath.Join(prevDir, o.Name), filepath.Join(dir, s.Name)) != nil {
			if err := copyFile(p, filepath.Join(dir, s.Name), 0o600); err != nil {
				f.markAll()
				return nil, fmt.Errorf("capture %q: %w", p, err)
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func (f *syncedFiles) markAll() {
	f.mu.Lock()
	f.all = true
	f.mu.Unlock()
}

// restoreSynced puts the state files of a set back where the program expects them,
// before CRIU restores the program that has them open, and removes the files under
// roots that the set does not have (they came after its epoch: a WAL segment, a
// journal): memory and files then agree. Every path must lie beneath one of roots
// (the --sync roots declared at start) and none is reached through a symlink (see
// putBack); crash-time copies set aside for a fresh start (crashSuffix) stay.
//
// Each file is written in place, keeping its inode. The restored memory remembers it:
// SQLite keeps the (device, inode) of its open database and, when the path names
// another inode, takes the file for moved and refuses every write ("attempt to write
// a readonly database"); postgres and others keep ownership and hard links that a
// new file would not have. A file that is gone is created, owned as it was.
func restoreSynced(setDir string, roots []string, files []checkpoint.SyncedFile) error {
	if err := putBack(setDir, files, roots); err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, s := range files {
		keep[s.Path] = true
	}
	for _, r := range roots {
		// WalkDir never follows a link: a linked directory is an entry, not a subtree.
		err := filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			if d.Type().IsRegular() && !keep[p] && !strings.HasSuffix(p, crashSuffix) {
				return os.Remove(p)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("--sync %q: remove what came after the checkpoint: %w", r, err)
		}
	}
	return nil
}

func copyFile(from, to string, mode fs.FileMode) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(mode); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

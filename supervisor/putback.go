package supervisor

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/checkpoint"
)

// Putting synced files back runs as root, into directories the program (often
// unprivileged) can write: a symlink it planted there since the checkpoint must not
// send a root-owned write elsewhere. So every path is walked one component at a
// time with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) from the --sync root the
// primary declared at start, directories are made with mkdirat, and the file is
// opened there with O_NOFOLLOW and written in place (its inode kept, see
// restoreSynced): nothing is ever resolved through a link, and a link where a file or directory should be
// fails the restore with its path named. The standard library has no such walk
// (os.Root follows links that stay inside the root), hence x/sys/unix.

// beneath resolves one name below dirfd, refusing links and "..".
const beneath = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS

// errLink marks a synced path that a symlink stands in the way of.
var errLink = errors.New("is a symbolic link (planted since the checkpoint?): refusing to follow it; remove it to restore")

// putBack writes the synced files of the set in setDir back to their paths, each
// of which must lie beneath one of roots.
func putBack(setDir string, files []checkpoint.SyncedFile, roots []string) error {
	for _, s := range files {
		if err := putBackOne(setDir, s, roots); err != nil {
			return fmt.Errorf("restore synced file %q: %w", s.Path, err)
		}
	}
	return nil
}

func putBackOne(setDir string, s checkpoint.SyncedFile, roots []string) error {
	if s.Name == "" || filepath.Base(s.Name) != s.Name || s.Name == "." || s.Name == ".." {
		return fmt.Errorf("the manifest names its copy %q, which is not a file of the set", s.Name)
	}
	anchor, rel, err := within(s.Path, roots)
	if err != nil {
		return err
	}
	src, err := os.Open(filepath.Join(setDir, s.Name))
	if err != nil {
		return err
	}
	defer src.Close()
	dirs := strings.Split(strings.TrimPrefix(anchor, "/"), "/")
	if anchor == "/" {
		dirs = nil
	}
	parts := strings.Split(rel, "/")
	dirs = append(dirs, parts[:len(parts)-1]...)
	dir, err := openDirs(dirs)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	return writeAt(dir, parts[len(parts)-1], src, s)
}

// within splits path into the directory of the --sync root it lies beneath and the
// rest; a file root's directory is its parent. A path that is not clean and
// absolute, or lies outside every root, is refused.
func within(path string, roots []string) (anchor, rel string, err error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return "", "", fmt.Errorf("%q is not a clean absolute path", path)
	}
	for _, r := range roots {
		r = filepath.Clean(r)
		if !filepath.IsAbs(r) {
			continue
		}
		if path == r {
			return filepath.Dir(r), filepath.Base(r), nil
		}
		if rest, ok := strings.CutPrefix(path, strings.TrimSuffix(r, "/")+"/"); ok && rest != "" {
			return r, rest, nil
		}
	}
	return "", "", fmt.Errorf("it lies outside the --sync roots %q the primary declared", roots)
}

// openDirs opens the directory /dirs[0]/dirs[1]/..., making what is missing (0755,
// as a program's state directories usually are), one component at a time, never
// through a link.
func openDirs(dirs []string) (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	at := "/"
	for _, d := range dirs {
		if d == "" || d == "." || d == ".." {
			unix.Close(fd)
			return -1, fmt.Errorf("bad path component %q under %q", d, at)
		}
		next := filepath.Join(at, d)
		if err := unix.Mkdirat(fd, d, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			unix.Close(fd)
			return -1, fmt.Errorf("make %q: %w", next, err)
		}
		nfd, err := unix.Openat2(fd, d, &unix.OpenHow{Flags: unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC, Resolve: beneath})
		unix.Close(fd)
		if err != nil {
			return -1, linkErr(next, err)
		}
		fd, at = nfd, next
	}
	return fd, nil
}

// linkErr names a symlink (or a file where a directory should be) in the way.
func linkErr(path string, err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.EXDEV) {
		return fmt.Errorf("%q %w", path, errLink)
	}
	if errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%q is not a directory", path)
	}
	return fmt.Errorf("open %q: %w", path, err)
}

// writeAt writes src over name in dir in place, through the file's own inode (see
// restoreSynced), with s's size, mode and times; a file that is gone is created as s
// recorded it, owned as it was.
func writeAt(dir int, name string, src *os.File, s checkpoint.SyncedFile) error {
	mode := uint32(fs.FileMode(s.Mode).Perm())
	fd, err := unix.Openat2(dir, name, &unix.OpenHow{Flags: unix.O_WRONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC, Resolve: beneath})
	created := false
	if errors.Is(err, unix.ENOENT) {
		fd, err = unix.Openat2(dir, name, &unix.OpenHow{Flags: unix.O_CREAT | unix.O_EXCL | unix.O_WRONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC,
			Mode: uint64(mode), Resolve: beneath})
		created = true
	}
	if err != nil {
		return linkErr(s.Path, err)
	}
	out := os.NewFile(uintptr(fd), s.Path)
	err = fillFile(out, src, s, created)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	ts := []unix.Timespec{unix.NsecToTimespec(s.ModTime.UnixNano()), unix.NsecToTimespec(s.ModTime.UnixNano())}
	if s.ModTime.IsZero() {
		now := unix.NsecToTimespec(time.Now().UnixNano())
		ts = []unix.Timespec{now, now}
	}
	return unix.UtimesNanoAt(dir, name, ts, unix.AT_SYMLINK_NOFOLLOW)
}

// fillFile makes out, opened on the file's own inode, hold src with s's size and mode.
func fillFile(out, src *os.File, s checkpoint.SyncedFile, created bool) error {
	if fi, err := out.Stat(); err != nil || !fi.Mode().IsRegular() {
		return fmt.Errorf("%q is no longer a regular file (%v)", s.Path, err)
	}
	if created && s.Owned {
		if err := out.Chown(int(s.UID), int(s.GID)); err != nil {
			return err
		}
	}
	if _, err := io.Copy(out, src); err != nil {
		return err
	}
	if err := out.Truncate(s.Size); err != nil {
		return err
	}
	return out.Chmod(fs.FileMode(s.Mode).Perm())
}

package supervisor

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
)

// writtenFiles lists the regular files that the processes pids hold open for writing
// (not append-only logs, not their own /dev, /proc, /sys) outside roots (--sync).
// Their content is not in the checkpoint: a restore runs the program's memory of the
// epoch over whatever they hold by then.
func writtenFiles(pids []int, roots []string) []string {
	seen := map[string]bool{}
	for _, pid := range pids {
		dir := fmt.Sprintf("/proc/%d/fd", pid)
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			link, err := os.Readlink(filepath.Join(dir, e.Name()))
			if err != nil || seen[link] {
				continue
			}
			info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
			if err != nil {
				continue
			}
			if fi, err := os.Stat(link); err == nil && fi.Mode().IsRegular() && isWrittenFile(link, fdFlags(string(info)), roots) {
				seen[link] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// fdFlags reads the "flags:" line of a /proc/PID/fdinfo file (octal).
func fdFlags(info string) int {
	for _, l := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(l, "flags:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			return int(n)
		}
	}
	return 0
}

// isWrittenFile is the pure rule of writtenFiles for one open file.
func isWrittenFile(path string, flags int, roots []string) bool {
	const accmode, wronly, append = 0o3, 0o1, 0o2000
	switch {
	case !strings.HasPrefix(path, "/") || strings.HasSuffix(path, " (deleted)"):
		return false
	case flags&accmode == 0: // read-only
		return false
	case flags&accmode == wronly && flags&append != 0: // a log: CRIU takes it as it is
		return false
	case checkpoint.UnderAny(path, []string{"/dev", "/proc", "/sys"}):
		return false
	}
	return !checkpoint.UnderAny(path, roots)
}

// unsynced is what a checkpoint of procs records of the files they write outside
// --sync (see checkpoint.Manifest.Unsynced), naming new ones in the log.
func (s *Supervisor) unsynced(procs []int) []string {
	var roots []string
	if s.stateFiles != nil {
		roots = s.stateFiles.roots
	}
	files := writtenFiles(procs, roots)
	s.noteUnsynced(files)
	return append(files, workDirs(procs, roots, files)...)
}

// noteUnsynced warns, once per directory, of files the program writes outside --sync.
func (s *Supervisor) noteUnsynced(files []string) {
	for _, f := range files {
		dir := filepath.Dir(f)
		if s.warnedUnsynced[dir] {
			continue
		}
		if s.warnedUnsynced == nil {
			s.warnedUnsynced = map[string]bool{}
		}
		s.warnedUnsynced[dir] = true
		s.log.Warn("the program writes files outside --sync: its checkpoints do not hold them, and once one changes "+
			"a restore would run older memory over newer data, so such restores are refused (name the directory with --sync)", "dir", dir, "file", f)
	}
}

// workDirs are the working directories of pids in which they write files (written),
// outside roots: a program that changes into its data directory (postgres does) keeps
// there files it has not opened at the moment of a checkpoint but whose pages its
// memory caches. A directory it only happens to run in is none of these.
func workDirs(pids []int, roots, written []string) []string {
	seen := map[string]bool{}
	for _, pid := range pids {
		cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil || cwd == "/" || !strings.HasPrefix(cwd, "/") || strings.HasSuffix(cwd, " (deleted)") ||
			checkpoint.UnderAny(cwd, roots) || checkpoint.UnderAny(cwd, []string{"/dev", "/proc", "/sys"}) {
			continue
		}
		if !slices.ContainsFunc(written, func(f string) bool { return checkpoint.UnderAny(f, []string{cwd}) }) {
			continue
		}
		seen[cwd] = true
	}
	out := make([]string, 0, len(seen))
	for d := range seen {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// maxStaleWalk bounds how many entries a restore looks at under a working directory.
const maxStaleWalk = 200000

// staleFile returns the first of paths (files, or directories looked at whole)
// modified after since (the epoch's dump began), or gone since (a file the program
// had open at the checkpoint, renamed or deleted afterwards: CRIU cannot reopen it),
// and how it changed: restoring that epoch would run the program's older memory over
// newer data, or could not be done at all.
func staleFile(paths []string, since time.Time) (string, string) {
	n := 0
	for _, p := range paths {
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return p, "is gone (renamed or deleted after the checkpoint)"
		}
		var found string
		var mt time.Time
		_ = filepath.WalkDir(p, func(q string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil
			}
			if n++; n > maxStaleWalk {
				return filepath.SkipAll
			}
			if fi, err := d.Info(); err == nil && (fi.Mode().IsRegular() || fi.IsDir()) && fi.ModTime().After(since) {
				found, mt = q, fi.ModTime()
				return filepath.SkipAll
			}
			return nil
		})
		if found != "" {
			return found, "changed at " + mt.Format(time.RFC3339Nano) + ", after the checkpoint"
		}
	}
	return "", ""
}

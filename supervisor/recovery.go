package supervisor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/checkpoint"
)

// DefaultStopTimeout is how long a stop waits between SIGTERM and SIGKILL, like
// systemd's TimeoutStopSec (whose default is longer, for services that flush much).
const DefaultStopTimeout = 10 * time.Second

// Files ftrun keeps about failed CRIU runs, in the state directory (or, when that is
// read-only, in the runtime directory).
const (
	failedRestoreLog = "last-failed-restore.log"
	restorePrefix    = "restore-"
	// crashSuffix marks the copy that keeps a --sync file as the program left it when
	// it died, while restores put older epochs' copies in its place.
	crashSuffix = ".ftrun-crash"
	// crtoolsDir is where CRIU's parasite mounts a /proc of its own, relative to the
	// dumped task's working directory, when the task's /proc is not of its PID
	// namespace (ftrun's programs have a PID namespace of their own). A dump killed in
	// the middle leaves it behind, and every later dump fails on it.
	crtoolsDir = "proc.crtools"
)

// runtimeDir is where scratch and logs go when the state directory is not writable.
func (s *Supervisor) runtimeDir() string {
	if s.cfg.RuntimeDir != "" {
		return s.cfg.RuntimeDir
	}
	return filepath.Join(defaultRuntimeRoot, s.cfg.Name)
}

// defaultRuntimeRoot holds each service's runtime dir.
const defaultRuntimeRoot = "/run/ftrun"

// scratchDir makes a temporary directory for CRIU's log and statistics: in the state
// directory, or in the runtime directory when the state directory is read-only or
// full, so a restore never depends on writing next to the checkpoints it reads.
func (s *Supervisor) scratchDir(prefix string) (string, error) {
	dir, err := os.MkdirTemp(s.cfg.StateDir, prefix)
	if err == nil {
		return dir, nil
	}
	rt := s.runtimeDir()
	if err2 := os.MkdirAll(rt, 0o700); err2 != nil {
		return "", fmt.Errorf("no scratch directory: %w; nor in %q: %v", err, rt, err2)
	}
	s.log.Warn("state directory not writable: CRIU's scratch and logs go to the runtime directory", "dir", rt, "err", err)
	return os.MkdirTemp(rt, prefix)
}

// removeStaleScratch removes the scratch directories and unfinished image sets a
// killed ftrun left behind, with whatever the CRIU it ran had mounted in them.
func (s *Supervisor) removeStaleScratch() {
	unfinished, _ := filepath.Glob(filepath.Join(s.cfg.StateDir, CheckpointsDir, ".tmp-*"))
	for _, d := range unfinished {
		if err := checkpoint.UnmountUnder(d); err != nil {
			s.log.Warn("unmount what a killed CRIU left", "dir", d, "err", err)
		}
	}
	for _, base := range []string{s.cfg.StateDir, s.runtimeDir()} {
		dirs, _ := filepath.Glob(filepath.Join(base, restorePrefix+"*"))
		for _, d := range dirs {
			if err := checkpoint.UnmountUnder(d); err != nil {
				s.log.Warn("unmount what a killed CRIU left", "dir", d, "err", err)
			}
			if err := os.RemoveAll(d); err != nil {
				s.log.Debug("remove stale scratch directory", "dir", d, "err", err)
			}
		}
	}
}

// cgroupProcs lists the program's cgroup (for a restore's deadline, from its timer).
func (s *Supervisor) cgroupProcs() []int {
	procs, _ := s.cg.Procs()
	return procs
}

// keepRestoreLog moves CRIU's log of a failed restore out of its scratch directory,
// which is removed, to next to it, and returns where it went ("" if it could not).
func keepRestoreLog(work string) string {
	to := filepath.Join(filepath.Dir(work), failedRestoreLog)
	if os.Rename(filepath.Join(work, checkpoint.RestoreLog), to) != nil {
		return ""
	}
	return to
}

// restoreFailed kills what a failed restore made and names CRIU's log in its error.
func (s *Supervisor) restoreFailed(err error, work string) error {
	// Whatever CRIU restored so far must not run half made.
	if kerr := s.killAll(); kerr != nil {
		s.log.Error("kill the half-restored program", "err", kerr)
	}
	if log := keepRestoreLog(work); log != "" {
		return fmt.Errorf("%w (CRIU log: %s)", err, log)
	}
	return err
}

// setAsideSynced keeps the program's state files as it left them before the first
// restore of a recovery overwrites them with an epoch's copies: if every restore
// fails, the fresh start gets them back instead of an older epoch's. That is every
// file under the --sync roots now (a restore removes those that came after its epoch)
// and every file of the epoch (one that was not there at the crash must not be there
// for the fresh start either). They are copies, not links: a restore writes each file
// in place, through its inode (see restoreSynced). A copy left by an earlier restore
// of this recovery stays: it is the crash-time file. So does one a killed ftrun set
// aside after the checkpoint being restored was taken (created is when it was); an
// older one is a leftover, and the file now is newer.
func (s *Supervisor) setAsideSynced(files []checkpoint.SyncedFile, created time.Time) {
	paths := map[string]bool{}
	for _, f := range files {
		paths[f.Path] = true
	}
	if s.stateFiles != nil {
		now, err := s.stateFiles.files()
		if err != nil {
			s.log.Warn("cannot list the state files to keep their crash-time copies", "err", err)
		}
		for _, p := range now {
			paths[p] = true
		}
	}
	for p := range paths {
		s.setAside(p, created)
	}
}

// setAside keeps one state file's crash-time copy; s.aside[path] says whether it had
// one (false: the program had no such file when it died).
func (s *Supervisor) setAside(path string, created time.Time) {
	if _, done := s.aside[path]; done {
		return
	}
	aside := path + crashSuffix
	var st unix.Stat_t
	if unix.Lstat(aside, &st) == nil {
		if time.Unix(st.Ctim.Unix()).After(created) {
			s.aside[path] = true
			return
		}
		_ = os.Remove(aside)
	}
	switch err := copyAside(path, aside); {
	case err == nil:
		s.aside[path] = true
	case errors.Is(err, os.ErrNotExist):
		s.aside[path] = false
	default:
		s.log.Warn("cannot keep the crash-time copy of a state file; a fresh start would get an epoch's copy", "path", path, "err", err)
	}
}

// copyAside copies the regular file path to aside with its mode, owner and times,
// never through a link.
func copyAside(path, aside string) error {
	in, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("%q is not a regular file", path)
	}
	out, err := os.OpenFile(aside, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, fi.Mode().Perm())
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && err == nil {
		err = out.Chown(int(st.Uid), int(st.Gid))
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chtimes(aside, fi.ModTime(), fi.ModTime())
	}
	if err != nil {
		_ = os.Remove(aside)
	}
	return err
}

// putBackSynced gives a fresh start the state files as the program left them.
func (s *Supervisor) putBackSynced() {
	for path, had := range s.aside {
		if !had {
			if err := os.Remove(path); err == nil {
				s.log.Info("fresh start: removed a state file the program did not have when it died", "path", path)
			}
			continue
		}
		if err := os.Rename(path+crashSuffix, path); err != nil {
			s.log.Error("put back the crash-time state file", "path", path, "err", err)
			continue
		}
		s.log.Info("fresh start: state file put back as the program left it (not an older epoch's copy)", "path", path)
	}
	clear(s.aside)
}

// dropAside forgets the crash-time state files once a checkpoint after the recovery
// holds newer ones.
func (s *Supervisor) dropAside() {
	for path, had := range s.aside {
		if had {
			_ = os.Remove(path + crashSuffix)
		}
	}
	clear(s.aside)
}

// clearCrtools removes what a killed dump's parasite left in the working directories
// of the program's tasks (see crtoolsDir), so the next dump does not fail on it.
func (s *Supervisor) clearCrtools(procs []int) {
	seen := map[string]bool{}
	for _, pid := range procs {
		cwd, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
		if err != nil || seen[cwd] {
			continue
		}
		seen[cwd] = true
		dir := filepath.Join("/proc", strconv.Itoa(pid), "cwd", crtoolsDir)
		if _, err := os.Lstat(dir); err != nil {
			continue
		}
		var fs unix.Statfs_t
		if unix.Statfs(dir, &fs) == nil && fs.Type == unix.PROC_SUPER_MAGIC {
			unmountIn(pid, filepath.Join(cwd, crtoolsDir))
		}
		if err := os.Remove(dir); err != nil {
			s.log.Warn("cannot remove what an interrupted dump left; dumps may fail until it is gone", "dir", filepath.Join(cwd, crtoolsDir), "err", err)
			continue
		}
		s.log.Warn("removed what an interrupted dump left in the program's working directory", "dir", filepath.Join(cwd, crtoolsDir))
	}
}

// unmountIn detaches the mount at path (as pid sees it) in pid's mount namespace,
// where CRIU's parasite made it: the program's container has a mount namespace of
// its own, and no thread of a Go process may enter one, so umount runs there by
// nsenter. Best effort: the removal that follows says when it did not work.
func unmountIn(pid int, path string) {
	self, _ := os.Readlink("/proc/self/ns/mnt")
	theirs, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	if self == theirs {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		return
	}
	_ = exec.Command("nsenter", fmt.Sprintf("--mount=/proc/%d/ns/mnt", pid), "--", "umount", "-l", path).Run()
}

// dumpFailed undoes what a failed dump may have left on the program: a frozen cgroup.
func (s *Supervisor) dumpFailed() {
	if s.cg.Frozen() {
		s.log.Warn("the failed dump left the program's cgroup frozen: thawing it")
		if err := s.cg.Thaw(); err != nil {
			s.log.Error("thaw the program after a failed dump", "err", err)
		}
	}
}

// checkpointsFailing records that a checkpoint failed or was skipped: the program is
// unprotected from the first of a row of failures on, and ftrun says so.
func (s *Supervisor) checkpointsFailing(cause string) {
	first := s.st.FailingSince.IsZero()
	if first {
		s.st.FailingSince = s.clock.Now()
		s.metrics.failing.Set(float64(s.st.FailingSince.Unix()))
	}
	s.st.FailingCause = oneLine(cause)
	s.metrics.protected.Set(0)
	if first {
		s.log.Error("program is " + s.status().FailingProtection() + "; it keeps running on its last good checkpoint")
		s.notifyStatus()
	}
}

// checkpointsOK ends a row of checkpoint failures.
func (s *Supervisor) checkpointsOK() {
	if !s.st.FailingSince.IsZero() {
		s.log.Info("checkpoints succeed again", "failing_since", s.st.FailingSince, "epoch", s.st.Epoch)
	}
	s.st.FailingSince, s.st.FailingCause = time.Time{}, ""
	s.metrics.failing.Set(0)
}

// checkpointFailingSince is when the checkpoints failing now began to fail, and why
// the newest failed; zero while the newest succeeded.
func (s *Supervisor) checkpointFailingSince() (time.Time, string) {
	return s.st.FailingSince, s.st.FailingCause
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// stopProgram stops the program as systemd would: SIGTERM, up to --stop-timeout for
// it to exit, then SIGKILL for whatever is left in its cgroup.
func (s *Supervisor) stopProgram() {
	timeout := s.cfg.StopTimeout
	switch termDisposition(s.pid) {
	case termDefault:
		// PID 1 of a namespace gets from outside only the signals it handles: SIGTERM's
		// default action, dying, is what SIGKILL does.
		s.log.Info("stopping program: it does not handle SIGTERM, so SIGKILL", "pid", s.pid)
		timeout = 0
	default:
		s.log.Info("stopping program: SIGTERM", "pid", s.pid, "stop_timeout", timeout)
		if err := syscall.Kill(s.pid, syscall.SIGTERM); err != nil {
			timeout = 0
		}
	}
	if timeout > 0 && !s.awaitExit(timeout) {
		s.log.Warn("program did not stop within the stop timeout: SIGKILL", "pid", s.pid, "stop_timeout", timeout)
	}
	if err := s.killAll(); err != nil {
		s.log.Error("stop program", "err", err)
	}
}

// awaitExit waits up to d for the current incarnation to end.
func (s *Supervisor) awaitExit(d time.Duration) bool {
	timer := s.clock.NewTimer(d)
	defer timer.Stop()
	for {
		select {
		case ev := <-s.events:
			if ev.kind == "exit" && ev.inc == s.inc {
				s.log.Info("program stopped", "status", ev.exit.String())
				return true
			}
		case <-timer.Chan():
			return false
		}
	}
}

type termAction int

const (
	termHandled termAction = iota
	termDefault
	termIgnored
)

// termDisposition reads from /proc/PID/status what SIGTERM does to pid.
func termDisposition(pid int) termAction {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return termHandled
	}
	return parseTermDisposition(string(data))
}

func parseTermDisposition(status string) termAction {
	bit := uint64(1) << (uint(syscall.SIGTERM) - 1)
	var caught, ignored uint64
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			continue
		}
		switch k {
		case "SigCgt":
			caught = n
		case "SigIgn":
			ignored = n
		}
	}
	switch {
	case caught&bit != 0:
		return termHandled
	case ignored&bit != 0:
		return termIgnored
	}
	return termDefault
}

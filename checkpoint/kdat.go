package checkpoint

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CRIU probes the kernel at the start of every run (tens of milliseconds: a fork, the
// vDSO, the sockets' diag modules, ...) unless it finds the result of an earlier probe
// in its cache file, criu.kdat. It keeps that file only on a tmpfs, so that a reboot
// into another kernel forgets it; the directory is fixed when CRIU is built (RUNDIR,
// /run by default). On a host whose /run is no tmpfs every dump pays the probe again.
// scripts/setup builds CRIU with RUNDIR=/run/criu, a directory of CRIU's own, and ftrun
// mounts a small tmpfs there when it is none (KeepKernelProbe).

const kdatName = "criu.kdat"

// kdatDir is the directory the CRIU binary at path keeps its cache in: the path
// compiled into it ("<RUNDIR>/criu.kdat"), "" if none is found.
func kdatDir(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return kdatDirIn(data)
}

// kdatDirIn finds the absolute path ending in /criu.kdat among the NUL-terminated
// strings of a binary (pure).
func kdatDirIn(bin []byte) string {
	needle := []byte("/" + kdatName + "\x00")
	for off := 0; ; {
		i := bytes.Index(bin[off:], needle)
		if i < 0 {
			return ""
		}
		end := off + i
		start := bytes.LastIndexByte(bin[:end], 0) + 1
		if s := string(bin[start:end]); filepath.IsAbs(s) && filepath.Clean(s) == s {
			return s
		}
		off = end + len(needle)
	}
}

// kdatPlan is what to do about the cache directory dir (pure): nothing (it is a
// tmpfs already), mount a tmpfs on it (a directory of CRIU's own, which nothing else
// lives in), or leave it and say why (a shared directory such as /run itself).
func kdatPlan(dir string, tmpfs bool) (mount bool, why string) {
	switch {
	case dir == "":
		return false, "the CRIU binary names no kernel probe cache"
	case tmpfs:
		return false, ""
	case filepath.Base(dir) != "criu":
		return false, dir + " is not a tmpfs, and it is not CRIU's own directory to mount one on"
	}
	return true, ""
}

// KeepKernelProbe makes sure the CRIU at path can keep its kernel probe between runs:
// when its cache directory is CRIU's own and not a tmpfs, it mounts a 1 MiB tmpfs
// there (gone at the next boot, as the cache must be). It returns where the cache is,
// or why it cannot be kept; an error only when the mount failed.
func KeepKernelProbe(path string) (string, error) {
	bin, err := criuBinary(path)
	if err != nil {
		return "", err
	}
	dir := kdatDir(bin)
	mount, why := kdatPlan(dir, isTmpfs(dir))
	if why != "" {
		return "", errors.New(why)
	}
	if mount {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("CRIU's kernel probe cache: %w", err)
		}
		// A directory made just now on a tmpfs (/run/criu on a systemd host, after a
		// boot) needs no mount of its own.
		if isTmpfs(dir) {
			return filepath.Join(dir, kdatName), nil
		}
		if err := unix.Mount("ftrun-criu", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "size=1m,mode=0700"); err != nil && !isTmpfs(dir) {
			return "", fmt.Errorf("mount a tmpfs on %s for CRIU's kernel probe cache: %w", dir, err)
		}
	}
	return filepath.Join(dir, kdatName), nil
}

func criuBinary(path string) (string, error) {
	if path != "" {
		return path, nil
	}
	lp, err := exec.LookPath("criu")
	if err != nil {
		return "", fmt.Errorf("%w in PATH", ErrCriuMissing)
	}
	return lp, nil
}

func isTmpfs(dir string) bool {
	var st unix.Statfs_t
	return dir != "" && unix.Statfs(dir, &st) == nil && st.Type == unix.TMPFS_MAGIC
}

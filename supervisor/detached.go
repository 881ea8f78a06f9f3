package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor/logrelay"
)

// RestoreDetached restores a checkpoint by hand when no supervisor runs: the newest one
// that verifies (or exactly epoch when it is not 0). The program's output goes to
// the service's output relay, which keeps it until a later `ftrun run` with the same
// state dir adopts the program.
func RestoreDetached(stateDir string, epoch uint64, criu *checkpoint.Criu, log *slog.Logger) (int, uint64, error) {
	st, err := lockStateDir(stateDir)
	if err != nil {
		return 0, 0, err
	}
	defer st.close()
	store, err := checkpoint.OpenStore(st.path(CheckpointsDir))
	if err != nil {
		return 0, 0, err
	}
	sets, err := store.List()
	if err != nil {
		return 0, 0, err
	}
	if len(sets) == 0 {
		return 0, 0, fmt.Errorf("no checkpoint in %q", store.Dir())
	}
	rec, _ := readRunRecord(stateDir)
	name := filepath.Base(stateDir)
	if rec != nil && rec.Service != "" {
		name = rec.Service
	}
	cg, err := OpenCgroup(name)
	if err != nil {
		return 0, 0, err
	}
	if procs, err := cg.Procs(); err != nil {
		return 0, 0, err
	} else if len(procs) > 0 {
		return 0, 0, fmt.Errorf("the program still runs (pids %v in cgroup %q): stop it first, or use `ftrun run` to supervise it", procs, cg.Group)
	}
	// The program's output goes to the service's output relay, which keeps it for the
	// next `ftrun run`; without one, to /dev/null.
	var out map[string]*os.File
	if c, err := logrelay.ConnectOrStart(filepath.Join(stateDir, RelaySocket), filepath.Join(cg.Path(), "cgroup.procs")); err == nil {
		defer c.Close()
		defer c.CloseWriters()
		out = map[string]*os.File{"stdout": c.Stdout, "stderr": c.Stderr}
	} else {
		log.Warn("no output relay: the restored program's output goes to /dev/null", "err", err)
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	defer devnull.Close()
	var errs []error
	for _, set := range sets {
		if epoch != 0 && set.Epoch != epoch {
			continue
		}
		m, err := checkpoint.VerifyDir(set.Dir)
		if err != nil {
			log.Warn("checkpoint unusable, trying an older one", "epoch", set.Epoch, "err", err)
			errs = append(errs, err)
			continue
		}
		inherit := map[string]*os.File{}
		for role, k := range m.External {
			if inherit[k] == nil {
				inherit[k] = devnull
				if out[role] != nil {
					inherit[k] = out[role]
				}
			}
		}
		work, err := os.MkdirTemp(stateDir, "restore-")
		if err != nil {
			return 0, 0, err
		}
		pid, err := criu.Restore(checkpoint.Options{ImagesDir: set.Dir, WorkDir: work, TCPEstablished: true, TCPClose: true, Inherit: inherit, MountNS: m.Container, CgroupRoot: cg.Group, SystemdMirror: cg.Placement.Unit != ""})
		if err != nil {
			if l := keepRestoreLog(work); l != "" {
				err = fmt.Errorf("%w (CRIU log: %s)", err, l)
			}
		}
		os.RemoveAll(work)
		if err != nil {
			log.Warn("restore failed, trying an older checkpoint", "epoch", set.Epoch, "err", err)
			errs = append(errs, err)
			continue
		}
		start, _ := procStartTime(pid)
		cmd := m.Command
		if rec != nil && len(rec.Command) > 0 {
			cmd = rec.Command
		}
		if err := st.writeRunRecord(&RunRecord{Service: name, Command: cmd, Pid: pid, StartTime: start, Phase: PhaseRunning, Since: time.Now()}); err != nil {
			log.Warn("write run record", "err", err)
		}
		return pid, set.Epoch, nil
	}
	if epoch != 0 && len(errs) == 0 {
		return 0, 0, fmt.Errorf("no checkpoint for epoch %d in %q", epoch, store.Dir())
	}
	return 0, 0, fmt.Errorf("no checkpoint could be restored: %w", errors.Join(errs...))
}

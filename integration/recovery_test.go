package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/supervisor"
)

// The recovery path under faults: stray inherited descriptors, CRIU runs that hang
// or are killed, a read-only state dir, restores that all fail, and stopping.

// logFile makes the file an ftrun's output goes to.
func logFile(t *testing.T) *os.File {
	t.Helper()
	f, err := os.Create(filepath.Join(t.TempDir(), "ftrun.log"))
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// programFds lists the descriptors pid has open.
func programFds(t *testing.T, pid int) []string {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("read descriptors of %d: %v", pid, err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// criuChild returns a `criu swrk` child of ftrun's process pid, waiting up to d.
func criuChild(pid int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		for _, t := range tasks {
			data, _ := os.ReadFile(t)
			for _, f := range strings.Fields(string(data)) {
				c, _ := strconv.Atoi(f)
				argv, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", c))
				if strings.HasPrefix(string(argv), "criu\x00swrk") || strings.Contains(string(argv), "/criu\x00swrk") {
					return c
				}
			}
		}
		time.Sleep(200 * time.Microsecond)
	}
	return 0
}

// mountsUnder counts the mounts below dir in this mount namespace.
func mountsUnder(dir string) int {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			n++
		}
	}
	return n
}

// A parent that holds a flock on a descriptor and passes another one opened in a
// different mount namespace: neither reaches the program (or CRIU), so dumps work and
// the restore after kill -9 does not wait for the parent's lock.
func TestRecoveryStrayFds(t *testing.T) {
	requiresRoot(t, "unshare", "nsenter", "flock")
	name := "rec-fds"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	lock := filepath.Join(t.TempDir(), "parent.lock")
	// In a mount namespace of its own: a tmpfs only it sees, a file opened there (fd
	// 8), a flock held on fd 9; then back to this mount namespace, and exec ftrun.
	script := `set -e
d=$(mktemp -d)
mount -t tmpfs rec-fds "$d"
echo stray > "$d/f"
exec 8<"$d/f"
exec 9>"$LOCK"
flock 9
exec nsenter --mount=/proc/$HOSTPID/ns/mnt -- "$FTRUN" "$@"`
	args := []string{"run", "--state-dir", state, "--name", name, "--interval", "300ms", "--restore-timeout", "20s", "--", "sleep", "1000000"}
	cmd := exec.Command("unshare", append([]string{"-m", "sh", "-c", script, "sh"}, args...)...)
	env := []string{"LOCK=" + lock, "HOSTPID=" + strconv.Itoa(os.Getpid()), "FTRUN=" + ftrunBin}
	p := launchFtrun(t, cmd, logFile(t), env, state)
	first := p.waitFor("two checkpoints", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 2 })
	if got := programFds(t, first.Pid); !slices.Equal(got, []string{"0", "1", "2"}) {
		t.Fatalf("the program has descriptors %v, want only 0, 1, 2", got)
	}
	if err := syscall.Kill(first.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	after := p.waitFor("restore", 40*time.Second, func(s supervisor.Status) bool {
		return s.Restores == 1 && s.State == supervisor.StateRunning
	})
	if after.FreshStarts != 1 {
		t.Errorf("fresh starts = %d, want 1 (the restore must work)", after.FreshStarts)
	}
	if got := programFds(t, after.Pid); !slices.Equal(got, []string{"0", "1", "2"}) {
		t.Errorf("the restored program has descriptors %v, want only 0, 1, 2", got)
	}
	p.waitFor("checkpoints after the restore", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch >= after.Epoch+2 })
	if strings.Contains(p.log(), "Can't lookup mount") {
		t.Errorf("a dump met the stray descriptor of the other mount namespace")
	}
}

// --preserve-fds hands the descriptors the user named to the program, and only them.
func TestRecoveryPreserveFds(t *testing.T) {
	requiresRoot(t, "flock")
	name := "rec-preserve"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	keep, err := os.Create(filepath.Join(t.TempDir(), "kept"))
	if err != nil {
		t.Fatal(err)
	}
	stray, err := os.Create(filepath.Join(t.TempDir(), "stray"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ftrunBin, "run", "--state-dir", state, "--name", name, "--preserve-fds", "1", "--", "sleep", "1000000")
	cmd.ExtraFiles = []*os.File{keep, stray} // fds 3 and 4
	p := launchFtrun(t, cmd, logFile(t), nil, state)
	st := p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 1 })
	if got := programFds(t, st.Pid); !slices.Equal(got, []string{"0", "1", "2", "3"}) {
		t.Fatalf("the program has descriptors %v, want 0-3", got)
	}
	if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/3", st.Pid)); target != keep.Name() {
		t.Errorf("fd 3 of the program is %q, want %q", target, keep.Name())
	}
}

// A restore that hangs (CRIU's --file-locks waits for a flock another process took
// meanwhile) is killed at --restore-timeout, the cause is told in one line, and the
// ladder goes on down to the fresh start instead of waiting forever.
func TestRecoveryRestoreDeadline(t *testing.T) {
	requiresRoot(t, "flock")
	name := "rec-rdeadline"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	lock := filepath.Join(t.TempDir(), "app.lock")
	p := startFtrun(t, state, nil, "--name", name, "--interval", "300ms", "--keep", "1", "--restore-timeout", "2s",
		"--", "sh", "-c", fmt.Sprintf("exec 9>%s; flock 9; exec sleep 1000000", lock))
	st := p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 1 })
	f := killAndTakeLock(t, st.Pid, lock)
	after := p.waitFor("fresh start after the restores overran", 60*time.Second, func(s supervisor.Status) bool {
		return s.FreshStarts == 2 && s.State == supervisor.StateRunning
	})
	log := p.log()
	line := regexp.MustCompile(`criu restore overran its 2s deadline and was killed[^"]*`).FindString(log)
	if line == "" {
		t.Fatalf("no one-line cause of the hung restore in the log")
	}
	t.Logf("cause: %s", line)
	if !strings.Contains(line, "flock") {
		t.Errorf("the cause does not say the restore waited on a flock: %s", line)
	}
	m := regexp.MustCompile(`CRIU log: ([^)]+)\)`).FindStringSubmatch(line)
	if m == nil {
		t.Errorf("the error does not name CRIU's log: %s", line)
	} else if data, err := os.ReadFile(m[1]); err != nil || !strings.Contains(string(data), "flock") {
		t.Errorf("CRIU's log of the failed restore is not kept at %s: %v", m[1], err)
	}
	if n := mountsUnder(state); n > 0 {
		t.Errorf("%d mounts of the killed CRIU left under the state dir", n)
	}
	// The fresh program waits for the lock; once it is free, checkpoints go on.
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	p.waitFor("checkpoints after the fresh start", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch > after.Epoch })
}

// A dump that hangs (CRIU stopped with SIGSTOP) is killed at --dump-timeout: the
// program is left running and not frozen, and later checkpoints succeed.
func TestRecoveryDumpDeadline(t *testing.T) {
	requiresRoot(t)
	name := "rec-ddeadline"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	p := startFtrun(t, state, nil, "--name", name, "--interval", "300ms", "--dump-timeout", "2s", "--", "sleep", "1000000")
	st := p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 1 })
	criu := criuChild(p.cmd.Process.Pid, 10*time.Second)
	if criu == 0 {
		t.Fatal("no CRIU dump seen")
	}
	if err := syscall.Kill(criu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	failed := p.waitFor("the hung dump to fail", 20*time.Second, func(s supervisor.Status) bool { return s.CheckpointFailures >= 1 })
	line := regexp.MustCompile(`criu dump overran its 2s deadline and was killed[^"]*`).FindString(p.log())
	if !strings.Contains(line, "(stopped)") {
		t.Errorf("the log does not tell the overrun and its cause (CRIU stopped): %q", line)
	}
	t.Logf("cause: %s", line)
	if data, _ := os.ReadFile(filepath.Join(cgroup2Mount(t), "ftrun", name, "cgroup.freeze")); strings.TrimSpace(string(data)) != "0" {
		t.Errorf("cgroup.freeze = %q after the killed dump, want 0", data)
	}
	later := p.waitFor("checkpoints after the hung one", 20*time.Second, func(s supervisor.Status) bool {
		return s.Epoch >= failed.Epoch+2 && s.FailingSince.IsZero()
	})
	if later.Pid == st.Pid {
		if state, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", st.Pid)); strings.Contains(string(state), ") T ") || strings.Contains(string(state), ") t ") {
			t.Errorf("the program was left stopped: %s", state)
		}
	}
	if n := mountsUnder(state); n > 0 {
		t.Errorf("%d mounts of the killed CRIU left under the state dir", n)
	}
}

// CRIU killed with kill -9 in the middle of dumps, and a proc.crtools directory left
// in the program's working directory (what a dump killed while its parasite had /proc
// mounted leaves): later checkpoints succeed all the same.
func TestRecoveryDumpLeftovers(t *testing.T) {
	requiresRoot(t)
	name := "rec-leftovers"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	work := t.TempDir()
	cmd := exec.Command(ftrunBin, "run", "--state-dir", state, "--name", name, "--interval", "200ms", "--", "sleep", "1000000")
	cmd.Dir = work
	p := launchFtrun(t, cmd, logFile(t), nil, state)
	st := p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 1 })
	for i := range 5 {
		criu := criuChild(p.cmd.Process.Pid, 10*time.Second)
		if criu == 0 {
			t.Fatal("no CRIU dump seen")
		}
		time.Sleep(time.Duration(rand.IntN(40)) * time.Millisecond)
		_ = syscall.Kill(criu, syscall.SIGKILL)
		st = p.waitFor(fmt.Sprintf("checkpoints after kill %d of CRIU", i+1), 30*time.Second, func(s supervisor.Status) bool {
			return s.Epoch >= st.Epoch+2 && s.State == supervisor.StateRunning
		})
	}
	leftover := filepath.Join(work, "proc.crtools")
	if err := os.Mkdir(leftover, 0o700); err != nil {
		t.Fatal(err)
	}
	// Where a killed parasite leaves it: mounted in the program's own mount namespace.
	pid := p.waitFor("pid", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 }).Pid
	mntns := fmt.Sprintf("--mount=/proc/%d/ns/mnt", pid)
	if out, err := exec.Command("nsenter", mntns, "--", "mount", "-t", "proc", "proc", leftover).CombinedOutput(); err != nil {
		t.Fatalf("mount proc in the program's namespace: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("nsenter", mntns, "--", "umount", "-l", leftover).Run() })
	before := p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return true })
	after := p.waitFor("checkpoints despite the leftover", 20*time.Second, func(s supervisor.Status) bool {
		return s.Epoch >= before.Epoch+2
	})
	if after.CheckpointFailures > before.CheckpointFailures+1 {
		t.Errorf("checkpoints failed %d times on the leftover", after.CheckpointFailures-before.CheckpointFailures)
	}
	if _, err := os.Lstat(leftover); err == nil {
		t.Errorf("%s is still there", leftover)
	}
	if n := mountsUnder(state); n > 0 {
		t.Errorf("%d mounts of killed CRIUs left under the state dir", n)
	}
}

// Checkpoints that keep failing are an alarm: `ftrun status`, the metric and the
// systemd STATUS line say since when and why; the alarm ends with the next success.
func TestRecoveryFailingAlarm(t *testing.T) {
	requiresRoot(t)
	name := "rec-alarm"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	notify, sock := bindNotify(t)
	port := freePort(t)
	p := startFtrun(t, state, []string{"NOTIFY_SOCKET=" + sock}, "--name", name, "--interval", "200ms",
		"--metrics", fmt.Sprintf("127.0.0.1:%d", port), "--", "sleep", "1000000")
	st := p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 1 })
	// A stopped program is not checkpointed: its state would come back stopped.
	if err := syscall.Kill(st.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	failing := p.waitFor("the alarm", 20*time.Second, func(s supervisor.Status) bool { return !s.FailingSince.IsZero() })
	if !strings.HasPrefix(failing.Protection, "unprotected: checkpoints failing since ") || !strings.Contains(failing.Protection, "stopped") {
		t.Errorf("protection = %q", failing.Protection)
	}
	out, err := exec.Command(ftrunBin, "status", "--state-dir", state).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "unprotected: checkpoints failing since") {
		t.Errorf("ftrun status does not raise the alarm: %v\n%s", err, out)
	}
	metrics := scrape(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	var since, protected float64 = -1, -1
	for k, v := range metrics {
		switch {
		case strings.HasPrefix(k, "ftrun_checkpoint_failing_since_seconds"):
			since = v
		case strings.HasPrefix(k, "ftrun_protected"):
			protected = v
		}
	}
	if since != float64(failing.FailingSince.Unix()) || protected != 0 {
		t.Errorf("metrics: failing since %v (want %d), protected %v (want 0)", since, failing.FailingSince.Unix(), protected)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !slices.ContainsFunc(notify.all(), func(m string) bool {
		return strings.Contains(m, "STATUS=") && strings.Contains(m, "checkpoints failing since")
	}) {
		if time.Now().After(deadline) {
			t.Fatalf("no STATUS= line with the alarm among %q", notify.all())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := syscall.Kill(st.Pid, syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	ok := p.waitFor("checkpoints again", 20*time.Second, func(s supervisor.Status) bool { return s.FailingSince.IsZero() && s.Epoch > failing.Epoch })
	if strings.HasPrefix(ok.Protection, "unprotected") {
		t.Errorf("protection after recovery = %q", ok.Protection)
	}
}

// A read-only state dir (a bind mount remounted read-only while ftrun runs): the
// program killed with kill -9 comes back from the newest checkpoint, CRIU's scratch
// going to the runtime dir; checkpoints fail meanwhile, which is the alarm; and a
// stop then is graceful: SIGTERM reaches the program.
func TestRecoveryReadOnlyStateDir(t *testing.T) {
	requiresRoot(t, "mount")
	name := "rec-ro"
	t.Cleanup(func() { killService(t, name) })
	real := t.TempDir()
	state := t.TempDir()
	if out, err := exec.Command("mount", "--bind", real, state).CombinedOutput(); err != nil {
		t.Fatalf("bind mount: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(state, syscall.MNT_DETACH) })
	runtime := filepath.Join("/run/ftrun", name)
	t.Cleanup(func() { os.RemoveAll(runtime) })
	mark := filepath.Join(t.TempDir(), "stopped")
	p := startFtrun(t, state, nil, "--name", name, "--interval", "300ms", "--",
		"sh", "-c", fmt.Sprintf(`trap 'echo TERM > %s; exit 0' TERM; while :; do sleep 0.1; done`, mark))
	p.waitFor("durable checkpoints", 30*time.Second, func(s supervisor.Status) bool { return s.DurableEpoch >= 2 })
	// A checkpoint being written keeps the mount busy: try again between them.
	for i := 0; ; i++ {
		out, err := exec.Command("mount", "-o", "remount,bind,ro", state).CombinedOutput()
		if err == nil {
			break
		}
		if i == 200 {
			t.Fatalf("remount read-only: %v: %s", err, out)
		}
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
	}
	// The newest checkpoint is the one committed before the remount.
	time.Sleep(500 * time.Millisecond)
	before := p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return true })
	newest := before.Epoch
	if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	after := p.waitFor("restore", 30*time.Second, func(s supervisor.Status) bool {
		return s.Restores == 1 && s.State == supervisor.StateRunning
	})
	if after.FreshStarts != 1 {
		t.Errorf("fresh starts = %d: the read-only state dir made the restore fail", after.FreshStarts)
	}
	if !strings.Contains(p.log(), fmt.Sprintf("restored from epoch %d ", newest)) {
		t.Errorf("not restored from the newest checkpoint, epoch %d", newest)
	}
	failing := p.waitFor("the alarm", 20*time.Second, func(s supervisor.Status) bool { return !s.FailingSince.IsZero() })
	if !strings.Contains(failing.Protection, "read-only file system") {
		t.Errorf("protection = %q, want the cause", failing.Protection)
	}
	if code := p.stop(); code != 0 {
		t.Errorf("exit code %d after SIGTERM", code)
	}
	if data, err := os.ReadFile(mark); err != nil || strings.TrimSpace(string(data)) != "TERM" {
		t.Errorf("the program was not stopped with SIGTERM (its mark: %q, %v)", data, err)
	}
}

// When every restore fails, the fresh start gets the --sync files as the program left
// them, not the copies of the oldest epoch tried: no committed row is lost.
func TestRecoveryFreshStartKeepsNewestFiles(t *testing.T) {
	requiresRoot(t, "flock")
	name := "rec-fresh-files"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	data := t.TempDir()
	db := filepath.Join(data, "rows")
	lock := filepath.Join(t.TempDir(), "app.lock")
	if err := os.WriteFile(db, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The program appends numbered rows, holding a flock (which the test takes while
	// the program is dead, so that every restore hangs and is killed).
	prog := fmt.Sprintf(`exec 9>%s; flock 9; i=$(wc -l < %s); while :; do i=$((i+1)); echo "row $i" >> %s; sleep 0.01; done`, lock, db, db)
	p := startFtrun(t, state, nil, "--name", name, "--interval", "300ms", "--restore-timeout", "2s", "--sync", data, "--", "sh", "-c", prog)
	st := p.waitFor("checkpoints", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 3 })
	f := killAndTakeLock(t, st.Pid, lock)
	crashRows := countLines(t, db)
	p.waitFor("fresh start", 90*time.Second, func(s supervisor.Status) bool { return s.FreshStarts == 2 && s.State == supervisor.StateRunning })
	if got := countLines(t, db); got != crashRows {
		t.Errorf("the fresh start has %d rows, the program had committed %d", got, crashRows)
	}
	if n := strings.Count(p.log(), "overran its 2s deadline"); n < 1 {
		t.Errorf("no restore overran: the test did not make every restore fail")
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	// The fresh program goes on from the last row, not from an older epoch's.
	time.Sleep(300 * time.Millisecond)
	rows, _ := os.ReadFile(db)
	lines := strings.Split(strings.TrimSpace(string(rows)), "\n")
	for i, l := range lines {
		if l != fmt.Sprintf("row %d", i+1) {
			t.Fatalf("row %d is %q: rows were lost or repeated", i+1, l)
		}
	}
}

func countLines(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(data), "\n")
}

// Stop is graceful: SIGTERM to the program, and SIGKILL only after --stop-timeout for
// a program that ignores it.
func TestRecoveryGracefulStop(t *testing.T) {
	requiresRoot(t)
	for _, tc := range []struct {
		name, trap string
		term       bool
	}{
		{"rec-stop-term", `trap 'echo TERM > %s; exit 0' TERM`, true},
		{"rec-stop-ignore", `trap '' TERM; : %s`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(func() { killService(t, tc.name) })
			mark := filepath.Join(t.TempDir(), "stopped")
			p := startFtrun(t, t.TempDir(), nil, "--name", tc.name, "--no-final-checkpoint", "--stop-timeout", "1s", "--",
				"sh", "-c", fmt.Sprintf(tc.trap, mark)+"; while :; do sleep 0.1; done")
			p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 1 })
			if code := p.stop(); code != 0 {
				t.Errorf("exit code %d", code)
			}
			_, err := os.Stat(mark)
			switch {
			case tc.term && err != nil:
				t.Errorf("the program did not get SIGTERM: %v", err)
			case !tc.term && !strings.Contains(p.log(), "did not stop within the stop timeout: SIGKILL"):
				t.Errorf("no SIGKILL after the stop timeout logged")
			}
			if procs := cgroupProcs(t, tc.name); len(procs) > 0 {
				t.Errorf("processes left: %v", procs)
			}
		})
	}
}

// ftrun killed with kill -9 in the middle of a restore: the next ftrun on the state
// dir cleans up what the dead one's CRIU left (its mounts, its scratch directory, the
// half-restored program) and restores the program once.
func TestRecoveryFtrunKilledMidRestore(t *testing.T) {
	requiresRoot(t)
	name := "rec-midrestore"
	t.Cleanup(func() { killService(t, name) })
	state := t.TempDir()
	args := []string{"--name", name, "--interval", "300ms", "--", "sleep", "1000000"}
	p := startFtrun(t, state, nil, args...)
	st := p.waitFor("checkpoints", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 2 })
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(p.log(), "step=restore"); {
		if time.Now().After(deadline) {
			t.Fatal("no restore began")
		}
		time.Sleep(time.Millisecond)
	}
	criu := criuChild(p.cmd.Process.Pid, 5*time.Second)
	if criu == 0 {
		t.Fatal("no CRIU restore seen")
	}
	// Let CRIU get going (it mounts its cgroup yard early), then ftrun dies.
	time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond)
	p.kill9()
	p2 := startFtrun(t, state, nil, args...)
	after := p2.waitFor("restored by the next ftrun", 30*time.Second, func(s supervisor.Status) bool {
		return s.State == supervisor.StateRunning && s.Pid > 0 && (s.Restores == 1 || s.Adoptions == 1)
	})
	p2.waitFor("checkpoints", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch > after.Epoch+1 })
	if n := mountsUnder(state); n > 0 {
		t.Errorf("%d mounts of the dead ftrun's CRIU left under the state dir", n)
	}
	if left, _ := filepath.Glob(filepath.Join(state, "restore-*")); len(left) > 0 {
		t.Errorf("scratch directories left: %v", left)
	}
	if procs := cgroupProcs(t, name); len(procs) != 1 {
		t.Errorf("%d processes in the program's cgroup, want 1: %v", len(procs), procs)
	}
}

// ftrun started on a state dir that is read-only (after a stop with a final
// checkpoint): it restores the program, `ftrun status` reaches it, and it says that
// checkpoints fail and why.
func TestRecoveryStartOnReadOnlyStateDir(t *testing.T) {
	requiresRoot(t, "mount")
	name := "rec-ro-start"
	t.Cleanup(func() { killService(t, name) })
	real, state := t.TempDir(), t.TempDir()
	if out, err := exec.Command("mount", "--bind", real, state).CombinedOutput(); err != nil {
		t.Fatalf("bind mount: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = syscall.Unmount(state, syscall.MNT_DETACH) })
	t.Cleanup(func() { os.RemoveAll(filepath.Join("/run/ftrun", name)) })
	args := []string{"--name", name, "--interval", "300ms", "--", "sleep", "1000000"}
	p := startFtrun(t, state, nil, args...)
	p.waitFor("checkpoints", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 2 })
	if code := p.stop(); code != 0 {
		t.Fatalf("stop: exit %d", code)
	}
	if out, err := exec.Command("mount", "-o", "remount,bind,ro", state).CombinedOutput(); err != nil {
		t.Fatalf("remount read-only: %v: %s", err, out)
	}
	p2 := startFtrun(t, state, nil, args...)
	st := p2.waitFor("restored", 30*time.Second, func(s supervisor.Status) bool { return s.Restores == 1 && s.State == supervisor.StateRunning })
	if st.FreshStarts != 0 {
		t.Errorf("fresh starts = %d: the final checkpoint did not restore", st.FreshStarts)
	}
	failing := p2.waitFor("the alarm", 20*time.Second, func(s supervisor.Status) bool { return !s.FailingSince.IsZero() })
	if !strings.Contains(failing.Protection, "read-only file system") {
		t.Errorf("protection = %q", failing.Protection)
	}
	out, err := exec.Command(ftrunBin, "status", "--state-dir", state).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "checkpoints failing since") {
		t.Errorf("ftrun status on the read-only state dir: %v\n%s", err, out)
	}
}

// killAndTakeLock kills pid and takes the flock it held on lock the moment the dead
// program lets go of it, before CRIU restores it: every restore (with --file-locks)
// then waits on the lock until the test lets go of it through the file returned.
func killAndTakeLock(t *testing.T, pid int, lock string) *os.File {
	t.Helper()
	f, err := os.OpenFile(lock, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the dead program's lock was never released")
		}
		time.Sleep(100 * time.Microsecond)
	}
	return f
}

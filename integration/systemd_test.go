package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The rootfs scripts/setup debootstraps for this suite, and the stamp it writes last.
const (
	systemdRootfs      = "/var/cache/ftrun/rootfs-bookworm"
	systemdRootfsStamp = ".ftrun-rootfs"
)

// container is a Debian bookworm booted with systemd as PID 1 under systemd-nspawn,
// on an overlay over the cached rootfs (the cache stays pristine), in a cgroup of its
// own on the host so that everything nspawn and the container's systemd create there
// goes away with it.
type container struct {
	t      *testing.T
	root   string // the overlay's merged directory
	pid1   int    // the container's systemd, as the host sees it
	nspawn *exec.Cmd
	done   chan struct{}
	log    string
}

// bootSystemd boots the container with the unit, the example env file, ftrun and CRIU
// installed, and waits until its systemd says the system is up. unified picks a pure
// cgroup2 container; otherwise nspawn gives it the host's layout (hybrid here).
func bootSystemd(t *testing.T, unified bool) *container {
	requiresRoot(t, "systemd-nspawn")
	// What started the test may have left fds open without close-on-exec; they would
	// reach ftrun and the program that the suite starts from a shell in the container
	// (the unit's are started by systemd, which closes them), and CRIU cannot dump an
	// fd of a mount the container does not see.
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err != nil {
		t.Fatalf("close_range: %v", err)
	}
	if _, err := os.Stat(filepath.Join(systemdRootfs, systemdRootfsStamp)); err != nil {
		t.Fatalf("no systemd rootfs at %s (%v): run scripts/setup", systemdRootfs, err)
	}
	criu, err := exec.LookPath("criu")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := &container{t: t, root: filepath.Join(dir, "root"), done: make(chan struct{}), log: filepath.Join(dir, "nspawn.log")}
	for _, d := range []string{"upper", "work", "root"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", systemdRootfs, filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	if err := syscall.Mount("overlay", c.root, "overlay", 0, opts); err != nil {
		t.Fatalf("mount the rootfs overlay: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(c.root, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", c.root, err)
		}
	})
	install := func(src, dst string, mode os.FileMode) {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		dst = filepath.Join(c.root, dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, mode); err != nil {
			t.Fatal(err)
		}
	}
	install(ftrunBin, "/usr/local/bin/ftrun", 0o755)
	install(criu, "/usr/local/sbin/criu", 0o755)
	install("../contrib/systemd/ftrun@.service", "/etc/systemd/system/ftrun@.service", 0o644)
	install("../contrib/systemd/redis.env.example", "/etc/ftrun/redis.env", 0o644)

	// The container's cgroup tree lives below a group of this test's own.
	cg := filepath.Join(cgroup2Mount(t), fmt.Sprintf("ftrun-sdt-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("cgroup for the container: %v", err)
	}
	t.Cleanup(func() {
		removeCgroupTree(t, cg)
		// On a hybrid host nspawn mirrors the group into the name=systemd v1
		// hierarchy (mounting it if need be) for the container's systemd.
		if legacy := filepath.Join("/sys/fs/cgroup/systemd", filepath.Base(cg)); legacy != cg {
			if _, err := os.Stat(legacy); err == nil {
				removeCgroupTree(t, legacy)
			}
		}
		// The container may write the host's v1 controller hierarchies, and its units'
		// groups land at their roots: left there, every later CRIU dump on this host
		// walks them.
		for _, d := range v1FtrunSlices() {
			removeCgroupTree(t, d)
		}
	})

	logf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	name := fmt.Sprintf("ftrun-sdt-%d", os.Getpid())
	// The recipe that boots here: without --register=no/--keep-unit nspawn wants a
	// system bus; without SYSTEMD_NSPAWN_API_VFS_WRITABLE CRIU cannot write
	// ns_last_pid; without SYSTEMD_SECCOMP=0 every dump fails ("suspending seccomp").
	c.nspawn = exec.Command("/bin/sh", "-c", `echo $$ > "$1/cgroup.procs" && shift && exec systemd-nspawn "$@"`, "sh", cg,
		"-b", "-D", c.root, "--private-network", "--register=no", "--keep-unit", "--capability=all",
		"--console=passive", "-M", name)
	c.nspawn.Env = append(os.Environ(), "SYSTEMD_SECCOMP=0", "SYSTEMD_NSPAWN_API_VFS_WRITABLE=1")
	if unified {
		c.nspawn.Env = append(c.nspawn.Env, "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1")
	}
	c.nspawn.Stdout, c.nspawn.Stderr = logf, logf
	if err := c.nspawn.Start(); err != nil {
		t.Fatalf("start systemd-nspawn: %v", err)
	}
	go func() {
		_ = c.nspawn.Wait()
		close(c.done)
	}()
	t.Cleanup(c.shutdown)

	deadline := time.Now().Add(60 * time.Second)
	for c.pid1 == 0 && time.Now().Before(deadline) {
		select {
		case <-c.done:
			t.Fatalf("systemd-nspawn exited while booting:\n%s", c.logTail())
		case <-time.After(100 * time.Millisecond):
		}
		c.pid1 = containerInit(c.nspawn.Process.Pid)
	}
	if c.pid1 == 0 {
		t.Fatalf("no systemd in the container after 60s:\n%s", c.logTail())
	}
	for time.Now().Before(deadline) {
		out, _ := c.exec("systemctl", "is-system-running")
		if s := strings.TrimSpace(out); s == "running" || s == "degraded" {
			return c
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("the container's systemd did not come up within 60s:\n%s", c.logTail())
	return nil
}

// containerInit finds the container's PID 1: the child of nspawn that runs systemd.
func containerInit(nspawn int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", nspawn))
	for _, f := range tasks {
		data, _ := os.ReadFile(f)
		for _, p := range strings.Fields(string(data)) {
			pid, _ := strconv.Atoi(p)
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) == "systemd" {
				return pid
			}
		}
	}
	return 0
}

func (c *container) logTail() string {
	data, _ := os.ReadFile(c.log)
	return tail(string(data), 40)
}

// exec runs a command inside the container (all its namespaces).
func (c *container) exec(args ...string) (string, error) {
	cmd := exec.Command("nsenter", append([]string{"-t", strconv.Itoa(c.pid1), "-a"}, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must is exec that fails the test on error.
func (c *container) must(args ...string) string {
	c.t.Helper()
	out, err := c.exec(args...)
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// prop reads one property of a unit.
func (c *container) prop(unit, name string) string {
	out, _ := c.exec("systemctl", "show", "-p", name, "--value", unit)
	return strings.TrimSpace(out)
}

// shutdown powers the container off (its systemd stops the unit, which takes a final
// checkpoint), and kills nspawn if that takes too long: the container's PID namespace
// dies with its PID 1.
func (c *container) shutdown() {
	select {
	case <-c.done:
		return
	default:
	}
	if c.t.Failed() {
		out, _ := c.exec("journalctl", "--no-pager", "-n", "120")
		c.t.Logf("container journal:\n%s", out)
	}
	_ = c.nspawn.Process.Signal(syscall.SIGTERM) // nspawn asks the container's systemd to power off
	select {
	case <-c.done:
	case <-time.After(30 * time.Second):
		_ = c.nspawn.Process.Kill()
		<-c.done
		c.t.Errorf("the container did not power off within 30s")
	}
}

// removeCgroupTree removes an (emptied) cgroup and everything below it.
// v1FtrunSlices are the system-ftrun.slice groups in the host's v1 controller
// hierarchies, wherever below their roots they were made.
func v1FtrunSlices() []string {
	var out []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	for _, root := range roots {
		if filepath.Base(root) == "unified" {
			continue
		}
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			switch {
			case err != nil || !d.IsDir():
				return nil
			case d.Name() == "system-ftrun.slice":
				out = append(out, p)
				return filepath.SkipDir
			case strings.Count(strings.TrimPrefix(p, root), "/") > 4:
				return filepath.SkipDir
			}
			return nil
		})
	}
	return out
}

func removeCgroupTree(t *testing.T, root string) {
	var dirs []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for range 50 {
			if err = os.Remove(dirs[i]); err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			_ = os.WriteFile(filepath.Join(dirs[i], "cgroup.kill"), []byte("1"), 0)
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("leftover cgroup %s: %v", dirs[i], err)
		}
	}
}

// journalEntry is the part of `journalctl -o json` the checks read.
type journalEntry map[string]any

func (e journalEntry) str(k string) string {
	s, _ := e[k].(string)
	return s
}

// journal returns the unit's journal entries, ftrun's and systemd's about it.
func (c *container) journal(unit string) []journalEntry {
	out, _ := c.exec("journalctl", "--no-pager", "-u", unit, "-o", "json")
	var es []journalEntry
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e journalEntry
		if json.Unmarshal(sc.Bytes(), &e) == nil {
			es = append(es, e)
		}
	}
	return es
}

// find returns the first entry after from whose MESSAGE contains msg.
func find(es []journalEntry, from int, msg string) (int, journalEntry) {
	for i := from; i < len(es); i++ {
		if strings.Contains(es[i].str("MESSAGE"), msg) {
			return i, es[i]
		}
	}
	return -1, nil
}

// waitUntil polls cond until it holds or the timeout passes.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestSystemdUnit runs contrib/systemd/ftrun@.service with the example env file under
// a real systemd 252 and goes through what an operator meets: start, status, a
// transient checkpoint failure, ftrun killed, ftrun stopped (the watchdog), stop and
// start again. One container serves every step: booting one costs seconds.
func TestSystemdUnit(t *testing.T) {
	c := bootSystemd(t, true)
	const unit = "ftrun@redis.service"
	// A limit the program must be under, with the unit's (when the kernel gives the
	// container a memory controller; this host's cgroup2 has none, see below).
	c.must("mkdir", "-p", "/etc/systemd/system/"+unit+".d")
	c.must("sh", "-c", "printf '[Service]\\nMemoryMax=300M\\n' > /etc/systemd/system/"+unit+".d/memory.conf")
	c.must("systemctl", "daemon-reload")

	redis := func(args ...string) string {
		out, _ := c.exec(append([]string{"redis-cli", "-p", "6379"}, args...)...)
		return strings.TrimSpace(out)
	}
	programPid := func() int {
		out, err := c.exec("ftrun", "status", "--name", "redis", "--json")
		if err != nil {
			return 0
		}
		var st struct{ Pid int }
		_ = json.Unmarshal([]byte(out), &st)
		return st.Pid
	}
	restarts := func() int { n, _ := strconv.Atoi(c.prop(unit, "NRestarts")); return n }

	t.Run("start reaches active only after the first checkpoint", func(t *testing.T) {
		c.must("systemctl", "start", unit) // Type=notify: returns once READY=1 came
		if s := c.prop(unit, "ActiveState"); s != "active" {
			t.Fatalf("ActiveState %q after start", s)
		}
		es := c.journal(unit)
		ci, ckpt := find(es, 0, "first checkpoint committed")
		si, _ := find(es, 0, "Started ftrun@redis.service")
		if si < 0 {
			si, _ = find(es, 0, "Started ftrun: redis")
		}
		if ci < 0 || si < 0 || ci > si {
			t.Fatalf("journal order: first checkpoint at %d, systemd's Started at %d (want checkpoint first)", ci, si)
		}
		// Structured fields, not just text.
		if ckpt.str("SERVICE") != "redis" || ckpt.str("EPOCH") == "" || ckpt.str("SYSLOG_IDENTIFIER") != "ftrun" {
			t.Errorf("first checkpoint entry lacks SERVICE=redis, EPOCH=, SYSLOG_IDENTIFIER=ftrun: %v", ckpt)
		}
		if _, e := find(es, 0, "boot: "); e == nil || e.str("ACTION") == "" {
			t.Errorf("boot entry lacks ACTION=: %v", e)
		}
	})

	t.Run("STATUS= shows state and epoch", func(t *testing.T) {
		waitUntil(t, "a running STATUS=", 10*time.Second, func() bool {
			return strings.HasPrefix(c.prop(unit, "StatusText"), "running: pid ")
		})
		st := c.prop(unit, "StatusText")
		if !strings.Contains(st, "epoch ") || !strings.Contains(st, "last checkpoint") {
			t.Errorf("StatusText %q", st)
		}
	})

	var unitCg string
	t.Run("the program's cgroup is inside the unit's", func(t *testing.T) {
		unitCg = c.prop(unit, "ControlGroup")
		pid := programPid()
		if pid == 0 || unitCg == "" {
			t.Fatalf("program pid %d, unit cgroup %q", pid, unitCg)
		}
		cg := c.must("cat", fmt.Sprintf("/proc/%d/cgroup", pid))
		if want := "0::" + unitCg + "/program/redis"; !strings.Contains(cg, want) {
			t.Errorf("program's cgroup %q, want %q", strings.TrimSpace(cg), want)
		}
		main := c.prop(unit, "MainPID")
		if cg := c.must("cat", "/proc/"+main+"/cgroup"); !strings.Contains(cg, "0::"+unitCg+"/supervisor") {
			t.Errorf("ftrun's cgroup %q, want %q", strings.TrimSpace(cg), unitCg+"/supervisor")
		}
		if out, _ := c.exec("systemctl", "status", "--no-pager", "-l", unit); !strings.Contains(out, "redis-server") {
			t.Errorf("systemctl status does not list the program:\n%s", out)
		}
	})

	t.Run("MemoryMax= of the unit applies to the program", func(t *testing.T) {
		if got := c.prop(unit, "MemoryMax"); got != strconv.Itoa(300<<20) {
			t.Errorf("MemoryMax %q", got)
		}
		// The kernel applies a group's memory.max to everything below it, so the
		// program (in UNIT/program) is under the unit's limit whenever the unit's
		// group has one. This host's cgroup2 has no memory controller (hybrid: it is
		// bound to v1, which nspawn mounts read-only), so there may be no file here.
		limit, err := c.exec("cat", "/sys/fs/cgroup"+unitCg+"/memory.max")
		if err != nil {
			t.Logf("no memory controller in the container's cgroup2 (%s): the unit's limit cannot be enforced on this host; the program's group is inside the unit's (checked above), which is what makes it apply", strings.TrimSpace(limit))
			return
		}
		if strings.TrimSpace(limit) != strconv.Itoa(300<<20) {
			t.Errorf("unit memory.max %q", limit)
		}
		cur := c.must("cat", "/sys/fs/cgroup"+unitCg+"/program/redis/memory.current")
		if n, _ := strconv.Atoi(strings.TrimSpace(cur)); n == 0 {
			t.Errorf("program's memory.current %q: not accounted", cur)
		}
	})

	if r := redis("SET", "k1", "before-failures"); r != "OK" {
		t.Fatalf("redis SET: %q", r)
	}
	c.must("ftrun", "checkpoint", "--name", "redis")

	t.Run("a transient checkpoint failure does not cost a restart", func(t *testing.T) {
		dir := "/var/lib/ftrun/redis/checkpoints"
		c.must("mount", "--bind", dir, dir)
		c.must("mount", "-o", "remount,bind,ro", dir)
		// Six failed epochs at the example's 1s interval: longer than the 5s between
		// pings at WatchdogSec/2, so a rule that withholds a ping after any failed
		// checkpoint (as ftrun's used to) misses one and the watchdog fires; within
		// what the tolerance and the pings at WatchdogSec/4 absorb.
		time.Sleep(6 * time.Second)
		c.must("umount", dir)
		// WatchdogSec (10s) after the failures began, and slack.
		time.Sleep(6 * time.Second)
		if n := restarts(); n != 0 || c.prop(unit, "ActiveState") != "active" {
			t.Fatalf("NRestarts %d, ActiveState %q after a transient failure", n, c.prop(unit, "ActiveState"))
		}
		es := c.journal(unit)
		if i, _ := find(es, 0, "checkpoint failed"); i < 0 {
			t.Errorf("no failed checkpoint in the journal: the failure was not injected")
		}
		if i, _ := find(es, 0, "Watchdog timeout"); i >= 0 {
			t.Errorf("systemd's watchdog fired")
		}
	})

	t.Run("checkpoints failing for good: STATUS= says why, the watchdog restarts ftrun", func(t *testing.T) {
		n := restarts()
		from := len(c.journal(unit))
		dir := "/var/lib/ftrun/redis/checkpoints"
		c.must("mount", "--bind", dir, dir)
		c.must("mount", "-o", "remount,bind,ro", dir)
		defer c.exec("umount", dir)
		waitUntil(t, "STATUS= to say the watchdog is withheld", 20*time.Second, func() bool {
			st := c.prop(unit, "StatusText")
			return strings.Contains(st, "watchdog withheld: no checkpoint committed for") && strings.Contains(st, "read-only file system")
		})
		// Tolerance (5s) is behind us; WatchdogSec (10s), the SIGABRT and RestartSec.
		waitUntil(t, "a watchdog restart", 30*time.Second, func() bool { return restarts() == n+1 })
		c.must("umount", dir)
		es := c.journal(unit)
		if i, _ := find(es, from, "Watchdog timeout"); i < 0 {
			t.Errorf("no \"Watchdog timeout\" from systemd in the journal")
		}
		// Go exits 2 on systemd's SIGABRT: that must read as a crash, not as bad flags.
		if i, _ := find(es, from, "status=2/INVALIDARGUMENT"); i < 0 {
			t.Logf("no exit status 2 in the journal (ftrun ended otherwise)")
		}
		waitUntil(t, "active again", 20*time.Second, func() bool { return c.prop(unit, "ActiveState") == "active" })
		waitUntil(t, "checkpoints again", 20*time.Second, func() bool {
			return strings.HasPrefix(c.prop(unit, "StatusText"), "running:") && !strings.Contains(c.prop(unit, "StatusText"), "withheld")
		})
	})

	t.Run("kill -9 of ftrun: restarted, the program adopted", func(t *testing.T) {
		before, n := programPid(), restarts()
		c.must("systemctl", "kill", "-s", "KILL", "--kill-who=main", unit)
		waitUntil(t, "a restart", 30*time.Second, func() bool {
			return restarts() == n+1 && c.prop(unit, "ActiveState") == "active"
		})
		waitUntil(t, "the new ftrun's status", 10*time.Second, func() bool { return programPid() != 0 })
		if after := programPid(); after != before {
			t.Errorf("program pid %d after the restart, was %d: not adopted", after, before)
		}
		if _, e := find(c.journal(unit), 0, "program adopted"); e == nil {
			t.Errorf("no adoption in the journal")
		}
		if r := redis("GET", "k1"); r != "before-failures" {
			t.Errorf("GET k1 = %q", r)
		}
	})

	t.Run("SIGSTOP of ftrun: the watchdog restarts it, the program adopted", func(t *testing.T) {
		before, n := programPid(), restarts()
		from := len(c.journal(unit))
		c.must("systemctl", "kill", "-s", "STOP", "--kill-who=main", unit)
		// WatchdogSec (10s) + TimeoutAbortSec (10s) + RestartSec (1s), and slack.
		waitUntil(t, "a watchdog restart", 45*time.Second, func() bool {
			return restarts() == n+1 && c.prop(unit, "ActiveState") == "active"
		})
		es := c.journal(unit)
		if i, _ := find(es, from, "Watchdog timeout"); i < 0 {
			t.Errorf("no \"Watchdog timeout\" from systemd in the journal")
		}
		waitUntil(t, "the new ftrun's status", 10*time.Second, func() bool { return programPid() != 0 })
		if after := programPid(); after != before {
			t.Errorf("program pid %d after the watchdog restart, was %d: not adopted", after, before)
		}
		if r := redis("GET", "k1"); r != "before-failures" {
			t.Errorf("GET k1 = %q", r)
		}
	})

	t.Run("systemctl stop takes the final checkpoint; start resumes from it", func(t *testing.T) {
		if r := redis("SET", "k2", "before-stop"); r != "OK" {
			t.Fatalf("redis SET: %q", r)
		}
		from := len(c.journal(unit))
		c.must("systemctl", "stop", unit)
		if s := c.prop(unit, "ActiveState"); s != "inactive" {
			t.Errorf("ActiveState %q after stop (Result %s)", s, c.prop(unit, "Result"))
		}
		if i, _ := find(c.journal(unit), from, "final checkpoint committed"); i < 0 {
			t.Errorf("no final checkpoint in the journal")
		}
		if out, _ := c.exec("pgrep", "-x", "redis-server"); strings.TrimSpace(out) != "" {
			t.Errorf("redis still runs after stop: %s", out)
		}
		c.must("systemctl", "start", unit)
		if r := redis("GET", "k2"); r != "before-stop" {
			t.Errorf("GET k2 after stop and start = %q, want the value from before the stop", r)
		}
		c.must("systemctl", "stop", unit)
	})

	t.Run("a unit without Delegate=yes: the program outside it, and a warning that says so", func(t *testing.T) {
		const other = "ftrun@nodeleg.service"
		c.must("sh", "-c", "printf 'FTRUN_CMD=/bin/sleep 1000\\n' > /etc/ftrun/nodeleg.env")
		c.must("mkdir", "-p", "/etc/systemd/system/"+other+".d")
		c.must("sh", "-c", "printf '[Service]\\nDelegate=no\\n' > /etc/systemd/system/"+other+".d/nodeleg.conf")
		c.must("systemctl", "daemon-reload")
		c.must("systemctl", "start", other)
		defer c.exec("systemctl", "stop", other)
		if _, e := find(c.journal(other), 0, "is not delegated to ftrun"); e == nil || !strings.Contains(e.str("MESSAGE"), "Delegate=yes") {
			t.Errorf("no warning naming Delegate=yes in the journal: %v", e)
		}
		out := c.must("sh", "-c", "cat /proc/$(pgrep -x sleep)/cgroup")
		if !strings.Contains(out, "0::/ftrun/nodeleg") {
			t.Errorf("program's cgroup %q, want /ftrun/nodeleg", strings.TrimSpace(out))
		}
	})

	t.Run("a checkpoint taken outside systemd is restored into the unit's cgroup", func(t *testing.T) {
		const other = "ftrun@mig.service"
		// ftrun from a shell: no INVOCATION_ID, so the program goes to /ftrun/mig.
		// setsid -f and exec: no shell stays behind.
		c.must("setsid", "-f", "sh", "-c", "exec </dev/null >/tmp/mig.log 2>&1; exec ftrun run --name mig -- /bin/sleep 1000")
		ftrunPid := func() string {
			out, _ := c.exec("pgrep", "-f", "^ftrun run --name mig")
			return strings.TrimSpace(out)
		}
		defer func() {
			if t.Failed() {
				out, _ := c.exec("cat", "/tmp/mig.log")
				t.Logf("ftrun outside systemd:\n%s", tail(out, 30))
				for _, e := range c.journal(other) {
					t.Logf("%s: %s %s", other, e.str("MESSAGE"), e.str("ERR"))
				}
			}
			if pid := ftrunPid(); pid != "" {
				_, _ = c.exec("kill", "-TERM", pid)
			}
		}()
		waitUntil(t, "a checkpoint outside systemd", 20*time.Second, func() bool {
			out, _ := c.exec("ftrun", "status", "--name", "mig", "--json")
			return strings.Contains(out, `"checkpoints": 1`) || strings.Contains(out, `"checkpoints": 2`)
		})
		if out := c.must("sh", "-c", "cat /proc/$(pgrep -x sleep)/cgroup"); !strings.Contains(out, "0::/ftrun/mig") {
			t.Fatalf("program outside systemd in %q, want /ftrun/mig", strings.TrimSpace(out))
		}
		c.must("kill", "-TERM", ftrunPid())
		waitUntil(t, "ftrun outside systemd to stop", 20*time.Second, func() bool { return ftrunPid() == "" })
		c.must("sh", "-c", "printf 'FTRUN_CMD=/bin/sleep 1000\\n' > /etc/ftrun/mig.env")
		c.must("systemctl", "start", other)
		defer c.exec("systemctl", "stop", other)
		if i, _ := find(c.journal(other), 0, "program restored from epoch"); i < 0 {
			t.Errorf("the checkpoint taken outside systemd was not restored")
		}
		want := "0::" + c.prop(other, "ControlGroup") + "/program/mig"
		if out := c.must("sh", "-c", "cat /proc/$(pgrep -x sleep)/cgroup"); !strings.Contains(out, want) {
			t.Errorf("restored program in %q, want %q", strings.TrimSpace(out), want)
		}
	})

	if t.Failed() || os.Getenv("FTRUN_SDT_JOURNAL") != "" {
		var buf bytes.Buffer
		for _, e := range c.journal(unit) {
			if e.str("SYSLOG_IDENTIFIER") == "ftrun" && e.str("SERVICE") == "" {
				continue // Go's stack dump on SIGABRT, line by line
			}
			fmt.Fprintf(&buf, "%s %s (epoch %s, step %s, err %s)\n", e.str("SYSLOG_IDENTIFIER"), e.str("MESSAGE"), e.str("EPOCH"), e.str("STEP"), e.str("ERR"))
		}
		t.Logf("journal of %s (without Go's stack dumps):\n%s", unit, tail(buf.String(), 150))
	}
}

// TestSystemdUnitHybrid runs the unit in a container with the host's hybrid layout
// (cgroup v1 controllers, cgroup2 for grouping): the placement, an adoption and a stop
// and start through the final checkpoint.
func TestSystemdUnitHybrid(t *testing.T) {
	c := bootSystemd(t, false)
	const unit = "ftrun@redis.service"
	if _, err := c.exec("test", "-d", "/sys/fs/cgroup/unified"); err != nil {
		t.Fatalf("the container is not hybrid (no /sys/fs/cgroup/unified)")
	}
	c.must("systemctl", "start", unit)
	pidOf := func() string {
		out, _ := c.exec("pgrep", "-x", "redis-server")
		return strings.TrimSpace(out)
	}
	unitCg := c.prop(unit, "ControlGroup")
	pid := pidOf()
	cg := c.must("cat", "/proc/"+pid+"/cgroup")
	if !strings.Contains(cg, "0::"+unitCg+"/program/redis") {
		t.Errorf("program's cgroups:\n%s\nwant 0::%s/program/redis", cg, unitCg)
	}
	if r, _ := c.exec("redis-cli", "SET", "k", "v"); strings.TrimSpace(r) != "OK" {
		t.Fatalf("SET: %q", r)
	}
	c.must("systemctl", "kill", "-s", "KILL", "--kill-who=main", unit)
	waitUntil(t, "a restart", 30*time.Second, func() bool {
		return c.prop(unit, "NRestarts") == "1" && c.prop(unit, "ActiveState") == "active"
	})
	if after := pidOf(); after != pid {
		t.Errorf("redis pid %s after the restart, was %s: not adopted", after, pid)
	}
	c.must("systemctl", "stop", unit)
	c.must("systemctl", "start", unit)
	if r, _ := c.exec("redis-cli", "GET", "k"); strings.TrimSpace(r) != "v" {
		t.Errorf("GET after stop and start: %q", r)
	}
	c.must("systemctl", "stop", unit)
	if i, _ := find(c.journal(unit), 0, "final checkpoint committed"); i < 0 {
		t.Errorf("no final checkpoint in the journal")
	}
	if t.Failed() {
		out, _ := c.exec("journalctl", "--no-pager", "-u", unit, "-n", "60")
		t.Logf("journal:\n%s", out)
	}
}

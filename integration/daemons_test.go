package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// Real daemons in their Debian default configurations, as a user would run them:
// they drop privileges, fork workers and keep shared memory. Each test checks that
// what the daemon held survives kill -9, that exactly one copy runs afterwards, and
// logs how long the first correct answer took (never asserted: shared machines).

// daemon is one protected daemon under test.
type daemon struct {
	t     testing.TB
	name  string
	state string
	p     *ftrunProc
}

func startDaemon(t testing.TB, name string, flags []string, argv ...string) *daemon {
	t.Helper()
	t.Cleanup(func() { killService(t, name) })
	d := &daemon{t: t, name: name, state: t.TempDir()}
	args := append(append([]string{"--name", name, "--interval", "500ms", "--discard"}, flags...), "--")
	d.p = startFtrun(t, d.state, nil, append(args, argv...)...)
	d.p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	return d
}

// kill9 kills the daemon's first process and waits until ftrun has restored it; it
// returns when the restore was seen and the status before the kill.
func (d *daemon) kill9() (time.Time, supervisor.Status) {
	d.t.Helper()
	before := d.p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	killed := time.Now()
	if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
		d.t.Fatal(err)
	}
	d.p.waitFor("restore", 30*time.Second, func(s supervisor.Status) bool {
		return s.Restores > before.Restores && s.State == supervisor.StateRunning
	})
	return killed, before
}

// procs are the daemon's processes: pid -> (comm or cmdline, uid).
type procInfo struct {
	pid  int
	uid  int
	cmd  string
	ppid int
}

func (d *daemon) procs() []procInfo {
	var out []procInfo
	for _, pid := range cgroupProcs(d.t, d.name) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		pi := procInfo{pid: pid, cmd: strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))}
		for _, l := range strings.Split(string(status), "\n") {
			f := strings.Fields(l)
			if len(f) >= 2 && f[0] == "Uid:" {
				pi.uid, _ = strconv.Atoi(f[1])
			}
			if len(f) >= 2 && f[0] == "PPid:" {
				pi.ppid, _ = strconv.Atoi(f[1])
			}
		}
		out = append(out, pi)
	}
	return out
}

func uidOf(t testing.TB, name string) int {
	t.Helper()
	out, err := exec.Command("id", "-u", name).Output()
	if err != nil {
		t.Fatalf("user %q: %v (scripts/setup installs the package that creates it)", name, err)
	}
	uid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return uid
}

// waitAnswer polls until ok(answer) or the deadline; it returns when it first was.
func waitAnswer(t testing.TB, what string, timeout time.Duration, try func() (bool, error)) time.Time {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		ok, err := try()
		if ok {
			return time.Now()
		}
		last = err
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: no correct answer within %s (last: %v)", what, timeout, last)
	return time.Time{}
}

func httpGet(url string) (int, string, error) {
	// A new connection each time: a kept-alive one from before a kill would be reset.
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// nginxConfig is Debian's /etc/nginx/nginx.conf as installed, with the pid file and
// logs moved into dir and its default site on port (instead of sites-enabled on 80).
func nginxConfig(t testing.TB, dir string, port int) string {
	t.Helper()
	data, err := os.ReadFile("/etc/nginx/nginx.conf")
	if err != nil {
		t.Fatalf("Debian's nginx config: %v (scripts/setup installs nginx)", err)
	}
	conf := string(data)
	site := fmt.Sprintf("server { listen 127.0.0.1:%d default_server; root /var/www/html; "+
		"index index.html index.htm index.nginx-debian.html; server_name _; location / { try_files $uri $uri/ =404; } }", port)
	for old, new := range map[string]string{
		"pid /run/nginx.pid;":                 "pid " + filepath.Join(dir, "nginx.pid") + ";",
		"/var/log/nginx/":                     dir + "/",
		"include /etc/nginx/sites-enabled/*;": site,
	} {
		if !strings.Contains(conf, old) {
			t.Fatalf("Debian's nginx.conf has no %q any more: adapt the test", old)
		}
		conf = strings.ReplaceAll(conf, old, new)
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// nginx with Debian's config: a root master and www-data workers, checkpointed and
// restored whole; afterwards exactly one master answers.
func TestDaemonNginx(t *testing.T) {
	requiresRoot(t, "nginx")
	port := freePort(t)
	dir := t.TempDir()
	conf := nginxConfig(t, dir, port)
	url := fmt.Sprintf("http://127.0.0.1:%d/", port)
	d := startDaemon(t, "dm-nginx", nil, "nginx", "-c", conf, "-g", "daemon off;")
	waitAnswer(t, "nginx", 10*time.Second, func() (bool, error) {
		code, body, err := httpGet(url)
		return code == 200 && strings.Contains(body, "Welcome to nginx"), err
	})
	wwwData := uidOf(t, "www-data")
	workers := func() (masters, workers int) {
		for _, p := range d.procs() {
			switch {
			case strings.HasPrefix(p.cmd, "nginx: master"):
				masters++
			case strings.HasPrefix(p.cmd, "nginx: worker") && p.uid == wwwData:
				workers++
			}
		}
		return
	}
	if m, w := workers(); m != 1 || w == 0 {
		t.Fatalf("before the kill: %d masters, %d www-data workers (%+v)", m, w, d.procs())
	}
	d.p.checkpoint()
	killed, _ := d.kill9()
	answered := waitAnswer(t, "nginx after kill -9", 20*time.Second, func() (bool, error) {
		code, body, err := httpGet(url)
		return code == 200 && strings.Contains(body, "Welcome to nginx"), err
	})
	t.Logf("nginx: kill -9 of the master -> first correct answer in %s", answered.Sub(killed).Round(time.Millisecond))
	if m, w := workers(); m != 1 || w == 0 {
		t.Errorf("after the restore: %d masters, %d www-data workers, want 1 and some (%+v)", m, w, d.procs())
	}
}

// memcached -u memcache -t 4: every key set before the checkpoint is there after
// kill -9, and one memcached runs, still as memcache.
func TestDaemonMemcachedUser(t *testing.T) {
	requiresRoot(t, "memcached")
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d := startDaemon(t, "dm-memcached", nil, "memcached", "-u", "memcache", "-t", "4", "-l", "127.0.0.1", "-p", strconv.Itoa(port))
	var c *mcConn
	waitAnswer(t, "memcached", 10*time.Second, func() (bool, error) {
		var err error
		c, err = dialMC(addr)
		return err == nil, err
	})
	const n = 500
	for i := 0; i < n; i++ {
		if err := c.set(fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	c.close()
	memcache := uidOf(t, "memcache")
	d.p.checkpoint()
	killed, _ := d.kill9()
	answered := waitAnswer(t, "memcached after kill -9", 20*time.Second, func() (bool, error) {
		c2, err := dialMC(addr)
		if err != nil {
			return false, err
		}
		defer c2.close()
		v, err := c2.get("k0")
		return v == "v0", err
	})
	t.Logf("memcached: kill -9 -> first correct answer in %s", answered.Sub(killed).Round(time.Millisecond))
	c2, err := dialMC(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.close()
	for i := 0; i < n; i++ {
		if v, err := c2.get(fmt.Sprintf("k%d", i)); err != nil || v != fmt.Sprintf("v%d", i) {
			t.Fatalf("k%d = %q (%v) after the restore", i, v, err)
		}
	}
	ps := d.procs()
	if len(ps) != 1 || ps[0].uid != memcache {
		t.Errorf("after the restore: %+v, want one memcached as uid %d", ps, memcache)
	}
}

// --user runs a program that does not switch users itself as the given user, and it
// is checkpointed and restored as that user.
func TestDaemonUserFlag(t *testing.T) {
	requiresRoot(t, "python3")
	port := freePort(t)
	// t.TempDir's parent is private to root: nobody could not serve from it.
	dir, err := os.MkdirTemp("", "dm-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello from nobody\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/hello.txt", port)
	d := startDaemon(t, "dm-user", []string{"--user", "nobody"}, "/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, strconv.Itoa(port))
	waitAnswer(t, "python as nobody", 10*time.Second, func() (bool, error) {
		code, body, err := httpGet(url)
		return code == 200 && strings.Contains(body, "hello from nobody"), err
	})
	nobody := uidOf(t, "nobody")
	if ps := d.procs(); len(ps) != 1 || ps[0].uid != nobody {
		t.Fatalf("program runs as %+v, want uid %d", ps, nobody)
	}
	// Without CAP_SYS_RESOURCE only the project's CRIU patch can read another user's
	// rlimits: the dump that just succeeded must have used it.
	if !capSysResource(t) {
		d.p.checkpoint()
		dumpLog, _ := os.ReadFile(filepath.Join(d.state, "last-dump.log"))
		if !strings.Contains(string(dumpLog), "read from /proc (no CAP_SYS_RESOURCE)") {
			t.Errorf("no CAP_SYS_RESOURCE here, yet CRIU's dump log does not show the rlimits read from /proc (scripts/criu-patches)")
		}
	}
	d.kill9()
	waitAnswer(t, "python as nobody after kill -9", 20*time.Second, func() (bool, error) {
		code, body, err := httpGet(url)
		return code == 200 && strings.Contains(body, "hello from nobody"), err
	})
	if ps := d.procs(); len(ps) != 1 || ps[0].uid != nobody {
		t.Errorf("restored program runs as %+v, want uid %d", ps, nobody)
	}
}

// The container: the program is PID 1 of its own /proc, has its own mount and IPC
// namespaces and a /dev/shm of its own, whose files come back with every restore.
func TestDaemonContainerShmTravels(t *testing.T) {
	requiresRoot(t, "python3")
	// Writes a counter into /dev/shm and keeps it in memory too; prints both on request.
	d, ask := startPythonLineServer(t, "dm-shm", `import os, sys, time, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    with open("/dev/shm/dm-counter", "w") as f:
        f.write(str(n))
    procs = len([p for p in os.listdir("/proc") if p.isdigit()])
    c.sendall(("%d %s %d %d\n" % (n, open("/dev/shm/dm-counter").read(), os.getpid(), procs)).encode())
    c.close()
`)
	var last string
	for i := 0; i < 3; i++ {
		waitAnswer(t, "shm counter", 10*time.Second, func() (bool, error) {
			var err error
			last, err = ask("")
			return err == nil, err
		})
	}
	if f := strings.Fields(last); len(f) != 4 || f[0] != "3" || f[1] != "3" || f[2] != "1" || f[3] != "1" {
		t.Fatalf("before the kill: %q, want counter 3 in memory and in /dev/shm, pid 1, one process in /proc", last)
	}
	if _, err := os.Stat("/dev/shm/dm-counter"); err == nil {
		t.Errorf("the program's /dev/shm file is in the host's /dev/shm: not private")
	}
	ps := d.procs()
	if len(ps) != 1 {
		t.Fatalf("procs %+v", ps)
	}
	// CRIU's kernel probe cache (the tmpfs ftrun mounts on /run/criu) stays out of
	// the container: a checkpoint that carried it would restore only where it exists.
	if mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", ps[0].pid)); err != nil || strings.Contains(string(mi), " /run/criu ") {
		t.Errorf("the container's mounts include /run/criu (or cannot be read: %v)", err)
	}
	for _, ns := range []string{"mnt", "ipc", "pid"} {
		mine, _ := os.Readlink("/proc/self/ns/" + ns)
		its, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", ps[0].pid, ns))
		if mine == its {
			t.Errorf("the program shares ftrun's %s namespace (%s)", ns, its)
		}
	}
	d.p.checkpoint()
	d.kill9()
	waitAnswer(t, "shm counter after kill -9", 20*time.Second, func() (bool, error) {
		var err error
		last, err = ask("")
		return err == nil, err
	})
	if f := strings.Fields(last); len(f) != 4 || f[0] != "4" || f[1] != "4" || f[2] != "1" {
		t.Errorf("after the restore: %q, want counter 4 in memory and in /dev/shm (restored with the checkpoint), pid 1", last)
	}
}

// mcConn speaks memcached's text protocol.
type mcConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialMC(addr string) (*mcConn, error) {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil, err
	}
	return &mcConn{c: c, r: bufio.NewReader(c)}, nil
}

func (m *mcConn) close() { m.c.Close() }

func (m *mcConn) set(k, v string) error {
	_ = m.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(m.c, "set %s 0 0 %d\r\n%s\r\n", k, len(v), v); err != nil {
		return err
	}
	line, err := m.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "STORED" {
		return fmt.Errorf("set %s: %q", k, line)
	}
	return nil
}

func (m *mcConn) get(k string) (string, error) {
	_ = m.c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(m.c, "get %s\r\n", k); err != nil {
		return "", err
	}
	line, err := m.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(line) == "END" {
		return "", nil
	}
	val, err := m.r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if end, err := m.r.ReadString('\n'); err != nil || strings.TrimSpace(end) != "END" {
		return "", fmt.Errorf("get %s: %q %v", k, end, err)
	}
	return strings.TrimSpace(val), nil
}

// outputWhileFtrunDead kills ftrun (-9) under a program that logs every request, asks
// it n times while no ftrun runs, starts ftrun again and returns the new ftrun. Every
// request must be answered by the same process, and its log lines must reach the new
// ftrun's log: the output relay outlived ftrun.
func outputWhileFtrunDead(t testing.TB, d *daemon, args []string, ask func(i int) error, logged func(i int) string) {
	t.Helper()
	before := d.p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 && s.State == supervisor.StateRunning })
	d.p.kill9()
	const n = 20
	for i := 0; i < n; i++ {
		if err := ask(i); err != nil {
			t.Fatalf("request %d while ftrun was dead: %v", i, err)
		}
	}
	if !slices.Contains(cgroupProcs(t, d.name), before.Pid) {
		t.Fatalf("the program (pid %d) died while ftrun was dead: %v", before.Pid, cgroupProcs(t, d.name))
	}
	d.p = startFtrun(t, d.state, nil, args...)
	after := d.p.waitFor("adopted", 20*time.Second, func(s supervisor.Status) bool { return s.State == supervisor.StateRunning && s.Pid > 0 })
	if after.Pid != before.Pid || after.Restores != 0 {
		t.Errorf("after ftrun's restart: pid %d (restores %d), want the same program %d adopted", after.Pid, after.Restores, before.Pid)
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < n; i++ {
		for !strings.Contains(d.p.log(), logged(i)) {
			if time.Now().After(deadline) {
				t.Fatalf("what the program wrote while ftrun was dead (%q) never reached the log", logged(i))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// python's http.server logs each request to stderr: while ftrun is dead it keeps
// answering (no EPIPE), and the lines come back with ftrun.
func TestDaemonPythonLogsWhileFtrunDead(t *testing.T) {
	requiresRoot(t, "python3")
	d, args, ask := startPythonServer(t, "dm-pylog")
	outputWhileFtrunDead(t, d, args, func(i int) error { return ask("dead=" + strconv.Itoa(i)) },
		func(i int) string { return fmt.Sprintf("GET /x.txt?dead=%d ", i) })
}

// startPythonServer runs python's http.server (it logs every request to stderr)
// under ftrun as service name, serving one file, and waits for its first checkpoint
// and its first answer. It returns the ftrun arguments it ran (without --discard), and
// ask, which fetches the file with query q and checks the answer.
func startPythonServer(t *testing.T, name string) (d *daemon, args []string, ask func(q string) error) {
	t.Helper()
	port := freePort(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x.txt"), []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args = []string{"--name", name, "--interval", "500ms", "--", "python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, strconv.Itoa(port)}
	t.Cleanup(func() { killService(t, name) })
	d = &daemon{t: t, name: name, state: t.TempDir()}
	d.p = startFtrun(t, d.state, nil, append([]string{"--discard"}, args...)...)
	d.p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	ask = func(q string) error {
		code, body, err := httpGet(fmt.Sprintf("http://127.0.0.1:%d/x.txt?%s", port, q))
		if err == nil && (code != 200 || body != "x\n") {
			err = fmt.Errorf("answer %d %q", code, body)
		}
		return err
	}
	waitAnswer(t, "python", 10*time.Second, func() (bool, error) { err := ask("warmup"); return err == nil, err })
	return d, args, ask
}

const goServer = `package main

import (
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
)

func main() {
	var n atomic.Int64
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Printf("request %s #%d\n", r.URL.RawQuery, n.Add(1))
		fmt.Fprintf(w, "%d\n", n.Load())
	})
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
`

// buildGoServer builds a net/http server that prints a line to stdout per request.
func buildGoServer(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte(goServer), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "goserver")
	cmd := exec.Command("go", "build", "-o", bin, src)
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the Go server: %v\n%s", err, out)
	}
	return bin
}

// A Go server that writes to stdout: without a reader it would die of SIGPIPE.
func TestDaemonGoStdoutWhileFtrunDead(t *testing.T) {
	requiresRoot(t)
	bin := buildGoServer(t)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	name := "dm-gostdout"
	args := []string{"--name", name, "--interval", "500ms", "--", bin, addr}
	t.Cleanup(func() { killService(t, name) })
	d := &daemon{t: t, name: name, state: t.TempDir()}
	d.p = startFtrun(t, d.state, nil, append([]string{"--discard"}, args...)...)
	d.p.waitFor("first checkpoint", 30*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	waitAnswer(t, "go server", 10*time.Second, func() (bool, error) {
		code, _, err := httpGet("http://" + addr + "/?warmup")
		return code == 200, err
	})
	outputWhileFtrunDead(t, d, args, func(i int) error {
		code, _, err := httpGet(fmt.Sprintf("http://%s/?dead%d", addr, i))
		if err == nil && code != 200 {
			err = fmt.Errorf("answer %d", code)
		}
		return err
	}, func(i int) string { return fmt.Sprintf("request dead%d #", i) })
}

// sqliteWriter commits rows 1, 2, 3, ... to an SQLite database, one transaction
// each, counting in memory (never reading the count back): after a restore, memory
// and database must agree, or rows go missing or repeat.
const sqliteWriter = `import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
n = 0
while True:
    n += 1
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (?)", (n,))
    db.execute("COMMIT")
    time.sleep(0.005)
`

// SQLite under --sync: kill -9 of the writer, restore, and the database keeps taking
// writes (its file keeps its inode) with no gap and no duplicate row.
func TestDaemonSQLiteSyncNoGapNoDuplicate(t *testing.T) {
	requiresRoot(t, "python3", "sqlite3")
	dir := t.TempDir()
	script := filepath.Join(dir, "writer.py")
	if err := os.WriteFile(script, []byte(sqliteWriter), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(data, "rows.db")
	d := startDaemon(t, "dm-sqlite", []string{"--sync", data}, "python3", script, db)
	rows := func() ([]int, error) {
		out, err := exec.Command("sqlite3", "-readonly", "-cmd", ".timeout 5000", db, "SELECT n FROM t ORDER BY rowid").Output()
		if err != nil {
			return nil, err
		}
		var ns []int
		for _, f := range strings.Fields(string(out)) {
			n, err := strconv.Atoi(f)
			if err != nil {
				return nil, err
			}
			ns = append(ns, n)
		}
		return ns, nil
	}
	for round := 0; round < 2; round++ {
		d.p.checkpoint()
		time.Sleep(200 * time.Millisecond) // rows committed after the checkpoint: lost with the kill, by design
		d.kill9()
		before, err := rows()
		if err != nil {
			t.Fatal(err)
		}
		// The restored writer must keep committing.
		waitAnswer(t, "writes after the restore", 20*time.Second, func() (bool, error) {
			after, err := rows()
			return err == nil && len(after) > len(before)+20, err
		})
	}
	st, _ := status(d.state)
	if st.Restores != 2 || st.FreshStarts != 1 {
		t.Errorf("restores %d, fresh starts %d: want 2 restores after the first start (log: %s)", st.Restores, st.FreshStarts, tail(d.p.log(), 10))
	}
	ns, err := rows()
	if err != nil {
		t.Fatal(err)
	}
	for i, n := range ns {
		if n != i+1 {
			t.Fatalf("row %d holds %d: memory and database disagree after a restore (gap or duplicate)", i+1, n)
		}
	}
	t.Logf("rows 1..%d, no gap, no duplicate, across 2 restores", len(ns))
	if ps := d.procs(); len(ps) != 1 {
		t.Errorf("want exactly one writer, got %+v", ps)
	}
	if strings.Contains(d.p.log(), "readonly database") {
		t.Errorf("the writer saw a read-only database: %s", tail(d.p.log(), 10))
	}
}

// slowAccept listens and accepts a connection only every few seconds, so clients wait
// in its accept queue, as they do at a busy server.
const slowAccept = `import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    time.sleep(3)
    c, _ = s.accept()
    c.sendall(b"hello\n")
    c.close()
`

// A client in the accept queue (connected, not yet accepted) must not fail the
// checkpoint: CRIU skips in-flight connections.
func TestDaemonInFlightConnectionDoesNotFailCheckpoint(t *testing.T) {
	requiresRoot(t, "python3")
	script := filepath.Join(t.TempDir(), "slow.py")
	if err := os.WriteFile(script, []byte(slowAccept), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	d := startDaemon(t, "dm-inflight", nil, "python3", script, strconv.Itoa(port))
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 3; i++ {
		var c net.Conn
		waitAnswer(t, "connect", 10*time.Second, func() (bool, error) {
			var err error
			c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
			return err == nil, err
		})
		conns = append(conns, c)
	}
	before, _ := status(d.state)
	resp, err := supervisor.Query(d.state, supervisor.Request{Op: "checkpoint"}, time.Minute)
	if err != nil {
		t.Fatalf("checkpoint with clients in the accept queue: %v", err)
	}
	if resp.Epoch <= before.Epoch {
		t.Fatalf("checkpoint epoch %d, want > %d", resp.Epoch, before.Epoch)
	}
	// The program was left running: the queued clients are still served.
	_ = conns[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	line, err := bufio.NewReader(conns[0]).ReadString('\n')
	if err != nil || line != "hello\n" {
		t.Errorf("queued client after the checkpoint: %q, %v", line, err)
	}
}

// pgCluster is a fresh postgres 15 cluster with Debian's defaults, owned by postgres.
type pgCluster struct {
	bin, data, sock string
	port            int
}

func newPgCluster(t testing.TB) *pgCluster {
	t.Helper()
	bin := "/usr/lib/postgresql/15/bin"
	if _, err := os.Stat(filepath.Join(bin, "postgres")); err != nil {
		t.Fatalf("postgres 15: %v (scripts/setup installs postgresql-15)", err)
	}
	// postgres must reach its directories: t.TempDir's parent is private to root.
	base, err := os.MkdirTemp("", "dm-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &pgCluster{bin: bin, data: filepath.Join(base, "data"), sock: filepath.Join(base, "sock"), port: freePort(t)}
	for dir, mode := range map[string]string{c.data: "700", c.sock: "755"} {
		if out, err := exec.Command("install", "-d", "-o", "postgres", "-g", "postgres", "-m", mode, dir).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v %s", dir, err, out)
		}
	}
	cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(bin, "initdb"), "-D", c.data, "-A", "trust", "-U", "postgres")
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	return c
}

func (c *pgCluster) argv() []string {
	return []string{filepath.Join(c.bin, "postgres"), "-D", c.data, "-k", c.sock, "-p", strconv.Itoa(c.port), "-c", "listen_addresses=127.0.0.1"}
}

// psql runs one statement and returns its unaligned output.
func (c *pgCluster) psql(sql string) (string, error) {
	cmd := exec.Command("psql", "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", "postgres", "-d", "postgres",
		"-v", "ON_ERROR_STOP=1", "-c", sql)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=2")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("psql %q: %v: %s", sql, err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// rows checks that table t holds exactly 1..n, once each.
func (c *pgCluster) rows(n int) error {
	got, err := c.psql("SELECT count(*), count(DISTINCT n), coalesce(min(n),0), coalesce(max(n),0) FROM t")
	if err != nil {
		return err
	}
	if want := fmt.Sprintf("%d|%d|%d|%d", n, n, min(n, 1), n); got != want {
		return fmt.Errorf("table t: count|distinct|min|max = %s, want %s", got, want)
	}
	return nil
}

func (c *pgCluster) commit(from, to int) error {
	_, err := c.psql(fmt.Sprintf("INSERT INTO t SELECT generate_series(%d, %d)", from, to))
	return err
}

// hostPid finds the host PID of a process of the daemon whose command line has word.
func (d *daemon) hostPid(word string) int {
	for _, p := range d.procs() {
		if strings.Contains(p.cmd, word) {
			return p.pid
		}
	}
	return 0
}

// postgres 15 run as postgres, with its default dynamic_shared_memory_type=posix
// (segments in the container's own /dev/shm) and its data directory under --sync:
// every committed row survives kill -9 of a backend (postgres' own crash recovery),
// of ftrun (adoption) and of the postmaster (a restore of the newest checkpoint,
// taken after the commit, with the data files of that checkpoint).
func TestDaemonPostgres(t *testing.T) {
	requiresRoot(t, "psql", "runuser")
	c := newPgCluster(t)
	name := "dm-postgres"
	args := append([]string{"--name", name, "--interval", "1s", "--user", "postgres", "--sync", c.data, "--"}, c.argv()...)
	t.Cleanup(func() { killService(t, name) })
	d := &daemon{t: t, name: name, state: t.TempDir()}
	d.p = startFtrun(t, d.state, nil, append([]string{"--discard"}, args...)...)
	d.p.waitFor("first checkpoint", 60*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	waitAnswer(t, "postgres", 20*time.Second, func() (bool, error) {
		_, err := c.psql("CREATE TABLE IF NOT EXISTS t (n int)")
		return err == nil, err
	})
	if ps := d.procs(); len(ps) == 0 || ps[0].uid != uidOf(t, "postgres") {
		t.Fatalf("postgres runs as %+v", ps)
	}
	n := 0
	commit := func(k int) {
		t.Helper()
		if err := c.commit(n+1, n+k); err != nil {
			t.Fatal(err)
		}
		n += k
	}
	commit(100)

	// A backend dies: the postmaster restarts its children and replays its WAL.
	if pid := d.hostPid("walwriter"); pid == 0 {
		t.Fatalf("no walwriter among %+v", d.procs())
	} else if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, "postgres after kill -9 of a backend", 30*time.Second, func() (bool, error) {
		err := c.rows(n)
		return err == nil, err
	})
	commit(100)
	d.p.checkpoint()

	// ftrun dies: the program runs on and the next ftrun adopts it.
	d.p.kill9()
	commit(100)
	d.p = startFtrun(t, d.state, nil, args...)
	d.p.waitFor("adopted", 30*time.Second, func(s supervisor.Status) bool { return s.State == supervisor.StateRunning && s.Adoptions > 0 })
	if err := c.rows(n); err != nil {
		t.Fatal(err)
	}

	// The postmaster dies: the newest checkpoint (taken after the last commit) comes
	// back with the data files of its epoch.
	commit(100)
	d.p.checkpoint()
	killed, _ := d.kill9()
	answered := waitAnswer(t, "postgres after kill -9 of the postmaster", 60*time.Second, func() (bool, error) {
		err := c.rows(n)
		return err == nil, err
	})
	t.Logf("postgres: kill -9 of the postmaster -> every committed row (%d) back in %s", n, answered.Sub(killed).Round(time.Millisecond))
	commit(100)
	if err := c.rows(n); err != nil {
		t.Fatalf("after the restore, new commits: %v", err)
	}
	st, _ := status(d.state)
	if st.FreshStarts != 0 {
		t.Errorf("fresh starts %d after the adoption: the restore fell through the ladder", st.FreshStarts)
	}
	d.onePostmaster(c)
}

// onePostmaster checks that exactly one postmaster of the cluster runs, in the cgroup.
func (d *daemon) onePostmaster(c *pgCluster) {
	d.t.Helper()
	n := 0
	for _, p := range d.procs() {
		if strings.Contains(p.cmd, "postgres -D "+c.data) {
			n++
		}
	}
	if n != 1 {
		d.t.Errorf("%d postmasters run, want exactly one: %+v", n, d.procs())
	}
}

// postgres without --sync: its data files are not in the checkpoints, so a restore
// would run older memory over newer files. ftrun refuses that loudly and starts
// postgres afresh, whose own recovery keeps every committed row, also those
// committed after the last checkpoint.
func TestDaemonPostgresWithoutSyncNeverRunsOldMemory(t *testing.T) {
	requiresRoot(t, "psql", "runuser")
	c := newPgCluster(t)
	name := "dm-pg-nosync"
	t.Cleanup(func() { killService(t, name) })
	// Checkpoints only when asked: the rows below are committed after the newest one.
	d := &daemon{t: t, name: name, state: t.TempDir()}
	d.p = startFtrun(t, d.state, nil, append([]string{"--name", name, "--interval", "1h", "--discard", "--user", "postgres", "--"}, c.argv()...)...)
	waitAnswer(t, "postgres", 20*time.Second, func() (bool, error) {
		_, err := c.psql("CREATE TABLE IF NOT EXISTS t (n int)")
		return err == nil, err
	})
	d.p.checkpoint()
	if err := c.commit(1, 500); err != nil {
		t.Fatal(err)
	}
	// Committed after the newest checkpoint: in the data files, not in any epoch.
	if _, err := c.psql("CHECKPOINT"); err != nil {
		t.Fatal(err)
	}
	before := d.p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.p.waitFor("fresh start", 60*time.Second, func(s supervisor.Status) bool {
		return s.FreshStarts > before.FreshStarts && s.State == supervisor.StateRunning
	})
	waitAnswer(t, "postgres after its fresh start", 60*time.Second, func() (bool, error) {
		err := c.rows(500)
		return err == nil, err
	})
	log := d.p.log()
	if !strings.Contains(log, "and --sync does not name") || !strings.Contains(log, "restoring would run older memory over newer data") {
		t.Errorf("the refused restore is not in the log:\n%s", tail(log, 30))
	}
	if !strings.Contains(log, "writes files outside --sync") {
		t.Errorf("no warning that the program writes files outside --sync")
	}
	d.onePostmaster(c)
}

// capSysResource reports whether this process's bounding set holds CAP_SYS_RESOURCE.
func capSysResource(t testing.TB) bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && mask&(1<<24) != 0
		}
	}
	return false
}

// postgres behind the output gate (--net --commit local): a COMMIT's acknowledgement
// leaves only once the epoch that holds it is on disk, so a kill -9 of the postmaster
// right after the client saw COMMIT loses nothing the client was told.
func TestDaemonPostgresGatedKeepsAcknowledgedCommits(t *testing.T) {
	requiresRoot(t, "psql", "runuser")
	e := newOutputEnv(t)
	c := newPgCluster(t)
	name := "dm-pg-gated"
	t.Cleanup(func() { killService(t, name) })
	argv := c.argv()
	argv[len(argv)-1] = "listen_addresses=*"
	// initdb trusts only local connections; the client is on another host here.
	hba, err := os.OpenFile(filepath.Join(c.data, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = hba.WriteString("host all all 198.18.0.0/15 trust\n")
	hba.Close()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--name", name, "--interval", "200ms", "--discard", "--net", "--addr", e.svc + "/24", "--commit", "local",
		"--user", "postgres", "--sync", c.data, "--"}, argv...)
	p := startFtrunIn(t, e.primary.nsPath(), t.TempDir(), nil, args...)
	p.waitFor("first durable checkpoint", 60*time.Second, func(s supervisor.Status) bool { return s.DurableEpoch > 0 })
	psql := func(sql string) (string, error) {
		cmd := e.client.cmd("psql", "-X", "-q", "-A", "-t", "-h", e.svc, "-p", strconv.Itoa(c.port), "-U", "postgres", "-d", "postgres",
			"-v", "ON_ERROR_STOP=1", "-c", sql)
		cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10")
		out, err := cmd.CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
		}
		return strings.TrimSpace(string(out)), err
	}
	waitAnswer(t, "postgres behind the gate", 60*time.Second, func() (bool, error) {
		_, err := psql("CREATE TABLE IF NOT EXISTS t (n int)")
		return err == nil, err
	})
	for round, rows := range []int{100} {
		if out, err := psql(fmt.Sprintf("INSERT INTO t SELECT generate_series(%d, %d)", rows-99, rows)); err != nil {
			t.Fatalf("commit: %v %s", err, out)
		}
		// The client saw COMMIT: kill at once, before any later epoch.
		st := p.waitFor("pid", time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
		if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		p.waitFor("restored", 60*time.Second, func(s supervisor.Status) bool { return s.Restores == round+1 && s.State == supervisor.StateRunning })
		var got string
		waitAnswer(t, "postgres after kill -9 behind the gate", 60*time.Second, func() (bool, error) {
			var err error
			got, err = psql("SELECT count(*), count(DISTINCT n) FROM t")
			return err == nil, err
		})
		if want := fmt.Sprintf("%d|%d", rows, rows); got != want {
			t.Fatalf("after kill -9 %d: count|distinct = %s, want %s: an acknowledged commit was lost", round+1, got, want)
		}
	}
}

// A checkpoint that catches a program holding a file it later renames away (the
// write-a-temporary-then-rename pattern, caught mid-write) names a file that is gone
// at restore time. ftrun says so in one line, names the file and the fix, and goes
// down the ladder (here: a fresh start), rather than passing CRIU an fd it cannot open.
func TestDaemonRefusesCheckpointOfFileGoneSince(t *testing.T) {
	requiresRoot(t, "python3")
	name := "it-gone-file"
	t.Cleanup(func() { killService(t, name) })
	dir := t.TempDir()
	tmp, final := filepath.Join(dir, "value.tmp"), filepath.Join(dir, "value")
	ready := filepath.Join(dir, "ready")
	// Opens the temporary file, says so, and keeps it open until told to finish.
	script := `import os, sys, time
f = open(sys.argv[1], "w"); f.write("1\n"); f.flush()
open(sys.argv[2], "w").close()
while True: time.sleep(0.05)
`
	state := t.TempDir()
	p := startFtrun(t, state, nil, "--name", name, "--interval", "1h", "--discard", "--", "python3", "-c", script, tmp, ready)
	waitAnswer(t, "the program holding its temporary file", 20*time.Second, func() (bool, error) {
		_, err := os.Stat(ready)
		return err == nil, err
	})
	p.checkpoint()
	// After the checkpoint: the temporary file becomes the real one (as the program
	// would do a moment later), and the program dies.
	if err := os.Rename(tmp, final); err != nil {
		t.Fatal(err)
	}
	before := p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
	if err := syscall.Kill(before.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.waitFor("fresh start", 30*time.Second, func(s supervisor.Status) bool {
		return s.FreshStarts > before.FreshStarts && s.State == supervisor.StateRunning
	})
	log := p.log()
	want := fmt.Sprintf("%q, which the program writes (or works in) and --sync does not name, is gone (renamed or deleted after the checkpoint)", tmp)
	if !strings.Contains(strings.ReplaceAll(log, `\"`, `"`), want) || !strings.Contains(log, "name its directory with --sync") {
		t.Errorf("the refused restore does not name the file gone since the checkpoint:\n%s", tail(log, 20))
	}
	if strings.Contains(log, "Unable to open fd") {
		t.Errorf("CRIU was handed the checkpoint anyway:\n%s", tail(log, 20))
	}
}

// A daemon started as its distribution's init script would, forking into the
// background (memcached -d): its first process exits 0, and the forked one dies with
// the container. ftrun cannot keep it, but must say why and how to run it instead.
func TestDaemonForkingIntoBackgroundNamedInLog(t *testing.T) {
	requiresRoot(t, "memcached")
	name := "m2-forking"
	t.Cleanup(func() { killService(t, name) })
	p := startFtrun(t, t.TempDir(), nil, "--name", name, "--discard", "--",
		"memcached", "-d", "-u", "memcache", "-l", "127.0.0.1", "-p", strconv.Itoa(freePort(t)))
	code, err := p.wait(30 * time.Second)
	if err != nil {
		t.Fatalf("ftrun under a program that forked into the background: %v", err)
	}
	if code != supervisor.ExitOK {
		t.Errorf("ftrun exited %d, want %d (the program exited 0)", code, supervisor.ExitOK)
	}
	if log := p.log(); !strings.Contains(log, "run it in the foreground") || !strings.Contains(log, "memcached without -d") {
		t.Errorf("the log does not say the program may have forked into the background: %s", tail(log, 10))
	}
	if ps := cgroupProcs(t, name); len(ps) != 0 {
		t.Errorf("processes left in the cgroup: %v", ps)
	}
}

// relayOf finds the running output relay of service name (by the cgroup it watches).
func relayOf(t testing.TB, name string) int {
	t.Helper()
	want := []byte(`"Stage":"run","Procs":"` + filepath.Join(cgroup2Mount(t), "ftrun", name, "cgroup.procs") + `"`)
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil && strings.Contains(string(env), string(want)) {
			return pid
		}
	}
	t.Fatalf("no output relay of %q runs", name)
	return 0
}

// The output relay itself is killed (kill -9, as an OOM kill or a careless pkill
// would): python's http.server, which logs every request to stderr, keeps answering
// (its pipe still has a reader: ftrun), ftrun starts a new relay on the same pipes
// and says so, the lines reach the log, and a kill -9 of ftrun afterwards is survived
// as before. `killall ftrun` does not match the relay.
func TestDaemonOutputRelayKilled(t *testing.T) {
	requiresRoot(t, "python3")
	name := "m2-relaykill"
	d, args, ask := startPythonServer(t, name)
	relay := relayOf(t, name)
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", relay)); strings.TrimSpace(string(comm)) != "ftrun-relay" {
		t.Errorf("the relay's comm is %q, want ftrun-relay (killall ftrun would take it)", comm)
	}
	pid := d.p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 }).Pid
	if err := syscall.Kill(relay, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Lines a dying relay still reads are lost with it (the notice says so): ask once
	// it is gone.
	waitAnswer(t, "the relay's death", 10*time.Second, func() (bool, error) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", relay))
		return err != nil || strings.Contains(string(stat), ") Z "), nil
	})
	for i := 0; i < 50; i++ {
		if err := ask("norelay=" + strconv.Itoa(i)); err != nil {
			t.Fatalf("request %d after the relay's death: %v", i, err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 50; i++ {
		for !strings.Contains(d.p.log(), fmt.Sprintf("GET /x.txt?norelay=%d ", i)) {
			if time.Now().After(deadline) {
				t.Fatalf("request %d's log line never reached the log: %s", i, tail(d.p.log(), 10))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if !strings.Contains(d.p.log(), "output relay died: a new one reads") {
		t.Errorf("the log does not say the relay died: %s", tail(d.p.log(), 10))
	}
	if st, _ := status(d.state); st.Pid != pid || st.Restores != 0 {
		t.Errorf("after the relay's death: pid %d (was %d), restores %d: want the same program", st.Pid, pid, st.Restores)
	}
	if again := relayOf(t, name); again == relay {
		t.Errorf("the dead relay %d is still the one", relay)
	}
	outputWhileFtrunDead(t, d, args, func(i int) error { return ask("dead=" + strconv.Itoa(i)) },
		func(i int) string { return fmt.Sprintf("GET /x.txt?dead=%d ", i) })
}

// ftrun and its output relay die together (pkill ftrun matches both): the program's
// writes fail until the next ftrun, which adopts it and puts its own pipes under a
// new relay, so a later kill -9 of ftrun alone is survived as usual (it keeps
// answering, and its lines reach the ftrun after).
func TestDaemonFtrunAndRelayKilledTogether(t *testing.T) {
	requiresRoot(t, "python3")
	name := "m2-bothkilled"
	d, args, ask := startPythonServer(t, name)
	pid := d.p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 }).Pid
	relay := relayOf(t, name)
	if err := syscall.Kill(relay, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.p.kill9()
	d.p = startFtrun(t, d.state, nil, args...)
	d.p.waitFor("adopted", 20*time.Second, func(s supervisor.Status) bool { return s.State == supervisor.StateRunning && s.Pid == pid })
	for i := 0; i < 10; i++ {
		if err := ask("adopted=" + strconv.Itoa(i)); err != nil {
			t.Fatalf("request %d after the adoption: %v", i, err)
		}
	}
	if log := d.p.log(); !strings.Contains(log, "a new one reads its pipes") {
		t.Errorf("the log does not say the relay was replaced: %s", tail(log, 10))
	}
	if again := relayOf(t, name); again == relay {
		t.Fatalf("the dead relay %d is still the one", relay)
	}
	outputWhileFtrunDead(t, d, args, func(i int) error { return ask("dead=" + strconv.Itoa(i)) },
		func(i int) string { return fmt.Sprintf("GET /x.txt?dead=%d ", i) })
}

// A /dev/shm emptied again after holding files is dumped as an empty tmpfs (the
// project's CRIU patch writes its archive without running tar): the restore gives the
// program an empty /dev/shm with the mode it had, not the files of an older epoch.
func TestDaemonContainerShmEmptiedRestoresEmpty(t *testing.T) {
	requiresRoot(t, "python3")
	// Each connection sends one letter: w writes a file in /dev/shm, d deletes it,
	// anything else asks what /dev/shm holds and its mode.
	d, ask := startPythonLineServer(t, "dm-shm-empty", `import os, sys, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
while True:
    c, _ = s.accept()
    op = c.recv(1)
    if op == b"w":
        open("/dev/shm/dm-empty", "w").write("x")
    elif op == b"d":
        os.unlink("/dev/shm/dm-empty")
    c.sendall(("%s %o\n" % (",".join(sorted(os.listdir("/dev/shm"))) or "-", os.stat("/dev/shm").st_mode & 0o7777)).encode())
    c.close()
`)
	var got string
	step := func(what, op, want string) {
		t.Helper()
		waitAnswer(t, what, 20*time.Second, func() (bool, error) {
			var err error
			got, err = ask(op)
			got = strings.TrimSpace(got)
			return err == nil, err
		})
		if got != want {
			t.Fatalf("%s: /dev/shm holds %q, want %q", what, got, want)
		}
	}
	step("write a file", "w", "dm-empty 1777")
	d.p.checkpoint() // an epoch with the file in /dev/shm
	step("delete it", "d", "- 1777")
	d.p.checkpoint() // the newest epoch: /dev/shm empty again
	d.kill9()
	step("after kill -9", "s", "- 1777")
}

// startPythonLineServer runs the python program src under ftrun, on a free port
// (its argv[1]), and returns ask: one connection that sends req (if any) and reads
// one line of answer.
func startPythonLineServer(t *testing.T, name, src string) (*daemon, func(req string) (string, error)) {
	t.Helper()
	script := filepath.Join(t.TempDir(), name+".py")
	if err := os.WriteFile(script, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d := startDaemon(t, name, nil, "python3", script, strconv.Itoa(port))
	return d, func(req string) (string, error) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return "", err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if req != "" {
			if _, err := c.Write([]byte(req)); err != nil {
				return "", err
			}
		}
		return bufio.NewReader(c).ReadString('\n')
	}
}

package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// BenchmarkDaemonRecovery measures, per real daemon, kill -9 -> first correct answer
// under ftrun and, as the baseline in the same run, under a plain restart (what
// systemd's Restart=always does: the whole process group is killed and the daemon
// started again), and reports what the plain restart lost. The README table comes
// from:
//
//	go test -run '^$' -bench BenchmarkDaemonRecovery -benchtime 3x ./integration/
//
// Metrics: ms/answer is the mean time to the first correct answer; lost/op is how
// much of the state the daemon held was gone afterwards (keys, the counter, rows).
// Built with -tags matrix (after scripts/setup --jvm) it has a JVM case too.
func BenchmarkDaemonRecovery(b *testing.B) {
	requiresRoot(b, "memcached", "nginx", "psql", "runuser", "python3", "sqlite3")
	for _, dc := range append(daemonCases(b), matrixDaemonCases...) {
		for _, mode := range []string{"ftrun", "plain"} {
			b.Run(dc.name+"/"+mode, func(b *testing.B) {
				var total time.Duration
				var lost int
				for i := 0; i < b.N; i++ {
					took, l := recoverOnce(b, dc, mode == "ftrun", i)
					total += took
					lost += l
				}
				b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/answer")
				b.ReportMetric(float64(lost)/float64(b.N), "lost/op")
				b.ReportMetric(0, "ns/op")
				b.Logf("%s %s: kill -9 -> first correct answer %s on average, lost %d %s per kill",
					dc.name, mode, (total / time.Duration(b.N)).Round(time.Millisecond), lost/b.N, dc.unit)
			})
		}
	}
}

// daemonCase is one daemon of the recovery table.
type daemonCase struct {
	name string
	unit string // what lost/op counts
	// start prepares a fresh instance.
	start func(b *testing.B) instance
}

// matrixDaemonCases are the cases whose daemons scripts/setup installs only with
// --jvm; the files built with the matrix tag add them.
var matrixDaemonCases []daemonCase

// instance is one prepared daemon: its argv (a plain restart runs it as asUser when
// set; ftrun adds flags), how to load its state, and how much of it an answer shows.
// atKill, when set, is told when the kill happened (a writer's first answer is the
// first row it commits afterwards).
type instance struct {
	argv   []string
	asUser string
	flags  []string
	load   func() error
	kept   func() (int, error)
	want   int
	atKill func(time.Time)
}

func daemonCases(b *testing.B) []daemonCase {
	return []daemonCase{
		{name: "memcached", unit: "keys", start: func(b *testing.B) instance {
			port := freePort(b)
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			const n = 1000
			load := func() error {
				c, err := dialMC(addr)
				if err != nil {
					return err
				}
				defer c.close()
				for i := 0; i < n; i++ {
					if err := c.set(fmt.Sprintf("k%d", i), "v"); err != nil {
						return err
					}
				}
				return nil
			}
			kept := func() (int, error) {
				c, err := dialMC(addr)
				if err != nil {
					return 0, err
				}
				defer c.close()
				k := 0
				for i := 0; i < n; i++ {
					v, err := c.get(fmt.Sprintf("k%d", i))
					if err != nil {
						return 0, err
					}
					if v == "v" {
						k++
					}
				}
				return k, nil
			}
			return instance{argv: []string{"memcached", "-u", "memcache", "-t", "4", "-l", "127.0.0.1", "-p", strconv.Itoa(port)}, load: load, kept: kept, want: n}
		}},
		{name: "nginx", unit: "requests", start: func(b *testing.B) instance {
			port := freePort(b)
			conf := nginxConfig(b, b.TempDir(), port)
			url := fmt.Sprintf("http://127.0.0.1:%d/", port)
			kept := func() (int, error) {
				code, body, err := httpGet(url)
				if err != nil || code != 200 || !strings.Contains(body, "Welcome to nginx") {
					return 0, fmt.Errorf("answer %d: %v", code, err)
				}
				return 1, nil
			}
			return instance{argv: []string{"nginx", "-c", conf, "-g", "daemon off;"}, load: func() error { return nil }, kept: kept, want: 1}
		}},
		{name: "python-http", unit: "requests", start: func(b *testing.B) instance {
			dir := b.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "x.txt"), []byte("x\n"), 0o644); err != nil {
				b.Fatal(err)
			}
			port := freePort(b)
			url := fmt.Sprintf("http://127.0.0.1:%d/x.txt", port)
			kept := func() (int, error) {
				code, body, err := httpGet(url)
				if err != nil || code != 200 || body != "x\n" {
					return 0, fmt.Errorf("answer %d %q: %v", code, body, err)
				}
				return 1, nil
			}
			return instance{argv: []string{"python3", "-m", "http.server", "--bind", "127.0.0.1", "--directory", dir, strconv.Itoa(port)},
				load: func() error { return nil }, kept: kept, want: 1}
		}},
		{name: "go-counter", unit: "counts", start: func(b *testing.B) instance {
			bin := buildGoServer(b)
			addr := fmt.Sprintf("127.0.0.1:%d", freePort(b))
			const n = 100
			load := func() error {
				for i := 0; i < n; i++ {
					if _, _, err := httpGet("http://" + addr + "/"); err != nil {
						return err
					}
				}
				return nil
			}
			kept := func() (int, error) {
				code, body, err := httpGet("http://" + addr + "/")
				if err != nil || code != 200 {
					return 0, fmt.Errorf("answer %d: %v", code, err)
				}
				// The counter is either back (past n) or started again from nothing.
				v, err := strconv.Atoi(strings.TrimSpace(body))
				if v > n {
					return n, err
				}
				return 0, err
			}
			return instance{argv: []string{bin, addr}, load: load, kept: kept, want: n}
		}},
		{name: "postgres", unit: "rows", start: func(b *testing.B) instance {
			c := newPgCluster(b)
			const n = 1000
			load := func() error {
				if _, err := c.psql("CREATE TABLE t (n int)"); err != nil {
					return err
				}
				return c.commit(1, n)
			}
			kept := func() (int, error) {
				out, err := c.psql("SELECT count(*) FROM t")
				if err != nil && strings.Contains(err.Error(), "does not exist") {
					return 0, nil // answering, without the table
				}
				if err != nil {
					return 0, err
				}
				return strconv.Atoi(out)
			}
			return instance{argv: c.argv(), asUser: "postgres", flags: []string{"--user", "postgres", "--sync", c.data}, load: load, kept: kept, want: n}
		}},
		{name: "sqlite", unit: "rows", start: sqliteCase},
	}
}

// sqliteTimedWriter is sqliteWriter with each row's commit time next to it: the
// benchmark tells rows committed after the kill from those put back by a restore.
const sqliteTimedWriter = `import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER, ts REAL)")
n = 0
while True:
    n += 1
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (?, ?)", (n, time.time()))
    db.execute("COMMIT")
    time.sleep(0.005)
`

// sqliteCase is an SQLite writer under --sync, as TestDaemonSQLiteSyncNoGapNoDuplicate
// runs it. Its answer is the first row committed after the kill; it is correct when
// the rows are still 1, 2, 3, ... (memory and file agree). A plain restart keeps the
// committed rows but not the writer's count: it commits 1, 2, ... again, duplicates.
func sqliteCase(b *testing.B) instance {
	dir := b.TempDir()
	script := filepath.Join(dir, "writer.py")
	if err := os.WriteFile(script, []byte(sqliteTimedWriter), 0o644); err != nil {
		b.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		b.Fatal(err)
	}
	db := filepath.Join(data, "rows.db")
	const n = 200
	type row struct {
		n  int
		ts float64
	}
	rows := func() ([]row, error) {
		out, err := exec.Command("sqlite3", "-readonly", "-cmd", ".timeout 5000", db, "SELECT n, ts FROM t ORDER BY rowid").Output()
		if err != nil {
			return nil, fmt.Errorf("sqlite3: %w", err)
		}
		var rs []row
		for _, l := range strings.Fields(string(out)) {
			nf, tf, _ := strings.Cut(l, "|")
			var r row
			if r.n, err = strconv.Atoi(nf); err != nil {
				return nil, err
			}
			if r.ts, err = strconv.ParseFloat(tf, 64); err != nil {
				return nil, err
			}
			rs = append(rs, r)
		}
		return rs, nil
	}
	var killedAt float64 // 0 before the kill: the first answer is any row
	load := func() error {
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if rs, err := rows(); err == nil && len(rs) >= n {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
		return fmt.Errorf("the writer did not commit %d rows in 30s", n)
	}
	kept := func() (int, error) {
		rs, err := rows()
		if err != nil {
			return 0, err
		}
		if len(rs) == 0 || rs[len(rs)-1].ts <= killedAt {
			return 0, fmt.Errorf("no row committed since the kill (%d rows)", len(rs))
		}
		for i, r := range rs {
			if r.n != i+1 {
				return 0, nil // answering, but its count and the file disagree
			}
		}
		if len(rs) < n {
			return len(rs), nil
		}
		return n, nil
	}
	return instance{argv: []string{"python3", script, db}, flags: []string{"--sync", data}, load: load, kept: kept, want: n,
		atKill: func(t time.Time) { killedAt = float64(t.UnixNano()) / 1e9 }}
}

// recoverOnce starts a fresh instance of dc, loads its state, kills it with -9 and
// returns how long the first correct answer took and how much state was lost.
func recoverOnce(b *testing.B, dc daemonCase, withFtrun bool, i int) (time.Duration, int) {
	b.Helper()
	in := dc.start(b)
	argv, asUser, load, kept, want := in.argv, in.asUser, in.load, in.kept, in.want
	ready := func() (bool, error) { _, err := kept(); return err == nil, err }
	var kill func()
	var restart func()
	name := fmt.Sprintf("dm-bench-%s-%d", dc.name, i)
	if withFtrun {
		b.Cleanup(func() { killService(b, name) })
		state := b.TempDir()
		flags := append([]string{"--name", name, "--interval", "500ms", "--discard"}, in.flags...)
		p := startFtrun(b, state, nil, append(append(flags, "--"), argv...)...)
		p.waitFor("first checkpoint", 60*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
		waitAnswer(b, dc.name, 30*time.Second, ready)
		if err := load(); err != nil {
			b.Fatal(err)
		}
		p.checkpoint()
		st := p.waitFor("running", 5*time.Second, func(s supervisor.Status) bool { return s.Pid > 0 })
		kill = func() { _ = syscall.Kill(st.Pid, syscall.SIGKILL) }
		restart = func() {}
		defer p.stop()
	} else {
		start := func() *exec.Cmd {
			full := argv
			if asUser != "" {
				// setpriv execs the daemon itself (runuser forks): the group kill reaches it.
				full = append([]string{"setpriv", "--reuid", asUser, "--regid", asUser, "--init-groups"}, argv...)
			}
			cmd := exec.Command(full[0], full[1:]...)
			cmd.Dir = "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			return cmd
		}
		cmd := start()
		b.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); _ = cmd.Wait() })
		waitAnswer(b, dc.name, 30*time.Second, ready)
		if err := load(); err != nil {
			b.Fatal(err)
		}
		// What systemd does: the whole group goes, then the daemon starts again.
		kill = func() {
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			_ = cmd.Wait()
		}
		restart = func() {
			cmd = start()
		}
	}
	b.StartTimer()
	killed := time.Now()
	kill()
	if in.atKill != nil {
		// After the signal: nothing the killed writer commits can be taken for an answer.
		in.atKill(time.Now())
	}
	restart()
	answered := waitAnswer(b, dc.name+" after kill -9", 60*time.Second, ready)
	b.StopTimer()
	got, err := kept()
	if err != nil {
		b.Fatal(err)
	}
	if withFtrun && got != want {
		b.Errorf("%s under ftrun: %d of %d %s kept", dc.name, got, want, dc.unit)
	}
	return answered.Sub(killed), want - got
}

//go:build matrix

package integration

// The JVM part of the real-daemon matrix. A JDK takes too long to install for CI, so
// these tests build only with the matrix tag: `make matrix` installs one
// (scripts/setup --jvm) and runs them. Built, they never skip: a missing JDK fails.

import (
	"fmt"
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

// javaCounter is an HTTP server keeping a counter in memory: /inc adds one and
// answers the new value (logging a line to stdout), /get answers it unchanged. Its
// handlers run on a pool of threads, next to the JVM's own (GC, JIT, signal ones).
const javaCounter = `import com.sun.net.httpserver.HttpServer;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.Executors;
import java.util.concurrent.atomic.AtomicLong;

public class Counter {
    public static void main(String[] args) throws Exception {
        AtomicLong n = new AtomicLong();
        HttpServer s = HttpServer.create(new InetSocketAddress("127.0.0.1", Integer.parseInt(args[0])), 64);
        s.createContext("/", ex -> {
            long v = ex.getRequestURI().getPath().equals("/inc") ? n.incrementAndGet() : n.get();
            if (ex.getRequestURI().getPath().equals("/inc")) {
                System.out.println("request " + ex.getRequestURI().getRawQuery() + " #" + v);
            }
            byte[] body = (v + "\n").getBytes(StandardCharsets.UTF_8);
            ex.sendResponseHeaders(200, body.length);
            try (OutputStream o = ex.getResponseBody()) { o.write(body); }
        });
        s.setExecutor(Executors.newFixedThreadPool(4));
        s.start();
    }
}
`

// requiresJVM is requiresRoot plus a JDK, which is not skipped but fails: the matrix
// tag means the caller asked for the JVM tests.
func requiresJVM(t testing.TB) {
	t.Helper()
	requiresRoot(t)
	for _, tool := range []string{"java", "javac"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed: run scripts/setup --jvm (make matrix does)", tool)
		}
	}
}

// buildJavaCounter compiles javaCounter and returns its class directory.
func buildJavaCounter(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Counter.java"), []byte(javaCounter), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("javac", "-d", dir, filepath.Join(dir, "Counter.java")).CombinedOutput(); err != nil {
		t.Fatalf("javac: %v\n%s", err, out)
	}
	return dir
}

// javaCounterSource writes javaCounter where any user can read it (t.TempDir's parent
// is private to root) and returns its path, for `java Counter.java`.
func javaCounterSource(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "m2-jvm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(dir, "Counter.java")
	if err := os.WriteFile(src, []byte(javaCounter), 0o644); err != nil {
		t.Fatal(err)
	}
	return src
}

// removePerfDataAfter removes, once the test is over, the perf-data file a JVM of
// user left in /tmp (as PID 1 of its container), unless some JVM still maps it: that
// one's restores would need it.
func removePerfDataAfter(t testing.TB, user string) {
	path := "/tmp/hsperfdata_" + user + "/1"
	t.Cleanup(func() {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if maps, err := os.ReadFile("/proc/" + e.Name() + "/maps"); err == nil && strings.Contains(string(maps), path) {
				return
			}
		}
		_ = os.Remove(path)
	})
}

// counterGet asks the counter at addr for path ("inc" or "get") and parses the value.
func counterGet(addr, path string) (int, error) {
	code, body, err := httpGet("http://" + addr + "/" + path)
	if err != nil {
		return 0, err
	}
	if code != 200 {
		return 0, fmt.Errorf("answer %d %q", code, body)
	}
	return strconv.Atoi(strings.TrimSpace(body))
}

// jvmMapsUnder lists the files under dir that the process pid maps.
func jvmMapsUnder(t testing.TB, pid int, dir string) []string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(data), "\n") {
		if f := strings.Fields(l); len(f) >= 6 && strings.HasPrefix(f[5], dir) && !slices.Contains(out, f[5]) {
			out = append(out, f[5])
		}
	}
	return out
}

// A JVM in its default configuration: its counter survives two kill -9s of the JVM
// (each restore answers the value of the checkpoint, exactly one JVM afterwards), a
// kill -9 of ftrun (the JVM answers and logs meanwhile; the next ftrun adopts it and
// gets the lines), and a kill -9 of the adopted JVM.
func TestDaemonJVMCounter(t *testing.T) {
	requiresJVM(t)
	classes := buildJavaCounter(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	name := "m2-jvm"
	args := []string{"--name", name, "--interval", "1s", "--", "java", "-cp", classes, "Counter", strings.Split(addr, ":")[1]}
	removePerfDataAfter(t, "root")
	t.Cleanup(func() { killService(t, name) })
	d := &daemon{t: t, name: name, state: t.TempDir()}
	d.p = startFtrun(t, d.state, nil, append([]string{"--discard"}, args...)...)
	d.p.waitFor("first checkpoint", 60*time.Second, func(s supervisor.Status) bool { return s.Epoch > 0 })
	waitAnswer(t, "the JVM", 30*time.Second, func() (bool, error) { _, err := counterGet(addr, "get"); return err == nil, err })

	n := 0
	inc := func(k int) {
		t.Helper()
		for i := 0; i < k; i++ {
			v, err := counterGet(addr, "inc?n"+strconv.Itoa(n+1))
			if err != nil {
				t.Fatal(err)
			}
			if n++; v != n {
				t.Fatalf("counter answered %d, want %d", v, n)
			}
		}
	}
	// killAndCheck kills the JVM with -9 after a checkpoint that holds n and checks
	// that the restored one goes on from n.
	killAndCheck := func(what string) {
		t.Helper()
		d.p.checkpoint()
		killed, before := d.kill9()
		answered := waitAnswer(t, "the JVM after "+what, 60*time.Second, func() (bool, error) {
			v, err := counterGet(addr, "get")
			return err == nil && v == n, err
		})
		t.Logf("JVM: %s -> the counter (%d) answered in %s", what, n, answered.Sub(killed).Round(time.Millisecond))
		if st, _ := status(d.state); st.Pid == before.Pid || st.FreshStarts != before.FreshStarts {
			t.Fatalf("after %s: pid %d (was %d), fresh starts %d (was %d): want a restore", what, st.Pid, before.Pid, st.FreshStarts, before.FreshStarts)
		}
		inc(10)
		if ps := d.procs(); len(ps) != 1 {
			t.Fatalf("after %s: want exactly one JVM, got %+v", what, ps)
		}
	}

	inc(100)
	killAndCheck("kill -9 of the JVM")
	killAndCheck("a second kill -9 of the JVM")

	outputWhileFtrunDead(t, d, args, func(i int) error {
		v, err := counterGet(addr, "inc?dead"+strconv.Itoa(i))
		if err == nil && v != n+1 {
			err = fmt.Errorf("counter answered %d, want %d", v, n+1)
		}
		if err == nil {
			n++
		}
		return err
	}, func(i int) string { return fmt.Sprintf("request dead%d #", i) })
	inc(10)
	killAndCheck("kill -9 of the adopted JVM")

	st, _ := status(d.state)
	if st.Restores != 1 || st.Adoptions != 1 || st.FreshStarts != 0 {
		t.Errorf("the adopting ftrun: restores %d, adoptions %d, fresh starts %d: want 1, 1, 0", st.Restores, st.Adoptions, st.FreshStarts)
	}
	if out, _ := exec.Command("pgrep", "-f", "^java .*Counter "+strings.Split(addr, ":")[1]).Output(); len(strings.Fields(string(out))) != 1 {
		t.Errorf("JVMs serving %s on this host: %q, want exactly one", addr, out)
	}
}

// By default the JVM maps its performance counters from a file in the host's /tmp
// (/tmp/hsperfdata_USER/PID, PID being 1 in ftrun's PID namespace, so every JVM under
// ftrun shares one path). The file is not part of a checkpoint: once anything removes
// it (a JVM under ftrun that exits cleanly, a /tmp cleaner), every checkpoint taken
// before fails to restore (CRIU: "Can't open file tmp/hsperfdata_root/1"). With
// -XX:+PerfDisableSharedMem the counters live in the JVM's own memory: nothing in /tmp
// is mapped (so nothing outside the checkpoint can go missing), and restores keep the
// counter. This JVM also runs as another user (--user nobody) and as a single-file
// source program (java Counter.java, compiled in the JVM at start).
func TestDaemonJVMPerfDataNotInTmp(t *testing.T) {
	requiresJVM(t)
	src := javaCounterSource(t)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	d := startDaemon(t, "m2-jvm-perf", []string{"--interval", "1s", "--user", "nobody"}, "java", "-XX:+PerfDisableSharedMem", src, strconv.Itoa(port))
	waitAnswer(t, "the JVM", 60*time.Second, func() (bool, error) { _, err := counterGet(addr, "get"); return err == nil, err })
	for i := 1; i <= 50; i++ {
		if v, err := counterGet(addr, "inc"); err != nil || v != i {
			t.Fatalf("counter answered %d (%v), want %d", v, err, i)
		}
	}
	st, _ := status(d.state)
	if maps := jvmMapsUnder(t, st.Pid, "/tmp/"); len(maps) != 0 {
		t.Fatalf("with -XX:+PerfDisableSharedMem the JVM still maps %v", maps)
	}
	for round := 0; round < 2; round++ {
		d.p.checkpoint()
		killed, _ := d.kill9()
		answered := waitAnswer(t, "the JVM after kill -9", 60*time.Second, func() (bool, error) {
			v, err := counterGet(addr, "get")
			return err == nil && v == 50, err
		})
		t.Logf("JVM as nobody, -XX:+PerfDisableSharedMem: kill -9 -> the counter (50) answered in %s", answered.Sub(killed).Round(time.Millisecond))
	}
	if st, _ := status(d.state); st.FreshStarts != 1 || st.Restores != 2 {
		t.Errorf("restores %d, fresh starts %d: want 2 restores of the first start", st.Restores, st.FreshStarts)
	}
	ps := d.procs()
	if len(ps) != 1 || ps[0].uid != uidOf(t, "nobody") {
		t.Errorf("want exactly one JVM, run by nobody, got %+v", ps)
	}
	if maps := jvmMapsUnder(t, ps[0].pid, "/tmp/"); len(maps) != 0 {
		t.Errorf("the restored JVM maps %v", maps)
	}
}

// The limit TestDaemonJVMPerfDataNotInTmp works around, as a user meets it: a JVM in
// its default configuration whose perf-data file in /tmp is removed cannot be
// restored from the checkpoints taken before. It must fail loudly (the file named in
// the log) and the ladder must end in a fresh start that answers, never in a JVM
// without its mapping.
func TestDaemonJVMPerfDataFileGoneFailsLoudly(t *testing.T) {
	requiresJVM(t)
	src := javaCounterSource(t)
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// As nobody, so the file is /tmp/hsperfdata_nobody/1, which only this test's JVM uses.
	removePerfDataAfter(t, "nobody")
	d := startDaemon(t, "m2-jvm-gone", []string{"--interval", "1s", "--user", "nobody"}, "java", src, strconv.Itoa(port))
	waitAnswer(t, "the JVM", 60*time.Second, func() (bool, error) { _, err := counterGet(addr, "get"); return err == nil, err })
	for i := 1; i <= 10; i++ {
		if _, err := counterGet(addr, "inc"); err != nil {
			t.Fatal(err)
		}
	}
	d.p.checkpoint()
	st, _ := status(d.state)
	maps := jvmMapsUnder(t, st.Pid, "/tmp/hsperfdata_")
	if len(maps) != 1 {
		t.Fatalf("the JVM maps %v, want its one perf-data file", maps)
	}
	if err := os.Remove(maps[0]); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(st.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	d.p.waitFor("a fresh start", 60*time.Second, func(s supervisor.Status) bool {
		return s.FreshStarts > st.FreshStarts && s.State == supervisor.StateRunning
	})
	waitAnswer(t, "the fresh JVM", 60*time.Second, func() (bool, error) {
		v, err := counterGet(addr, "get")
		return err == nil && v == 0, err
	})
	log := d.p.log()
	if want := "Can't open file " + strings.TrimPrefix(maps[0], "/") + " on restore"; !strings.Contains(log, want) {
		t.Errorf("the log does not name the missing file (%q): %s", want, tail(log, 15))
	}
	if !strings.Contains(log, "every checkpoint was tried") {
		t.Errorf("the log does not say why the state was lost: %s", tail(log, 15))
	}
	if ps := d.procs(); len(ps) != 1 {
		t.Errorf("want exactly one JVM, got %+v", ps)
	}
}

// The JVM's row of BenchmarkDaemonRecovery: the counter at 100 in a JVM in its
// default configuration.
func init() {
	matrixDaemonCases = append(matrixDaemonCases, daemonCase{name: "jvm", unit: "counts", start: func(b *testing.B) instance {
		requiresJVM(b)
		classes := buildJavaCounter(b)
		port := freePort(b)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		const n = 100
		load := func() error {
			for i := 0; i < n; i++ {
				if _, err := counterGet(addr, "inc"); err != nil {
					return err
				}
			}
			return nil
		}
		kept := func() (int, error) {
			v, err := counterGet(addr, "get")
			if err != nil {
				return 0, err
			}
			return v, nil // n when restored, 0 after a plain restart
		}
		return instance{argv: []string{"java", "-cp", classes, "Counter", strconv.Itoa(port)}, load: load, kept: kept, want: n}
	}})
}

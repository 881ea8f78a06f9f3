package watchdog

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

func TestFirstLine(t *testing.T) {
	long := strings.Repeat("é", 150) // 300 bytes
	tests := []struct{ in, want string }{
		{"", ""},
		{"  \n\n", ""},
		{"boom\nsecond", "boom"},
		{"\n  boom  \nsecond", "boom"},
		{strings.Repeat("x", 300), strings.Repeat("x", 200)},
		{long, strings.Repeat("é", 100)},
		{"a" + long, "a" + strings.Repeat("é", 99)},
	}
	for _, tt := range tests {
		if got := firstLine([]byte(tt.in)); got != tt.want {
			t.Errorf("firstLine(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestCapBuffer(t *testing.T) {
	var b capBuffer
	chunk := make([]byte, maxCapture/2+1)
	for i := 0; i < 3; i++ {
		if n, err := b.Write(chunk); n != len(chunk) || err != nil {
			t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(chunk))
		}
	}
	if got := len(b.Bytes()); got != maxCapture {
		t.Errorf("kept %d bytes, want %d", got, maxCapture)
	}
}

func checkWithin(t *testing.T, p Probe, timeout time.Duration) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return p.Check(ctx)
}

func TestCommandProbe(t *testing.T) {
	tests := []struct {
		name    string
		cmd     string
		wantErr []string // substrings; none means the probe passes
		absent  string
	}{
		{name: "true", cmd: "true"},
		{name: "pipeline", cmd: "echo PONG | grep -q PONG"},
		{name: "false", cmd: "false", wantErr: []string{`command "false"`, "exit status 1"}},
		{
			name:    "first line of combined output",
			cmd:     "echo '  connection refused  ' >&2; printf 'se%sond\\n' c; exit 3",
			wantErr: []string{`: exit status 3: connection refused`},
			absent:  "second",
		},
		{
			name:    "long output is cut",
			cmd:     "head -c 300 /dev/zero | tr '\\0' x; exit 1",
			wantErr: []string{": " + strings.Repeat("x", 200)},
			absent:  strings.Repeat("x", 201),
		},
		{name: "missing program", cmd: "/nonexistent/ftrun-probe", wantErr: []string{"exit status 127", "not found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkWithin(t, CommandProbe(tt.cmd), guard)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Check() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Check() = nil, want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.absent != "" && strings.Contains(err.Error(), tt.absent) {
				t.Errorf("error %q contains %q", err, tt.absent)
			}
			var exitErr interface{ ExitCode() int }
			if !errors.As(err, &exitErr) {
				t.Errorf("error %v does not wrap the exit error", err)
			}
		})
	}
}

func TestCommandProbeTimeoutKillsTheWholeGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	// The shell forks a sleep that would outlive it if only the shell were
	// killed.
	p := CommandProbe("sleep 5 & echo $! > " + pidFile + "; wait")
	begin := time.Now()
	err := checkWithin(t, p, 300*time.Millisecond)
	if took := time.Since(begin); took > guard {
		t.Errorf("Check took %v after a 300ms timeout", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Check() = %v, want context.DeadlineExceeded", err)
	}
	if !strings.Contains(err.Error(), "signal: killed") {
		t.Errorf("error %q should say the command was killed", err)
	}

	raw, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatalf("reading child pid: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatalf("child pid %q: %v", raw, err)
	}
	// SIGKILL is delivered before kill(2) returns, but the orphan is reaped
	// by someone else; dead means gone or a zombie.
	poll := time.NewTicker(10 * time.Millisecond)
	defer poll.Stop()
	giveUp := time.After(guard)
	for processAlive(pid) {
		select {
		case <-poll.C:
		case <-giveUp:
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("child %d of the probe survived the timeout", pid)
		}
	}
}

func processAlive(pid int) bool {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

func TestCommandProbeSleepTimesOut(t *testing.T) {
	begin := time.Now()
	err := checkWithin(t, CommandProbe("sleep 5"), 200*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Check() = %v, want context.DeadlineExceeded", err)
	}
	if took := time.Since(begin); took > guard {
		t.Errorf("Check took %v after a 200ms timeout", took)
	}
}

// serve runs handle for every connection on a real loopback listener; the
// test owns the goroutines and waits for them at cleanup.
func serve(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}

// redisLike answers "+PONG\r\n" to "PING\r\n", the way the real protocol does.
func redisLike(c net.Conn) {
	r := bufio.NewReader(c)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			return
		}
		if line == "PING\r\n" {
			// Split the reply so the probe has to accumulate it.
			c.Write([]byte("+PO"))
			c.Write([]byte("NG\r\n"))
		}
	}
}

func TestTCPProbe(t *testing.T) {
	pong := serve(t, redisLike)
	silent := serve(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	wrong := serve(t, func(c net.Conn) {
		bufio.NewReader(c).ReadString('\n')
		c.Write([]byte("-ERR unknown command\r\n"))
	})
	refused := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}()

	tests := []struct {
		name                 string
		addr, send, expect   string
		wantErr              []string
		wantDeadlineExceeded bool
	}{
		{name: "connect only", addr: silent},
		{name: "send without expect", addr: silent, send: "hello\n"},
		{name: "ping pong", addr: pong, send: "PING\r\n", expect: "+PONG"},
		{name: "exact reply", addr: pong, send: "PING\r\n", expect: "+PONG\r\n"},
		{
			name: "never answers", addr: silent, send: "PING\r\n", expect: "+PONG",
			wantErr:              []string{`expected "+PONG", got ""`, strconv.Quote(silent)},
			wantDeadlineExceeded: true,
		},
		{
			name: "wrong answer then close", addr: wrong, send: "PING\r\n", expect: "+PONG",
			wantErr: []string{`expected "+PONG", got "-ERR unknown command\r\n"`, "EOF"},
		},
		{
			name: "connection refused", addr: refused,
			wantErr: []string{strconv.Quote(refused), "connection refused"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			begin := time.Now()
			err := checkWithin(t, TCPProbe(tt.addr, tt.send, tt.expect), 300*time.Millisecond)
			if took := time.Since(begin); took > guard {
				t.Errorf("Check took %v with a 300ms timeout", took)
			}
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("Check() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Check() = nil, want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if got := errors.Is(err, context.DeadlineExceeded); got != tt.wantDeadlineExceeded {
				t.Errorf("errors.Is(%v, DeadlineExceeded) = %v, want %v", err, got, tt.wantDeadlineExceeded)
			}
		})
	}
}

// TestCheckerWithRealProbes drives real probes through the Checker on the
// real clock, the way the supervisor runs them.
func TestCheckerWithRealProbes(t *testing.T) {
	pong := serve(t, redisLike)
	tests := []struct {
		name      string
		probe     Probe
		unhealthy bool
	}{
		{"command passes", CommandProbe("true"), false},
		{"command fails", CommandProbe("exit 2"), true},
		{"tcp passes", TCPProbe(pong, "PING\r\n", "+PONG"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			out := make(chan Result)
			done := make(chan error, 1)
			c := &Checker{
				Probe:  tt.probe,
				Config: HealthConfig{Interval: 10 * time.Millisecond, Timeout: time.Second, Threshold: 2},
				Clock:  clockwork.NewRealClock(),
			}
			go func() { done <- c.Run(ctx, out) }()
			var last Result
			for i := 0; i < 2; i++ {
				select {
				case last = <-out:
				case <-time.After(guard):
					t.Fatal("no result")
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run() = %v", err)
			}
			if last.Unhealthy != tt.unhealthy || (last.Err != nil) != tt.unhealthy {
				t.Errorf("after two probes: %+v, want unhealthy=%v", last, tt.unhealthy)
			}
		})
	}
}

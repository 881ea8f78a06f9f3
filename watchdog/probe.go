package watchdog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"
)

// Probe checks once whether the protected program answers. Check must return
// soon after ctx is done: the Checker waits for every probe it starts, so a
// probe that ignores ctx stalls health checking and shutdown alike.
type Probe interface {
	Check(ctx context.Context) error
	String() string
}

const (
	// commandWaitDelay bounds how long a finished or killed command may keep
	// its output pipes open through children it left behind; a probe is a
	// question, not a service, and must not hold up the next one.
	commandWaitDelay = 100 * time.Millisecond
	// maxErrLine keeps a chatty probe from flooding the log with its output.
	maxErrLine = 200
	// maxCapture bounds what is kept of a command's output or a TCP reply;
	// only the start is ever reported.
	maxCapture = 64 << 10
)

// CommandProbe runs shellCmd with /bin/sh -c, so operators can write the
// same one-liners they would type (redis-cli ping | grep -q PONG). Exit
// status 0 is healthy.
func CommandProbe(shellCmd string) Probe { return commandProbe{cmd: shellCmd} }

type commandProbe struct{ cmd string }

func (p commandProbe) String() string { return fmt.Sprintf("command %q", p.cmd) }

func (p commandProbe) Check(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", p.cmd)
	var out capBuffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// Its own process group, killed as a whole: killing only the shell on
	// timeout would leave a hung curl or redis-cli behind, one more with
	// every probe.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		if errors.Is(err, unix.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = commandWaitDelay
	err := cmd.Run()
	if err == nil {
		return nil
	}
	var line string
	if l := firstLine(out.Bytes()); l != "" {
		line = ": " + l
	}
	if ctx.Err() != nil {
		// Killed by us: the reason is the context's, "signal: killed" is
		// only how it showed.
		return fmt.Errorf("%s: %v%s: %w", p, err, line, context.Cause(ctx))
	}
	return fmt.Errorf("%s: %w%s", p, err, line)
}

// firstLine is what an operator needs from a failed probe's output (usually
// the error message) without its whole output in the log.
func firstLine(b []byte) string {
	b = bytes.TrimSpace(b)
	if i := bytes.IndexByte(b, '\n'); i >= 0 {
		b = bytes.TrimSpace(b[:i])
	}
	if len(b) > maxErrLine {
		b = b[:maxErrLine]
		// Cut on a character boundary so the log line stays valid UTF-8.
		for len(b) > 0 && !utf8.Valid(b) {
			b = b[:len(b)-1]
		}
	}
	return string(b)
}

// capBuffer keeps the first maxCapture bytes and swallows the rest, so a
// probe printing without end costs bounded memory and still runs to its
// exit status instead of dying on a broken pipe.
type capBuffer struct{ buf bytes.Buffer }

func (c *capBuffer) Write(p []byte) (int, error) {
	if room := maxCapture - c.buf.Len(); room > 0 {
		c.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

func (c *capBuffer) Bytes() []byte { return c.buf.Bytes() }

// TCPProbe connects to addr and, when asked, sends send and waits for a reply
// containing expect. A listening socket alone proves little (the kernel
// accepts connections for a program that is stuck), so protocols with a
// cheap request (PING/+PONG) should use send and expect. Both are taken
// literally; turning "\r\n" into bytes is the caller's job.
func TCPProbe(addr, send, expect string) Probe {
	return tcpProbe{addr: addr, send: send, expect: expect}
}

type tcpProbe struct{ addr, send, expect string }

func (p tcpProbe) String() string {
	if p.expect == "" {
		return fmt.Sprintf("tcp %q", p.addr)
	}
	return fmt.Sprintf("tcp %q expecting %q", p.addr, p.expect)
}

func (p tcpProbe) Check(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return fmt.Errorf("%s: dial: %w", p, p.cause(ctx, err))
	}
	defer conn.Close()

	// Reads and writes do not take a context; a deadline in the past is how
	// a blocked one is woken when ctx ends. The watcher is waited for, so
	// it cannot touch conn after Check returns.
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-ctx.Done():
			_ = conn.SetDeadline(time.Unix(1, 0))
		case <-stop:
		}
	}()
	defer func() {
		close(stop)
		<-watched
	}()

	if p.send != "" {
		if _, err := conn.Write([]byte(p.send)); err != nil {
			return fmt.Errorf("%s: send: %w", p, p.cause(ctx, err))
		}
	}
	if p.expect == "" {
		return nil
	}
	want := []byte(p.expect)
	var got []byte
	chunk := make([]byte, 4096)
	for {
		n, err := conn.Read(chunk)
		got = append(got, chunk[:n]...)
		if bytes.Contains(got, want) {
			return nil
		}
		if err == nil && len(got) > maxCapture {
			err = fmt.Errorf("reply exceeds %d bytes", maxCapture)
		}
		if err != nil {
			return fmt.Errorf("%s: expected %q, got %q: %w", p, p.expect, firstBytes(got), p.cause(ctx, err))
		}
	}
}

// cause prefers the reason ctx ended (a probe timeout) over the i/o error it
// provoked, which would only say "i/o timeout" or "operation was canceled".
func (p tcpProbe) cause(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", context.Cause(ctx), err)
	}
	return err
}

func firstBytes(b []byte) []byte {
	if len(b) > maxErrLine {
		return b[:maxErrLine]
	}
	return b
}

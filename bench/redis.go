package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// RedisArgs runs redis-server in the foreground on bind:port with no persistence of
// its own (only ftrun keeps its data) and DEBUG allowed (DEBUG POPULATE fills it, also
// from a client on another host).
func RedisArgs(bind string, port int, dir string) []string {
	return []string{"redis-server", "--port", strconv.Itoa(port), "--bind", bind, "--save", "", "--appendonly", "no",
		"--daemonize", "no", "--dir", dir, "--protected-mode", "no", "--logfile", "", "--enable-debug-command", "yes"}
}

// RESP is a minimal client of the redis protocol: one connection, one request at a
// time.
type RESP struct {
	conn net.Conn
	rd   *bufio.Reader
}

// DialRedis connects from the network namespace ns ("" for this one).
func DialRedis(ns, addr string, timeout time.Duration) (*RESP, error) {
	c, err := DialIn(ns, addr, timeout)
	if err != nil {
		return nil, err
	}
	return &RESP{conn: c, rd: bufio.NewReader(c)}, nil
}

// NewRESP speaks RESP over conn, reading through rd (which must read conn).
func NewRESP(conn net.Conn, rd *bufio.Reader) *RESP { return &RESP{conn: conn, rd: rd} }

// Close closes the connection.
func (r *RESP) Close() error { return r.conn.Close() }

// Do sends a command and returns the reply as text: bulk strings unquoted, nil as
// "(nil)", arrays joined by spaces, errors as errors.
func (r *RESP) Do(timeout time.Duration, args ...string) (string, error) {
	_ = r.conn.SetDeadline(time.Now().Add(timeout))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(r.conn, b.String()); err != nil {
		return "", err
	}
	return r.read()
}

func (r *RESP) read() (string, error) {
	line, err := r.rd.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", errors.New("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return "", fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad bulk length %q", line)
		}
		if n < 0 {
			return "(nil)", nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r.rd, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return "", fmt.Errorf("bad array length %q", line)
		}
		parts := make([]string, 0, max(n, 0))
		for i := 0; i < n; i++ {
			s, err := r.read()
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, " "), nil
	}
	return "", fmt.Errorf("unexpected reply %q", line)
}

// WaitRedis polls with new connections until cmd gets an answer (any answer that is
// not an error) and returns when, and what it was. A refused connection is retried at
// once; a connect that times out is retried with twice the timeout (200 ms, up to
// 3 s), since behind the output gate a handshake takes an epoch commit.
func WaitRedis(ctx context.Context, ns, addr string, cmd ...string) (time.Time, string, error) {
	if len(cmd) == 0 {
		cmd = []string{"PING"}
	}
	var last error
	dial := 200 * time.Millisecond
	for {
		if c, err := DialRedis(ns, addr, dial); err == nil {
			got, err := c.Do(time.Second, cmd...)
			c.Close()
			if err == nil {
				return time.Now(), got, nil
			}
			last = err
		} else {
			last = err
			if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
				dial = min(2*dial, 3*time.Second)
			}
		}
		if err := Sleep(ctx, 2*time.Millisecond); err != nil {
			return time.Time{}, "", fmt.Errorf("redis at %s did not answer %s (last: %v): %w", addr, cmd[0], last, err)
		}
	}
}

// Populate fills redis with about mb megabytes: mb*1000 keys "key:N" of 1000 bytes
// (DEBUG POPULATE, which leaves keys that exist alone, so it also grows a dataset).
func Populate(ctx context.Context, ns, addr string, mb int) error {
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if _, _, err := WaitRedis(wctx, ns, addr); err != nil {
		return err
	}
	c, err := DialRedis(ns, addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Do(5*time.Minute, "DEBUG", "POPULATE", strconv.Itoa(mb*1000), "key", "1000"); err != nil {
		return fmt.Errorf("DEBUG POPULATE %d MB: %w", mb, err)
	}
	return nil
}

// CountExisting says how many of keys exist (EXISTS in batches).
func CountExisting(c *RESP, keys []string) (int, error) {
	n := 0
	for i := 0; i < len(keys); i += 1000 {
		batch := keys[i:min(i+1000, len(keys))]
		got, err := c.Do(10*time.Second, append([]string{"EXISTS"}, batch...)...)
		if err != nil {
			return n, fmt.Errorf("EXISTS: %w", err)
		}
		k, err := strconv.Atoi(got)
		if err != nil {
			return n, fmt.Errorf("EXISTS answered %q", got)
		}
		n += k
	}
	return n, nil
}

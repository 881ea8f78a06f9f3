// Package logrelay keeps the read ends of the program's stdout and stderr alive when
// ftrun is not: a small process per service (as conmon is for Podman) holds both
// pipes, reads them whatever happens to ftrun, queues what the program writes, and
// hands it to whichever ftrun is connected to its unix socket in the state directory.
//
// Why: a pipe whose last reader is gone makes the writer fail with EPIPE or die of
// SIGPIPE. Before the relay, kill -9 of ftrun left the program's output pipes without
// a reader until a new ftrun reopened them: a Python server failed every request it
// logged, a Go server died. Now the program never notices ftrun's death, and what it
// wrote meanwhile reaches the log, stamped with when it was written, once ftrun is
// back. The relay also keeps the pipes' write ends, which it passes (SCM_RIGHTS) to
// every ftrun that connects, so a restore after an adoption reconnects the restored
// program to the same pipes, and their read ends, which ftrun holds while it runs: when
// the relay itself dies (an OOM kill, a kill -9 by hand), the pipes still have a
// reader, and ftrun starts a new relay on the same pipes at once. The relay names
// itself ftrun-relay (its comm), so `killall ftrun` leaves it alone.
//
// No library does this job for a Go supervisor (conmon is a C program tied to
// Podman's protocol); the relay is ftrun's own binary, re-executed, so nothing else
// needs installing. It leaves by itself once told to (ftrun stopped the program), or
// once no ftrun has been connected for a while and the service's cgroup is empty.
//
// Wire format, relay to ftrun: first one byte 'H' carrying the write ends of stdout
// and stderr, then their read ends, as ancillary data; then frames of stream (1 byte:
// 0 relay notice, 1 stdout, 2 stderr), the time the line was read (8 bytes, Unix ns,
// big-endian), its length (4 bytes) and the line. ftrun to relay: 'q', "the program
// is gone: flush and leave".
package logrelay

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// envSpec carries the relay's configuration to the re-executed binary.
const envSpec = "_FTRUN_RELAY"

// Streams of a frame.
const (
	StreamNotice = 0
	StreamStdout = 1
	StreamStderr = 2
)

// Bounds of what the relay holds while no ftrun reads.
const (
	maxQueued = 8 << 20  // bytes of lines kept; older lines are dropped beyond it
	maxLine   = 64 << 10 // a longer line is cut into pieces of this size
)

type spec struct {
	Stage string // "launch" starts the relay and exits, so the relay is nobody's child
	Procs string // the service's cgroup.procs: empty means the program is gone
	Idle  time.Duration
}

// Comm is the relay's process name (init runs on the main thread, whose name it is).
const Comm = "ftrun-relay"

// Fds passed to the relay, in this order, after stdin/stdout/stderr.
const (
	fdOutR = 3 + iota
	fdOutW
	fdErrR
	fdErrW
	fdListen
	nFds = 5
)

// Start launches a relay for a service whose cgroup lists its processes in procs,
// listening at sock. The relay is detached (its own session, reparented away from
// ftrun), so it outlives ftrun.
func Start(sock, procs string) error {
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer outR.Close()
	defer outW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		return err
	}
	defer errR.Close()
	defer errW.Close()
	return startOn(sock, procs, outR, outW, errR, errW)
}

// startOn launches a relay on existing pipes: new ones (Start), or those of a relay
// that died (Client.Read).
func startOn(sock, procs string, outR, outW, errR, errW *os.File) error {
	_ = os.Remove(sock)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("relay socket %q: %w", sock, err)
	}
	l.SetUnlinkOnClose(false)
	lf, err := l.File()
	l.Close()
	if err != nil {
		return err
	}
	defer lf.Close()
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find ftrun's own binary to start the output relay: %w", err)
	}
	data, _ := json.Marshal(spec{Stage: "launch", Procs: procs, Idle: 10 * time.Second})
	cmd := exec.Command(self, "ftrun-relay")
	cmd.Env = []string{envSpec + "=" + string(data)}
	cmd.ExtraFiles = []*os.File{outR, outW, errR, errW, lf}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("start the output relay: %w: %s", err, out)
	}
	return nil
}

func init() {
	data, ok := os.LookupEnv(envSpec)
	if !ok {
		return
	}
	var sp spec
	if err := json.Unmarshal([]byte(data), &sp); err != nil {
		fmt.Fprintf(os.Stderr, "ftrun relay: bad spec: %v\n", err)
		os.Exit(2)
	}
	if sp.Stage == "launch" {
		os.Exit(launch(sp))
	}
	os.Exit(serve(sp))
}

// launch starts the relay proper and returns at once: the relay's parent is then
// gone, so it is reparented to init and ftrun never has to reap it.
func launch(sp spec) int {
	sp.Stage = "run"
	data, _ := json.Marshal(sp)
	files := make([]*os.File, nFds)
	for i := range files {
		files[i] = os.NewFile(uintptr(3+i), "relay")
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cmd := exec.Command(self, "ftrun-relay")
	cmd.Env = []string{envSpec + "=" + string(data)}
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = cmd.Process.Release()
	return 0
}

// line is one piece of output waiting for ftrun.
type line struct {
	stream byte
	at     time.Time
	data   []byte
}

// queue holds lines until a connected ftrun takes them.
type queue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	lines   []line
	bytes   int
	dropped int
	open    int // readers still reading
}

func newQueue(readers int) *queue {
	q := &queue{open: readers}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue) push(l line) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.lines = append(q.lines, l)
	q.bytes += len(l.data)
	for q.bytes > maxQueued && len(q.lines) > 1 {
		q.bytes -= len(q.lines[0].data)
		q.lines = q.lines[1:]
		q.dropped++
	}
	q.cond.Broadcast()
}

func (q *queue) readerDone() {
	q.mu.Lock()
	q.open--
	q.cond.Broadcast()
	q.mu.Unlock()
}

// take waits for lines (or the end of all readers, or stop) and returns them all.
func (q *queue) take(stop func() bool) ([]line, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.lines) == 0 && q.dropped == 0 && q.open > 0 && !stop() {
		q.cond.Wait()
	}
	ls := q.lines
	if q.dropped > 0 {
		ls = append([]line{{stream: StreamNotice, at: time.Now(),
			data: fmt.Appendf(nil, "output relay: %d older lines dropped while no ftrun read them (bound %d MiB)", q.dropped, maxQueued>>20)}}, ls...)
		q.dropped = 0
	}
	q.lines, q.bytes = nil, 0
	return ls, q.open > 0
}

// giveBack puts lines that could not be sent in front of the queue.
func (q *queue) giveBack(ls []line) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.lines = append(ls, q.lines...)
	for _, l := range ls {
		q.bytes += len(l.data)
	}
}

func (q *queue) wake() {
	q.mu.Lock()
	q.cond.Broadcast()
	q.mu.Unlock()
}

// read splits r into lines for q until r ends.
func read(r io.Reader, stream byte, q *queue) {
	defer q.readerDone()
	br := bufio.NewReaderSize(r, maxLine)
	for {
		data, err := br.ReadSlice('\n')
		if len(data) > 0 {
			if data[len(data)-1] == '\n' {
				data = data[:len(data)-1]
			}
			q.push(line{stream: stream, at: time.Now(), data: append([]byte(nil), data...)})
		}
		if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			return
		}
	}
}

func serve(sp spec) int {
	outR, outW := os.NewFile(fdOutR, "stdout-r"), os.NewFile(fdOutW, "stdout-w")
	errR, errW := os.NewFile(fdErrR, "stderr-r"), os.NewFile(fdErrW, "stderr-w")
	lf := os.NewFile(fdListen, "listen")
	ln, err := net.FileListener(lf)
	lf.Close()
	if err != nil {
		return 1
	}
	l := ln.(*net.UnixListener)
	// Not "ftrun": whoever kills ftrun by name (killall ftrun) must not take the
	// program's only reader of its output with it.
	if name, err := unix.BytePtrFromString(Comm); err == nil {
		_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(name)), 0, 0, 0)
	}
	q := newQueue(2)
	go read(outR, StreamStdout, q)
	go read(errR, StreamStderr, q)
	r := &server{q: q, l: l, outW: outW, errW: errW, outR: outR, errR: errR, sp: sp}
	r.run()
	return 0
}

// server is the relay's loop: one connected ftrun at a time; a newer one replaces it.
type server struct {
	q          *queue
	l          *net.UnixListener
	outW, errW *os.File
	outR, errR *os.File // passed to every ftrun too, which holds them while it runs
	sp         spec

	mu   sync.Mutex
	quit bool
}

func (r *server) quitting() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.quit
}

func (r *server) run() {
	idleSince := time.Now()
	for {
		_ = r.l.SetDeadline(time.Now().Add(time.Second))
		c, err := r.l.AcceptUnix()
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				if time.Since(idleSince) >= r.sp.Idle && programGone(r.sp.Procs) {
					return
				}
				continue
			}
			return
		}
		if done := r.session(c); done {
			return
		}
		idleSince = time.Now()
	}
}

// session serves one ftrun until it goes away (false) or says the program is gone
// and everything is sent (true).
func (r *server) session(c *net.UnixConn) bool {
	defer c.Close()
	rights := unix.UnixRights(int(r.outW.Fd()), int(r.errW.Fd()), int(r.outR.Fd()), int(r.errR.Fd()))
	if _, _, err := c.WriteMsgUnix([]byte{'H'}, rights, nil); err != nil {
		return false
	}
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		var b [1]byte
		for {
			if _, err := c.Read(b[:]); err != nil {
				return
			}
			if b[0] == 'q' {
				r.mu.Lock()
				r.quit = true
				r.mu.Unlock()
				// The program is gone: once every writer is, the readers end.
				r.outW.Close()
				r.errW.Close()
				r.q.wake()
				go func() {
					// A writer that survives (a stray child) must not keep us forever.
					time.Sleep(2 * time.Second)
					r.q.readerDone()
					r.q.readerDone()
				}()
			}
		}
	}()
	stop := func() bool {
		select {
		case <-gone:
			return true
		default:
			return false
		}
	}
	go func() { <-gone; r.q.wake() }()
	w := bufio.NewWriter(c)
	for {
		ls, more := r.q.take(stop)
		if err := writeFrames(w, ls); err != nil {
			r.q.giveBack(ls)
			return false
		}
		if !more {
			// Every writer is gone, which only happens once ftrun said quit.
			return true
		}
		if stop() {
			return r.quitting()
		}
	}
}

func writeFrames(w *bufio.Writer, ls []line) error {
	for _, l := range ls {
		var hdr [13]byte
		hdr[0] = l.stream
		binary.BigEndian.PutUint64(hdr[1:], uint64(l.at.UnixNano()))
		binary.BigEndian.PutUint32(hdr[9:], uint32(len(l.data)))
		if _, err := w.Write(hdr[:]); err != nil {
			return err
		}
		if _, err := w.Write(l.data); err != nil {
			return err
		}
	}
	return w.Flush()
}

// programGone reports an empty (or removed) cgroup.
func programGone(procs string) bool {
	data, err := os.ReadFile(procs)
	return err != nil || len(data) == 0
}

// Client is ftrun's end of a relay.
type Client struct {
	sock, procs string
	Stdout      *os.File // write end of the program's stdout pipe
	Stderr      *os.File
	// The pipes' read ends, held (never read) so that the program's output always has
	// a reader while ftrun runs, and handed to a new relay when this one dies. nil
	// from a relay of an older ftrun, which passed only the write ends.
	outR, errR *os.File

	mu      sync.Mutex
	c       *net.UnixConn
	closing bool       // Close or Quit was called: the connection's end is not a death
	direct  []*os.File // the pipes' ends ftrun reads itself when no relay could start
}

// Connect reaches the relay at sock and receives the pipes' ends.
func Connect(sock string) (*Client, error) {
	c, fds, err := dial(sock)
	if err != nil {
		return nil, err
	}
	cl := &Client{sock: sock, c: c, Stdout: os.NewFile(uintptr(fds[0]), "stdout"), Stderr: os.NewFile(uintptr(fds[1]), "stderr")}
	if len(fds) == 4 {
		cl.outR, cl.errR = os.NewFile(uintptr(fds[2]), "stdout-r"), os.NewFile(uintptr(fds[3]), "stderr-r")
	}
	return cl, nil
}

// dial connects to the relay at sock and takes its greeting: the pipes' write ends
// and, from a relay of this version, their read ends (close-on-exec, all of them).
func dial(sock string) (*net.UnixConn, []int, error) {
	conn, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil, nil, err
	}
	c := conn.(*net.UnixConn)
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf, oob := make([]byte, 1), make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil || n != 1 || buf[0] != 'H' {
		c.Close()
		return nil, nil, fmt.Errorf("output relay at %q: no greeting (%v)", sock, err)
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		c.Close()
		return nil, nil, fmt.Errorf("output relay at %q: no pipes passed (%v)", sock, err)
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || (len(fds) != 2 && len(fds) != 4) {
		c.Close()
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, nil, fmt.Errorf("output relay at %q: want 2 or 4 pipe ends (%v)", sock, err)
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	_ = c.SetReadDeadline(time.Time{})
	return c, fds, nil
}

// ConnectOrStart connects to the service's relay, starting one first when none runs.
func ConnectOrStart(sock, procs string) (*Client, error) {
	c, err := Connect(sock)
	if err != nil {
		if err := Start(sock, procs); err != nil {
			return nil, err
		}
		if c, err = Connect(sock); err != nil {
			return nil, err
		}
	}
	c.procs = procs
	return c, nil
}

// Read calls fn for each line the relay sends until Close or Quit ends the
// connection. When the relay dies instead, Read starts a new one on the same pipes
// (this client held their read ends meanwhile), says so as a StreamNotice line, and
// goes on with it.
func (c *Client) Read(fn func(stream byte, at time.Time, data []byte)) {
	for {
		conn := c.conn()
		readFrames(conn, fn)
		if c.conn() != conn {
			continue // Rehome moved this client to another relay
		}
		err := c.revive()
		switch {
		case err == errClosing:
			return
		case err != nil && c.holdsReadEnds():
			fn(StreamNotice, time.Now(), []byte("output relay died and no new one could start ("+err.Error()+
				"): ftrun reads the program's output itself, which then has no reader once ftrun is gone"))
			c.readPipes(fn)
			return
		case err != nil:
			fn(StreamNotice, time.Now(), []byte("output relay died and no new one could start: "+err.Error()+
				"; the program's writes to stdout and stderr fail until ftrun is started again"))
			return
		}
		fn(StreamNotice, time.Now(), []byte("output relay died: a new one reads the program's stdout and stderr on (lines the dead one had not passed on are lost)"))
	}
}

var errClosing = errors.New("closing")

// readPipes reads the pipes as the relay would, until Close. It reads new read ends
// of them, opened non-blocking through /proc (so that Close ends a pending read),
// not the held ones: those share their open file with the relays, which need them
// blocking.
func (c *Client) readPipes(fn func(stream byte, at time.Time, data []byte)) {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return
	}
	for _, f := range []*os.File{c.outR, c.errR} {
		r, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			c.mu.Unlock()
			fn(StreamNotice, time.Now(), []byte("ftrun cannot read the program's output either: "+err.Error()))
			return
		}
		c.direct = append(c.direct, r)
	}
	outR, errR := c.direct[0], c.direct[1]
	c.mu.Unlock()
	q := newQueue(2)
	go read(outR, StreamStdout, q)
	go read(errR, StreamStderr, q)
	for {
		ls, more := q.take(func() bool { return false })
		for _, l := range ls {
			fn(l.stream, l.at, l.data)
		}
		if !more {
			return
		}
	}
}

// Rehome puts the program pid's own stdout and stderr pipes under a relay again, for
// an adopted program whose relay died with the previous ftrun (ConnectOrStart then
// started a relay on new pipes the program does not have). New ends of its pipes are
// opened through /proc/PID/fd (read ends first: a pipe opens for writing only once it
// has a reader), a relay is started on them, and this client moves to it; the relay
// it leaves is told to quit.
func (c *Client) Rehome(pid int) error {
	var files []*os.File // outR, errR, outW, errW
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for _, o := range []struct{ fd, flag int }{{1, os.O_RDONLY}, {2, os.O_RDONLY}, {1, os.O_WRONLY}, {2, os.O_WRONLY}} {
		path := fmt.Sprintf("/proc/%d/fd/%d", pid, o.fd)
		if target, err := os.Readlink(path); err != nil || !strings.HasPrefix(target, "pipe:") {
			return fmt.Errorf("fd %d of %d is not a pipe (%q, %v)", o.fd, pid, target, err)
		}
		f, err := os.OpenFile(path, o.flag, 0)
		if err != nil {
			return fmt.Errorf("reopen fd %d of %d: %w", o.fd, pid, err)
		}
		files = append(files, f)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return errClosing
	}
	if err := startOn(c.sock, c.procs, files[0], files[2], files[1], files[3]); err != nil {
		return err
	}
	nc, fds, err := dial(c.sock)
	if err != nil {
		return err
	}
	if len(fds) != 4 {
		nc.Close()
		return errors.New("the new relay did not pass the pipes' read ends")
	}
	// The left relay holds no program's output: once told, and once these (its
	// pipes' last other writers) are closed, it sends what it has and leaves. Read
	// drains its connection, then follows c.c to the new one.
	_, _ = c.c.Write([]byte{'q'})
	for _, f := range []*os.File{c.Stdout, c.Stderr, c.outR, c.errR} {
		if f != nil {
			f.Close()
		}
	}
	c.c = nc
	c.Stdout, c.Stderr = os.NewFile(uintptr(fds[0]), "stdout"), os.NewFile(uintptr(fds[1]), "stderr")
	c.outR, c.errR = os.NewFile(uintptr(fds[2]), "stdout-r"), os.NewFile(uintptr(fds[3]), "stderr-r")
	return nil
}

func (c *Client) holdsReadEnds() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.outR != nil
}

func (c *Client) conn() *net.UnixConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.c
}

// revive starts a relay on the pipes of the one that died and connects to it.
func (c *Client) revive() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return errClosing
	}
	if c.outR == nil {
		return errors.New("the relay did not pass the pipes' read ends (it is from an older ftrun)")
	}
	if err := startOn(c.sock, c.procs, c.outR, c.Stdout, c.errR, c.Stderr); err != nil {
		return err
	}
	nc, fds, err := dial(c.sock)
	if err != nil {
		return err
	}
	for _, fd := range fds {
		unix.Close(fd) // the same pipes again: this client holds them already
	}
	c.c.Close()
	c.c = nc
	return nil
}

func readFrames(c *net.UnixConn, fn func(stream byte, at time.Time, data []byte)) {
	r := bufio.NewReader(c)
	for {
		var hdr [13]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr[9:])
		if n > maxLine+1024 {
			return
		}
		data := make([]byte, n)
		if _, err := io.ReadFull(r, data); err != nil {
			return
		}
		fn(hdr[0], time.Unix(0, int64(binary.BigEndian.Uint64(hdr[1:]))), data)
	}
}

// Quit tells the relay the program is gone: it sends what it still has and leaves;
// Read returns once it has.
func (c *Client) Quit() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	// A relay that never finishes must not hold ftrun's exit.
	_ = c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.c.Write([]byte{'q'})
	return err
}

// Close drops the connection and the read ends this client held; the relay keeps
// the pipes and queues for the next ftrun.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	if c.outR != nil {
		c.outR.Close()
		c.errR.Close()
	}
	for _, f := range c.direct {
		f.Close()
	}
	return c.c.Close()
}

// CloseWriters closes this end's copies of the write ends.
func (c *Client) CloseWriters() {
	c.Stdout.Close()
	c.Stderr.Close()
}

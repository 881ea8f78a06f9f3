package integration

import (
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/checkpoint-restore/go-criu/v8/crit/images/pagemap"
	"github.com/checkpoint-restore/go-criu/v8/magic"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/frame"
)

// trustKeys are one deployment's credentials made the way the README says: a CA
// directory that keeps its key, and per host a key, a request and a certificate
// issued with roles and services.
type trustKeys struct {
	ca, standby, good, evil string
}

func issueKeys(t *testing.T, good string, evil ...string) trustKeys {
	t.Helper()
	root := t.TempDir()
	k := trustKeys{ca: filepath.Join(root, "ca"), standby: filepath.Join(root, "standby"), good: filepath.Join(root, "good"), evil: filepath.Join(root, "evil")}
	if out, err := runFtrun("keygen", "ca", k.ca); err != nil {
		t.Fatalf("keygen ca: %v\n%s", err, out)
	}
	host := func(dir, name string, issue ...string) {
		if out, err := runFtrun("keygen", "request", "--name", name, dir); err != nil {
			t.Fatalf("keygen request: %v\n%s", err, out)
		}
		args := append([]string{"keygen", "issue", "--ca", k.ca, "--out", filepath.Join(dir, auth.NodeCertFile)}, issue...)
		if out, err := runFtrun(append(args, filepath.Join(dir, auth.NodeCSRFile))...); err != nil {
			t.Fatalf("keygen issue: %v\n%s", err, out)
		}
		ca, err := os.ReadFile(filepath.Join(k.ca, auth.CACertFile))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, auth.CACertFile), ca, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	host(k.standby, "standby-host", "--role", "standby")
	host(k.good, "good-host", "--role", "primary", "--service", good)
	var svcs []string
	for _, s := range evil {
		svcs = append(svcs, "--service", s)
	}
	host(k.evil, "evil-host", append([]string{"--role", "primary"}, svcs...)...)
	return k
}

func runFtrun(args ...string) (string, error) {
	out, err := exec.Command(ftrunBin, args...).CombinedOutput()
	return string(out), err
}

// memCgroup is a memory-limited cgroup, removed when the test ends: v1's memory
// controller where it is mounted (hybrid hosts such as this one), else cgroup2's.
type memCgroup struct {
	dir string
	v2  bool
}

func newMemCgroup(t *testing.T, name string, limit int64) memCgroup {
	t.Helper()
	g := memCgroup{dir: filepath.Join("/sys/fs/cgroup/memory", fmt.Sprintf("%s-%d", name, os.Getpid()))}
	limitFile := "memory.limit_in_bytes"
	if _, err := os.Stat("/sys/fs/cgroup/memory"); err != nil {
		ctrl, _ := os.ReadFile("/sys/fs/cgroup/cgroup.controllers")
		if !strings.Contains(string(ctrl), "memory") {
			t.Fatalf("no memory controller: neither /sys/fs/cgroup/memory (v1) nor memory in /sys/fs/cgroup/cgroup.controllers")
		}
		g = memCgroup{dir: filepath.Join("/sys/fs/cgroup", fmt.Sprintf("%s-%d", name, os.Getpid())), v2: true}
		limitFile = "memory.max"
	}
	if err := os.Mkdir(g.dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for i := 0; i < 50 && os.Remove(g.dir) != nil; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(g.dir, limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g memCgroup) add(t *testing.T, pid int) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(g.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// ooms is how many processes the kernel killed in the group for want of memory.
func (g memCgroup) ooms(t *testing.T) int {
	file := "memory.oom_control"
	if g.v2 {
		file = "memory.events"
	}
	b, err := os.ReadFile(filepath.Join(g.dir, file))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// peakRSS is a process's resident high-water mark (VmHWM), in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("the standby is gone: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// hostile is a peer with a genuine primary certificate that speaks the wire
// protocol with the project's own frame package, saying whatever it likes.
type hostile struct {
	t *testing.T
	c *tls.Conn
	w *frame.Writer
	r *frame.Reader
}

func dialHostile(t *testing.T, from host, addr string, keys *auth.Config) *hostile {
	t.Helper()
	raw, err := dialIn(from, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, keys.Client())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.Handshake(); err != nil {
		t.Fatalf("handshake: %v", err)
	}
	c.SetDeadline(time.Time{})
	h := &hostile{t: t, c: c, w: frame.NewWriter(c), r: frame.NewReader(c, frame.Limits{})}
	t.Cleanup(func() { c.Close() })
	return h
}

func (h *hostile) send(epoch uint64, p frame.Payload) error { return h.w.WritePayload(epoch, p) }

func (h *hostile) hello(service string, last uint64) error {
	return h.send(0, &frame.Hello{Version: frame.Version, Service: service, Host: "evil-host", Role: "primary", LastCommitted: last})
}

// next is the standby's next frame (within 10 s), decoded.
func (h *hostile) next() (frame.Payload, error) {
	h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := h.r.Next()
	if err != nil {
		return nil, err
	}
	return frame.DecodePayload(f.Type, f.Payload)
}

// until reads frames until one of type want (heartbeats and resync requests
// skipped), failing on an error.
func (h *hostile) until(want frame.Type) frame.Payload {
	h.t.Helper()
	for {
		p, err := h.next()
		if err != nil {
			h.t.Fatalf("waiting for %s: %v", want, err)
		}
		if p.Type() == want {
			return p
		}
	}
}

// closedByStandby says whether the standby ends the connection (reading gets EOF or
// a reset, not a timeout).
func (h *hostile) closedByStandby() bool {
	for {
		_, err := h.next()
		if err == nil {
			continue
		}
		var ne net.Error
		return !(errors.As(err, &ne) && ne.Timeout())
	}
}

// evilSet is a tiny image set: a pagemap of two pages, their pages file, a core.
func evilSet(t *testing.T, service string, epoch uint64, entries map[uint64]uint64) (files map[string][]byte, manifest []byte) {
	t.Helper()
	st, err := checkpoint.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st.NoSync = true
	p, err := st.Begin(epoch)
	if err != nil {
		t.Fatal(err)
	}
	var pages int
	for _, n := range entries {
		pages += int(n)
	}
	files = map[string][]byte{
		"pagemap-1.img": encodePagemap(t, entries),
		"pages-1.img":   make([]byte, pages*4096),
		"core-1.img":    []byte("core"),
	}
	for n, d := range files {
		if err := os.WriteFile(filepath.Join(p.Dir, n), d, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	set, err := p.Commit(&checkpoint.Manifest{Service: service, Command: []string{"true"}})
	if err != nil {
		t.Fatal(err)
	}
	manifest, err = os.ReadFile(filepath.Join(set.Dir, checkpoint.ManifestName))
	if err != nil {
		t.Fatal(err)
	}
	return files, manifest
}

func encodePagemap(t *testing.T, entries map[uint64]uint64) []byte {
	t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, uint32(magic.LoadMagic().ByName["PAGEMAP"]))
	add := func(m proto.Message) {
		data, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		b = binary.LittleEndian.AppendUint32(b, uint32(len(data)))
		b = append(b, data...)
	}
	add(&pagemap.PagemapHead{PagesId: proto.Uint32(1)})
	for vaddr, n := range entries {
		add(&pagemap.PagemapEntry{Vaddr: proto.Uint64(vaddr), CompatNrPages: proto.Uint32(0), NrPages: proto.Uint64(n), Flags: proto.Uint32(4)})
	}
	return b
}

// fullEpoch sends files as a full epoch and waits for the answer.
func (h *hostile) fullEpoch(epoch uint64, files map[string][]byte, manifest []byte) frame.Payload {
	h.t.Helper()
	must(h.t, h.send(epoch, &frame.EpochBegin{Full: true, Files: uint32(len(files))}))
	for n, d := range files {
		must(h.t, h.send(epoch, &frame.ImageData{Name: n, Data: d, Last: true}))
	}
	must(h.t, h.send(epoch, &frame.EpochCommit{Manifest: manifest}))
	for {
		p, err := h.next()
		if err != nil {
			h.t.Fatalf("epoch %d: %v", epoch, err)
		}
		if p.Type() == frame.TypeAck || p.Type() == frame.TypeNack {
			return p
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// One standby, in a memory-limited cgroup, protects a real primary's program while a
// primary of another service, with a genuine certificate, tries everything the wire
// lets it say, and a host without any certificate floods the listener. Every attempt
// is refused with its reason in the standby's log, the standby stays within its
// memory, the real primary stays protected throughout, and when it really dies its
// program is taken over, once.
func TestHostilePeers(t *testing.T) {
	requiresRoot(t, "ruby")
	memLimit := int64(160<<20) * hostileMemScale
	cg := newMemCgroup(t, "hx-standby", memLimit)
	hosts := hostNet(t, 3)
	primary, stby, attacker := hosts[0], hosts[1], hosts[2]
	name := "hx-good"
	t.Cleanup(func() { killService(t, name) })
	keys := issueKeys(t, name, "hx-evil", "hx-evil2", "hx-evil3")
	evilKeys, err := auth.LoadConfig(keys.evil)
	must(t, err)
	state := t.TempDir()
	sb := startStandbyArgs(t, stby, state, keys.standby, "--idle-timeout", "3s", "--quota-services", "2", "--quota-bytes", "400MiB")
	cg.add(t, sb.cmd.Process.Pid)
	addr := stby.addr + ":7946"
	waitListening(t, attacker, addr)

	script, out := writeCounter(t)
	p := startFtrunIn(t, primary.nsPath(), t.TempDir(), nil, "--name", name, "--interval", "300ms", "--discard",
		"--standby", addr, "--keys", keys.good, "--", "ruby", script, out)
	p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 2
	})
	// logHas waits for want in the standby's log (whose text handler escapes quotes
	// inside values).
	logHas := func(t *testing.T, what, want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		escaped := strings.ReplaceAll(want, `"`, `\"`)
		for l := sb.logs.String(); !strings.Contains(l, want) && !strings.Contains(l, escaped); l = sb.logs.String() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the standby's log lacks %q", what, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	// The hostile primary holds its own service, hx-evil, with a committed epoch it
	// keeps alive with heartbeats (so that nothing here is a take-over of it).
	evil := dialHostile(t, attacker, addr, evilKeys)
	must(t, evil.hello("hx-evil", 0))
	evil.until(frame.TypeHello)
	files1, manifest1 := evilSet(t, "hx-evil", 1, map[uint64]uint64{0x10000: 2})
	if a := evil.fullEpoch(1, files1, manifest1); a.Type() != frame.TypeAck {
		t.Fatalf("hx-evil's own epoch 1: %v", a)
	}
	stopBeat := make(chan struct{})
	var beat sync.WaitGroup
	beat.Add(1)
	go func() {
		defer beat.Done()
		for {
			select {
			case <-stopBeat:
				return
			case <-time.After(200 * time.Millisecond):
				if evil.send(0, &frame.Heartbeat{SentUnixNano: time.Now().UnixNano(), Committed: 1}) != nil {
					return
				}
			}
		}
	}()
	go func() { io.Copy(io.Discard, evil.c) }()
	// The standby stops before hx-evil goes quiet, so it is never taken over.
	defer func() { sb.stop(); close(stopBeat); beat.Wait() }()

	cases := []struct {
		name string
		try  func(h *hostile)
		log  string
	}{
		{"Hello for a service the certificate does not name", func(h *hostile) {
			must(t, h.hello(name, 0))
		}, `may not serve service "hx-good"`},
		{"heartbeats for another service", func(h *hostile) {
			must(t, h.hello(name, 0))
			for range 5 {
				h.send(0, &frame.Heartbeat{SentUnixNano: time.Now().UnixNano()})
			}
		}, `may not serve service "hx-good"`},
		{"a service name that climbs out", func(h *hostile) {
			must(t, h.hello("../x", 0))
		}, `invalid service name: "../x"`},
		{"a copy run of 2^32-1 pages", func(h *hostile) {
			must(t, h.hello("hx-evil", 1))
			h.until(frame.TypeHello)
			must(t, h.send(2, &frame.EpochBegin{BaseEpoch: 1, Files: 1}))
			must(t, h.send(2, &frame.ImageData{Name: "pagemap-1.img", Data: files1["pagemap-1.img"], Last: true}))
			must(t, h.send(2, &frame.PageDelta{Pagemap: "pagemap-1.img", CopyRuns: []frame.CopyRun{{Vaddr: 0x10000, NrPages: 1<<32 - 1}}}))
			must(t, h.send(2, &frame.EpochCommit{Manifest: manifest1}))
			if n := h.until(frame.TypeNack).(*frame.Nack); n.Code != frame.NackCorrupt {
				t.Errorf("copy run: %v", n)
			}
		}, "page deltas copy 4294967295 pages from a base that holds 2"},
		{"a pagemap of 2^40 pages", func(h *hostile) {
			must(t, h.hello("hx-evil", 1))
			h.until(frame.TypeHello)
			var m checkpoint.Manifest
			must(t, json.Unmarshal(manifest1, &m))
			m.Epoch = 2
			manifest, _ := json.Marshal(m)
			must(t, h.send(2, &frame.EpochBegin{BaseEpoch: 1, Files: 1}))
			must(t, h.send(2, &frame.ImageData{Name: "pagemap-1.img", Data: encodePagemap(t, map[uint64]uint64{0x10000: 1 << 40}), Last: true}))
			must(t, h.send(2, &frame.PageDelta{Pagemap: "pagemap-1.img", Pages: []frame.PageRun{{Vaddr: 0x10000, Data: make([]byte, 4096)}}}))
			must(t, h.send(2, &frame.EpochCommit{Manifest: manifest}))
			if n := h.until(frame.TypeNack).(*frame.Nack); n.Code != frame.NackCorrupt {
				t.Errorf("pagemap: %v", n)
			}
		}, "more than the 1 the pages file can hold"},
		{"a manifest of another service", func(h *hostile) {
			must(t, h.hello("hx-evil", 1))
			h.until(frame.TypeHello)
			files, manifest := evilSet(t, name, 2, map[uint64]uint64{0x10000: 1})
			if n := h.fullEpoch(2, files, manifest); n.Type() != frame.TypeNack {
				t.Errorf("manifest of %q: %v", name, n)
			}
		}, `the manifest is of service "hx-good", this connection's is "hx-evil"`},
		{"more services than the quota", func(h *hostile) {
			// hx-evil holds one; hx-evil2 is the second, hx-evil3 one too many.
			h2 := dialHostile(t, attacker, addr, evilKeys)
			must(t, h2.hello("hx-evil2", 0))
			h2.until(frame.TypeHello)
			h2.c.Close()
			must(t, h.hello("hx-evil3", 0))
		}, `holds 2 services here (quota 2, --quota-services); service "hx-evil3" refused`},
		{"silence after the Hello", func(h *hostile) {
			must(t, h.hello("hx-evil2", 0))
			h.until(frame.TypeHello)
		}, "i/o timeout"},
	}
	for _, tc := range cases {
		t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
			h := dialHostile(t, attacker, addr, evilKeys)
			tc.try(h)
			if !h.closedByStandby() {
				t.Errorf("the standby kept the connection open")
			}
			logHas(t, tc.name, tc.log)
		})
	}
	t.Run("a revoked certificate", func(t *testing.T) {
		rev := filepath.Join(keys.standby, auth.RevokedFile)
		must(t, os.WriteFile(rev, []byte("# evil-host, key stolen\n"+evilKeys.Identity().Serial+"\n"), 0o644))
		defer os.Remove(rev)
		raw, err := dialIn(attacker, addr, 5*time.Second)
		must(t, err)
		c := tls.Client(raw, evilKeys.Client())
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		// TLS 1.3: the client's side of the handshake ends before the server has
		// checked its certificate; the refusal arrives as an alert on the first read.
		if c.Handshake() == nil {
			frame.NewWriter(c).WritePayload(0, &frame.Hello{Version: frame.Version, Service: "hx-evil", Role: "primary", LastCommitted: 1})
			if _, err := frame.NewReader(c, frame.Limits{}).Next(); err == nil {
				t.Fatal("a revoked certificate got an answer")
			}
		}
		logHas(t, "revoked", "is revoked")
	})
	if _, err := os.Stat(filepath.Join(filepath.Dir(state), "x")); err == nil {
		t.Fatal(`"../x" made a directory outside the standby's state`)
	}

	// An uncommitted epoch of pages twice the standby's memory limit (what it used
	// to keep in RAM), then one that passes the certificate's disk quota.
	big := func(h *hostile, epoch uint64, mib int) {
		must(t, h.send(epoch, &frame.EpochBegin{BaseEpoch: 1, Files: 1}))
		chunk := make([]byte, 3840*4096) // under the frame's 16 MiB
		vaddr := uint64(1 << 30)
		for sent := 0; sent < mib<<20; sent += len(chunk) {
			if err := h.send(epoch, &frame.PageDelta{Pagemap: "pagemap-1.img", Pages: []frame.PageRun{{Vaddr: vaddr, Data: chunk}}}); err != nil {
				return // refused: the standby stopped reading
			}
			vaddr += uint64(len(chunk))
		}
	}
	t.Run("an uncommitted epoch larger than the standby's memory", func(t *testing.T) {
		h := dialHostile(t, attacker, addr, evilKeys)
		must(t, h.hello("hx-evil", 1))
		h.until(frame.TypeHello)
		sent := 320 * min(hostileMemScale, 2)
		before := peakRSS(t, sb.cmd.Process.Pid)
		big(h, 2, int(sent))
		h.send(0, &frame.Heartbeat{SentUnixNano: time.Now().UnixNano(), Committed: 1})
		h.until(frame.TypeHeartbeat) // everything sent was read
		rss := peakRSS(t, sb.cmd.Process.Pid)
		t.Logf("standby peak RSS %d MiB after %d MiB of uncommitted page deltas, %d MiB before them (memory limit %d MiB)", rss>>20, sent, before>>20, memLimit>>20)
		if n := cg.ooms(t); n != 0 {
			t.Fatalf("%d OOM kills in the standby's cgroup", n)
		}
		if rss > 120<<20*hostileMemScale {
			t.Errorf("standby peak RSS %d MiB: page deltas are held in memory", rss>>20)
		}
	})
	t.Run("an epoch past the certificate's disk quota", func(t *testing.T) {
		h := dialHostile(t, attacker, addr, evilKeys)
		must(t, h.hello("hx-evil", 1))
		h.until(frame.TypeHello)
		big(h, 2, 440)
		must(t, h.send(2, &frame.EpochCommit{Manifest: manifest1}))
		n := h.until(frame.TypeNack).(*frame.Nack)
		if n.Code != frame.NackDiskFull || !strings.Contains(n.Reason, "--quota-bytes") {
			t.Errorf("over quota: %v", n)
		}
		logHas(t, "quota", `certificate "evil-host" would hold`)
	})

	// A host without a certificate opens 200 connections and holds them: its
	// connections past the per-host cap are closed at once, and it takes nothing
	// from the real primary, which stays protected.
	var flood []net.Conn
	for range 200 {
		c, err := dialIn(attacker, addr, 2*time.Second)
		if err != nil {
			break
		}
		flood = append(flood, c)
	}
	defer func() {
		for _, c := range flood {
			c.Close()
		}
	}()
	logHas(t, "flood", "not yet authenticated (cap 8 per host)")
	before := p.waitFor("status", 5*time.Second, func(supervisor.Status) bool { return true }).StandbyEpoch
	p.waitFor("still protected during the flood", 20*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= before+3
	})
	if strings.Contains(sb.logs.String(), "taking over") {
		t.Fatalf("the standby took a service over while its primary was alive:\n%s", tail(sb.logs.String(), 30))
	}

	// Now the real primary host dies, flood still on: its program is taken over.
	p.kill9()
	killService(t, name)
	t0 := time.Now()
	deadline := t0.Add(20 * time.Second)
	for {
		if fi, err := os.Stat(out); err == nil && fi.ModTime().After(t0.Add(100*time.Millisecond)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby did not take %q over within 20s:\n%s", name, tail(sb.logs.String(), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("taken over %s after the primary's death", time.Since(t0).Round(time.Millisecond))
	if n := countCounters(t, script); n != 1 {
		t.Errorf("%d copies after take-over, want 1", n)
	}
	if n := cg.ooms(t); n != 0 {
		t.Fatalf("%d OOM kills in the standby's cgroup", n)
	}
	if strings.Contains(sb.logs.String(), `taking over: primary silent`) && strings.Count(sb.logs.String(), "taking over") != 1 {
		t.Errorf("more than one take-over:\n%s", tail(sb.logs.String(), 30))
	}
	sb.stop()
}

// hostileMemScale multiplies the standby's memory bounds (see hostile_race_test.go).
var hostileMemScale int64 = 1

// waitListening waits until addr accepts connections from h.
func waitListening(t *testing.T, h host, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := dialIn(h, addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept connections: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A program plants links in its synced directory (its own to write in) pointing at
// a root-owned file elsewhere. A link where the restore writes its temporary copy
// is removed, not followed (this is where the restore used to chmod and overwrite
// the target); a link in place of the journal fails the restore with one line naming
// it. Either way the target keeps its content and mode.
func TestSyncedRestoreRefusesPlantedLink(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "hx-sync-link"
	t.Cleanup(func() { killService(t, name) })
	script, dir, journal := writeJournal(t)
	victimDir := t.TempDir()
	victim := filepath.Join(victimDir, "shadow")
	must(t, os.WriteFile(victim, []byte("root's secret\n"), 0o600))
	untouched := func(when string) {
		t.Helper()
		b, _ := os.ReadFile(victim)
		fi, _ := os.Stat(victim)
		if string(b) != "root's secret\n" || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: the link's target changed: %q, mode %v", when, b, fi.Mode())
		}
		if ents, _ := os.ReadDir(victimDir); len(ents) != 1 {
			t.Fatalf("%s: the link's directory holds %d entries, want 1", when, len(ents))
		}
	}
	p := startFtrun(t, t.TempDir(), nil, "--name", name, "--interval", "300ms", "--discard", "--no-fresh", "--sync", dir, "--", "ruby", script, journal)
	st := p.waitFor("checkpoints", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch >= 3 && s.Pid > 0 })

	must(t, os.Symlink(victim, journal+".ftrun-restore"))
	must(t, syscall.Kill(st.Pid, syscall.SIGKILL))
	back := p.waitFor("restored", 20*time.Second, func(s supervisor.Status) bool {
		return s.Pid > 0 && s.Pid != st.Pid && s.State == supervisor.StateRunning
	})
	untouched("a link as the temporary")
	if _, err := journalConsistent(journal); err != nil {
		t.Fatal(err)
	}

	// Stopped, the program is not checkpointed again: the newest epoch holds the
	// journal as a file, the directory now a link.
	p.waitFor("checkpoints", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch >= back.Epoch+2 })
	must(t, syscall.Kill(back.Pid, syscall.SIGSTOP))
	time.Sleep(700 * time.Millisecond)
	must(t, os.Remove(journal))
	must(t, os.Symlink(victim, journal))
	must(t, syscall.Kill(back.Pid, syscall.SIGKILL))
	code, err := p.wait(60 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code != supervisor.ExitGaveUp {
		t.Errorf("exit code %d, want %d (the ladder gives up)", code, supervisor.ExitGaveUp)
	}
	log := p.log()
	want := fmt.Sprintf("restore synced file %q: %q is a symbolic link", journal, journal)
	if !strings.Contains(log, want) && !strings.Contains(log, strings.ReplaceAll(want, `"`, `\"`)) {
		t.Errorf("log lacks %q:\n%s", want, tail(log, 20))
	}
	untouched("a link as the journal")
}

// listenIn listens on addr inside host h; the socket keeps h's network namespace.
func listenIn(t *testing.T, h host, addr string) net.Listener {
	t.Helper()
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends in the namespace
		f, err := os.Open(h.nsPath())
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, err}
			return
		}
		ln, err := net.Listen("tcp", addr)
		ch <- result{ln, err}
	}()
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.ln.Close() })
	return r.ln
}

// A host with a primary's certificate from the same CA poses as the standby: the
// real primary refuses it during the handshake, says why, and sends it nothing.
func TestPrimaryRefusesPeerWithoutStandbyRole(t *testing.T) {
	requiresRoot(t, "ruby")
	hosts := hostNet(t, 2)
	primary, fake := hosts[0], hosts[1]
	name := "hx-refuse"
	t.Cleanup(func() { killService(t, name) })
	keys := issueKeys(t, name, "hx-other")
	evilKeys, err := auth.LoadConfig(keys.evil)
	must(t, err)
	ln := listenIn(t, fake, fake.addr+":7946")
	var got atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, evilKeys.Server())
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			n, _ := io.Copy(io.Discard, tc)
			got.Add(n)
			tc.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	script, out := writeCounter(t)
	p := startFtrunIn(t, primary.nsPath(), t.TempDir(), nil, "--name", name, "--interval", "300ms", "--discard",
		"--standby", fake.addr+":7946", "--keys", keys.good, "--", "ruby", script, out)
	st := p.waitFor("unprotected", 20*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "unprotected") && s.Epoch >= 2
	})
	log := p.log()
	if !strings.Contains(log, "incompatible key usage") && !strings.Contains(log, `lacks the \"standby\" role`) {
		t.Errorf("the primary's log does not say why it refused the peer:\n%s", tail(log, 20))
	}
	if n := got.Load(); n != 0 {
		t.Errorf("the fake standby received %d bytes", n)
	}
	if st.State != supervisor.StateRunning {
		t.Errorf("program state %s", st.State)
	}
}

// Hosts without certificates take every unauthenticated slot of the standby. A
// primary that dies meanwhile is not taken over: a live one reconnecting now would
// be turned away too, so the standby cannot tell, says so, and waits. Once the flood
// ends, silence means death again and the program is taken over.
func TestFloodedStandbyTakesNothingOver(t *testing.T) {
	requiresRoot(t, "ruby")
	hosts := hostNet(t, 5)
	primary, stby, attackers := hosts[0], hosts[1], hosts[2:]
	name := "hx-flooded"
	t.Cleanup(func() { killService(t, name) })
	keys := issueKeys(t, name, "hx-unused")
	sb := startStandbyArgs(t, stby, t.TempDir(), keys.standby,
		"--max-unauthenticated", "8", "--max-unauthenticated-per-host", "4", "--handshake-timeout", "60s")
	addr := stby.addr + ":7946"
	waitListening(t, primary, addr)
	script, out := writeCounter(t)
	p := startFtrunIn(t, primary.nsPath(), t.TempDir(), nil, "--name", name, "--interval", "300ms", "--discard",
		"--standby", addr, "--keys", keys.good, "--", "ruby", script, out)
	p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 2
	})
	var flood []net.Conn
	stopFlood := func() {
		for _, c := range flood {
			c.Close()
		}
		flood = nil
	}
	defer stopFlood()
	for _, a := range attackers {
		for range 4 {
			if c, err := dialIn(a, addr, 2*time.Second); err == nil {
				flood = append(flood, c)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(sb.logs.String(), "turning connections away") {
		if time.Now().After(deadline) {
			t.Fatalf("the standby does not say it turns connections away:\n%s", tail(sb.logs.String(), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.kill9()
	killService(t, name)
	time.Sleep(4 * time.Second) // four take-over timeouts
	if strings.Contains(sb.logs.String(), "taking over") {
		t.Fatalf("the standby took a service over while flooded:\n%s", tail(sb.logs.String(), 20))
	}
	t0 := time.Now()
	stopFlood()
	deadline = time.Now().Add(20 * time.Second)
	for {
		if fi, err := os.Stat(out); err == nil && fi.ModTime().After(t0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not taken over within 20s of the flood's end:\n%s", tail(sb.logs.String(), 20))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("taken over %s after the flood ended", time.Since(t0).Round(time.Millisecond))
	sb.stop()
}

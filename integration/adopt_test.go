package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// The older form's standby host: its `ftrun standby` runs the live copy after a
// take-over and is SIGKILLed (the program goes on). Restarted at once, it adopts the
// copy (same pid, the address wired anew, protected by the old primary's host again);
// restarted only after the peer took over, it kills the orphan and serves as the
// peer's standby. One copy throughout, the client's connection survives, no
// acknowledged write is lost.
func TestStandbyLiveCopyRestart(t *testing.T) {
	e := newPairEnv(t, "f2-sadopt")
	sb := e.standbyB(t)
	pa := e.runA(t)
	waitStatus(t, e.a.state, "A protected by B", 30*time.Second, protectedBy(e.b.h.addr))
	w := startWriter(t, e.outputEnv, redisService, e.port, 20*time.Second)
	defer w.close()
	waitWrites(t, w, 20, 20*time.Second, "first writes")
	pa = e.aDiesAndReturns(t, pa, w)
	st := waitStatus(t, e.liveB(), "B's live copy protected by A", 60*time.Second, protectedBy(e.a.h.addr))
	pid := st.Pid

	// Restarted at once: adopted.
	n := checkPrefix(t, w, 2)
	sb.kill()
	sb = e.standbyB(t)
	st = waitStatus(t, e.liveB(), "the adopted live copy protected by A", 60*time.Second, func(s supervisor.Status) bool {
		return protectedBy(e.a.h.addr)(s) && s.Adoptions == 1
	})
	if st.Pid != pid {
		t.Fatalf("the restarted standby runs pid %d, not the live copy %d it should have adopted", st.Pid, pid)
	}
	if ps := e.a.procs(t, e.name); len(ps) != 0 {
		t.Fatalf("A runs %s beside the adopted live copy", describe(ps))
	}
	if !strings.Contains(sb.logs.String(), "adopted the live copy an earlier standby here left running") {
		t.Errorf("B's log does not say it adopted the live copy:\n%s", tail(sb.logs.String(), 20))
	}
	waitWrites(t, w, n+10, 30*time.Second, "writes on the adopted live copy")
	checkPrefix(t, w, 2)

	// Restarted after the peer took over: the orphan is killed.
	n = checkPrefix(t, w, 3)
	sb.kill()
	waitStatus(t, e.a.state, "A takes over from the silent live copy", 30*time.Second, func(s supervisor.Status) bool {
		return s.Role == supervisor.RolePrimary && s.Pid > 0
	})
	if len(e.b.procs(t, e.name)) == 0 {
		t.Fatal("B's orphan is gone before its standby came back: the test needs it running")
	}
	sb = e.standbyB(t)
	waitStatus(t, e.a.state, "A's copy protected by B", 60*time.Second, protectedBy(e.b.h.addr))
	if ps := e.b.procs(t, e.name); len(ps) != 0 {
		t.Fatalf("B still runs %s while A is live", describe(ps))
	}
	if !strings.Contains(sb.logs.String(), "killing the live copy an earlier standby here left running") {
		t.Errorf("B's log does not say it killed the orphan:\n%s", tail(sb.logs.String(), 20))
	}
	waitWrites(t, w, n+10, 30*time.Second, "writes on A after the late restart")
	acked, final, err := w.finish(t, e.outputEnv, e.port)
	if err != nil {
		t.Fatalf("the client's connection did not survive: %v", err)
	}
	if v := outputViolations(acked, final); len(v) > 0 {
		t.Fatalf("%s", strings.Join(v, "; "))
	}
	t.Logf("%d writes acknowledged, 0 lost, 0 doubled, one copy at every step", len(acked))
}

package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftrun/ftrun/supervisor"
)

// journal.rb keeps an append-only journal open and writes its in-memory counter to it
// every tick: memory and file must agree, and CRIU refuses to restore a program whose
// open file changed size since the dump.
const journalRB = `f = File.open(ARGV[0], "a"); n = 0
loop { n += 1; f.write("#{n}\n"); f.flush; sleep 0.02 }`

func writeJournal(t *testing.T) (script, dir, journal string) {
	d := t.TempDir()
	script = filepath.Join(d, "journal.rb")
	if err := os.WriteFile(script, []byte(journalRB), 0o644); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(d, "state")
	os.MkdirAll(dir, 0o755)
	return script, dir, filepath.Join(dir, "journal.log")
}

// journalConsistent checks the journal is 1..n with no gap and no repeat: the file at
// each restore matched the memory that continued writing it.
func journalConsistent(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	for i, l := range lines {
		if n, err := strconv.Atoi(l); err != nil || n != i+1 {
			return 0, fmt.Errorf("journal line %d is %q, want %d: file and memory disagree", i+1, l, i+1)
		}
	}
	return len(lines), nil
}

// With --sync the journal goes back to its epoch's content before the restore, so the
// program continues it seamlessly. Without it CRIU restores the program onto a journal
// that grew past its memory, which then writes numbers the journal already has: the
// checker must see that (proof that it can fail).
func TestSyncedStateFilesMatchMemory(t *testing.T) {
	requiresRoot(t, "ruby")
	for _, withSync := range []bool{true, false} {
		t.Run(map[bool]string{true: "with --sync", false: "without --sync"}[withSync], func(t *testing.T) {
			name := "it-sync"
			t.Cleanup(func() { killService(t, name) })
			script, dir, journal := writeJournal(t)
			args := []string{"--name", name, "--interval", "300ms", "--discard"}
			if withSync {
				args = append(args, "--sync", dir)
			}
			p := startFtrun(t, t.TempDir(), nil, append(args, "--", "ruby", script, journal)...)
			for round := 0; round < 2; round++ {
				st := p.waitFor("checkpoints", 20*time.Second, func(s supervisor.Status) bool { return s.Epoch >= uint64(3*(round+1)) && s.Pid > 0 })
				time.Sleep(150 * time.Millisecond) // the journal grows past the checkpoint
				syscall.Kill(st.Pid, syscall.SIGKILL)
				p.waitFor("recovered", 20*time.Second, func(s supervisor.Status) bool {
					return s.Pid > 0 && s.Pid != st.Pid && s.State == supervisor.StateRunning
				})
			}
			time.Sleep(300 * time.Millisecond)
			st, _ := status(p.stateDir)
			if st.Restores != 2 || st.FreshStarts != 1 {
				t.Fatalf("restores %d, fresh starts %d: want 2 restores after the first start", st.Restores, st.FreshStarts)
			}
			n, err := journalConsistent(journal)
			switch {
			case withSync && err != nil:
				t.Fatal(err)
			case withSync:
				t.Logf("journal 1..%d consistent across 2 restores", n)
			case err == nil:
				t.Fatalf("without --sync the journal should disagree with memory after a restore, but reads 1..%d", n)
			default:
				t.Logf("without --sync, as expected: %v", err)
			}
		})
	}
}

// The state files travel with the epochs: after the primary host dies (here its copy of
// the journal is lost with it), the standby puts the journal of its newest epoch back
// and the program continues it without a gap or a repeat.
func TestSyncedFilesFailOver(t *testing.T) {
	requiresRoot(t, "ruby")
	name := "it-sync-failover"
	pr, _ := newPair(t, name, 0)
	pr.startStandby(t)
	script, dir, journal := writeJournal(t)
	p := pr.run(t, name, "--sync", dir, "--", "ruby", script, journal)
	p.waitFor("protected", 30*time.Second, func(s supervisor.Status) bool {
		return strings.HasPrefix(s.Protection, "protected") && s.StandbyEpoch >= 4
	})
	p.kill9()
	killService(t, name)
	if err := os.Remove(journal); err != nil { // the primary's disk goes with it
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(journal); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the standby did not put the journal back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // the program continues the journal on the standby
	n, err := journalConsistent(journal)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("journal 1..%d consistent across failover", n)
}

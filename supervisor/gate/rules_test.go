package gate

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

func TestRuleCommand(t *testing.T) {
	got := ruleCommand("", "/usr/sbin/iptables", "-I", 4321)
	want := []string{"/usr/sbin/iptables", "-w", "-I", "OUTPUT", "!", "-o", "lo", "-j", "NFQUEUE", "--queue-num", "4321"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ruleCommand = %q, want %q", got, want)
	}
	got = ruleCommand("/proc/42/ns/net", "/usr/sbin/ip6tables", "-D", 7)
	want = []string{"nsenter", "--net=/proc/42/ns/net", "--", "/usr/sbin/ip6tables", "-w", "-D", "OUTPUT", "!", "-o", "lo", "-j", "NFQUEUE", "--queue-num", "7"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ruleCommand = %q, want %q", got, want)
	}
	for _, a := range got {
		if a == "--queue-bypass" {
			t.Fatal("the rule must never bypass the queue")
		}
	}
}

// exitErr is a command that ran and exited with a code, like *exec.ExitError.
type exitErr int

func (e exitErr) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
func (e exitErr) ExitCode() int { return int(e) }

// fakeTables plays iptables and ip6tables: it keeps each tool's rule count and records
// the operations.
type fakeTables struct {
	count map[string]int // tool → copies of the gate's rule
	fail  map[string]string
	ops   []string
}

func (f *fakeTables) run(_ context.Context, argv []string) ([]byte, error) {
	i := 0
	if argv[0] == "nsenter" {
		i = 3
	}
	tool, op := argv[i], argv[i+2]
	f.ops = append(f.ops, tool+" "+op)
	if out, ok := f.fail[tool+" "+op]; ok {
		return []byte(out), exitErr(2)
	}
	switch op {
	case "-C":
		if f.count[tool] == 0 {
			return []byte("iptables: Bad rule (does a matching rule exist in that chain?)."), exitErr(1)
		}
	case "-D":
		if f.count[tool] == 0 {
			return []byte("iptables: Bad rule."), exitErr(1)
		}
		f.count[tool]--
	case "-I":
		f.count[tool]++
	}
	return nil, nil
}

func lookAll(name string) (string, error) { return "/sbin/" + name, nil }

func TestRulesInstallRemove(t *testing.T) {
	f := &fakeTables{count: map[string]int{"/sbin/iptables": 2}} // a dead ftrun left two
	r := &rules{netns: "/run/netns/x", queue: 9, run: f.run, lookPath: lookAll}
	n, err := r.install(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("leftovers removed = %d, want 2", n)
	}
	if f.count["/sbin/iptables"] != 1 || f.count["/sbin/ip6tables"] != 1 {
		t.Fatalf("rules = %v, want exactly one per tool", f.count)
	}
	if err := r.remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if f.count["/sbin/iptables"] != 0 || f.count["/sbin/ip6tables"] != 0 {
		t.Fatalf("rules after remove = %v, want none", f.count)
	}
	wantOps := []string{
		"/sbin/iptables -C", "/sbin/iptables -D", "/sbin/iptables -C", "/sbin/iptables -D", "/sbin/iptables -C", "/sbin/iptables -I",
		"/sbin/ip6tables -C", "/sbin/ip6tables -I",
		"/sbin/ip6tables -D", "/sbin/iptables -D",
	}
	if !reflect.DeepEqual(f.ops, wantOps) {
		t.Fatalf("ops =\n %q, want\n %q", f.ops, wantOps)
	}
}

func TestRulesInstallRollsBack(t *testing.T) {
	f := &fakeTables{
		count: map[string]int{},
		fail:  map[string]string{"/sbin/ip6tables -I": "ip6tables v1.8.9 (nf_tables): Couldn't load target `NFQUEUE':No such file or directory"},
	}
	r := &rules{queue: 9, run: f.run, lookPath: lookAll}
	_, err := r.install(context.Background())
	if err == nil || !strings.Contains(err.Error(), "modprobe nfnetlink_queue xt_NFQUEUE") {
		t.Fatalf("error = %v, want the NFQUEUE fix", err)
	}
	if f.count["/sbin/iptables"] != 0 {
		t.Fatalf("the IPv4 rule stayed after the IPv6 one failed: %v", f.count)
	}
}

func TestRulesMissingTools(t *testing.T) {
	missing := func(name string) func(string) (string, error) {
		return func(n string) (string, error) {
			if n == name {
				return "", exec.ErrNotFound
			}
			return "/sbin/" + n, nil
		}
	}
	for _, tc := range []struct{ name, netns, want string }{
		{"iptables", "", "install iptables"},
		{"ip6tables", "", "install iptables"},
		{"nsenter", "/proc/1/ns/net", "install util-linux"},
	} {
		f := &fakeTables{count: map[string]int{}}
		r := &rules{netns: tc.netns, queue: 1, run: f.run, lookPath: missing(tc.name)}
		_, err := r.install(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, exec.ErrNotFound) {
			t.Errorf("%s missing: error = %v, want %q wrapping exec.ErrNotFound", tc.name, err, tc.want)
		}
		if f.count["/sbin/iptables"] != 0 || f.count["/sbin/ip6tables"] != 0 {
			t.Errorf("%s missing: rules left installed: %v", tc.name, f.count)
		}
	}
}

func TestClassifyRuleError(t *testing.T) {
	cases := []struct {
		out  string
		exit int
		err  error
		want string
	}{
		{"iptables v1.8.9 (legacy): Couldn't load target `NFQUEUE':No such file or directory\n\nTry `iptables -h' for more information.", 2, exitErr(2), "modprobe nfnetlink_queue xt_NFQUEUE"},
		{"Warning: Extension NFQUEUE revision 0 not supported, missing kernel module?", 4, exitErr(4), "modprobe nfnetlink_queue xt_NFQUEUE"},
		{"iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)", 4, exitErr(4), "run ftrun as root"},
		{"nsenter: failed to execute iptables: No such file or directory", 127, exitErr(127), "install iptables and util-linux"},
		{"nsenter: cannot open /proc/99999/ns/net: No such file or directory", 1, exitErr(1), "still runs"},
		{"iptables v1.8.9 (legacy): can't initialize iptables table `filter': Table does not exist", 3, exitErr(3), "modprobe ip_tables"},
		{"", -1, context.DeadlineExceeded, "xtables lock"},
		{"something else", 1, exitErr(1), "iptables failed"},
	}
	for _, tc := range cases {
		ce := &commandError{argv: []string{"iptables", "-w", "-I"}, exit: tc.exit, out: oneLine(tc.out), err: tc.err}
		err := classifyRuleError(ce)
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("classify(%q) = %v, want %q", tc.out, err, tc.want)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("classify(%q) spans lines: %q", tc.out, err)
		}
		var got *commandError
		if !errors.As(err, &got) {
			t.Errorf("classify(%q) does not wrap the command error", tc.out)
		}
	}
}

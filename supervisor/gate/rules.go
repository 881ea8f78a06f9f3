package gate

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ruleTools are the programs that install the gate's rule, one per address family.
var ruleTools = []string{"iptables", "ip6tables"}

// ruleTimeout bounds one iptables invocation; -w waits for the xtables lock within it.
const ruleTimeout = 30 * time.Second

// leftoverLimit bounds how many identical leftover rules Open removes per tool.
const leftoverLimit = 64

// ruleSpec is the gate's rule for the OUTPUT chain: every packet the namespace sends,
// except on loopback, goes to the queue. No --queue-bypass: with no listener the kernel
// drops the packet instead of letting it out.
func ruleSpec(queue uint16) []string {
	return []string{"OUTPUT", "!", "-o", "lo", "-j", "NFQUEUE", "--queue-num", strconv.Itoa(int(queue))}
}

// ruleCommand is the command line that runs tool (a path) with op ("-I", "-D", "-C")
// on the gate's rule, inside the network namespace at netns ("" = the current one).
func ruleCommand(netns, tool, op string, queue uint16) []string {
	args := append([]string{tool, "-w", op}, ruleSpec(queue)...)
	if netns == "" {
		return args
	}
	return append([]string{"nsenter", "--net=" + netns, "--"}, args...)
}

// runner runs a command line and returns its combined output.
type runner func(ctx context.Context, argv []string) ([]byte, error)

func execRunner(ctx context.Context, argv []string) ([]byte, error) {
	return exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
}

// rules installs and removes the gate's rules in one network namespace.
type rules struct {
	netns     string
	queue     uint16
	run       runner
	lookPath  func(string) (string, error)
	installed []string // tool paths whose rule is in place, in install order
}

// install removes any identical rule a previous ftrun left behind (the queue number is
// bound by this gate now, so any rule naming it is stale), then inserts the gate's rule
// for IPv4 and IPv6. On failure it removes what it installed. It returns the number of
// leftover rules removed.
func (r *rules) install(ctx context.Context) (leftovers int, err error) {
	if r.netns != "" {
		if _, err := r.lookPath("nsenter"); err != nil {
			return 0, fmt.Errorf("gate: nsenter not found (%w): install util-linux (scripts/setup does)", err)
		}
	}
	for _, name := range ruleTools {
		tool, err := r.lookPath(name)
		if err != nil {
			r.remove(ctx)
			return leftovers, fmt.Errorf("gate: %s not found (%w): install iptables (scripts/setup does)", name, err)
		}
		n, err := r.removeAll(ctx, tool)
		leftovers += n
		if err != nil {
			r.remove(ctx)
			return leftovers, err
		}
		if err := r.exec(ctx, tool, "-I"); err != nil {
			r.remove(ctx)
			return leftovers, err
		}
		r.installed = append(r.installed, tool)
	}
	return leftovers, nil
}

// removeAll deletes every copy of the gate's rule that tool's table holds.
func (r *rules) removeAll(ctx context.Context, tool string) (int, error) {
	n := 0
	for ; n < leftoverLimit; n++ {
		if err := r.exec(ctx, tool, "-C"); err != nil {
			var ce *commandError
			if errors.As(err, &ce) && ce.exit == 1 {
				return n, nil // no such rule
			}
			return n, err
		}
		if err := r.exec(ctx, tool, "-D"); err != nil {
			return n, err
		}
	}
	return n, fmt.Errorf("gate: more than %d leftover rules for queue %d: remove them with %s -D %s",
		leftoverLimit, r.queue, tool, strings.Join(ruleSpec(r.queue), " "))
}

// remove deletes the rules install put in place, newest first.
func (r *rules) remove(ctx context.Context) error {
	var errs []error
	for i := len(r.installed) - 1; i >= 0; i-- {
		if err := r.exec(ctx, r.installed[i], "-D"); err != nil {
			errs = append(errs, err)
		}
	}
	r.installed = nil
	return errors.Join(errs...)
}

// commandError is a failed iptables invocation.
type commandError struct {
	argv []string
	exit int // the exit code, -1 when the command did not run to an exit
	out  string
	err  error
}

func (e *commandError) Error() string {
	msg := strings.Join(e.argv, " ") + ": " + e.err.Error()
	if e.out != "" {
		msg += ": " + e.out
	}
	return msg
}

func (e *commandError) Unwrap() error { return e.err }

func (r *rules) exec(ctx context.Context, tool, op string) error {
	ctx, cancel := context.WithTimeout(ctx, ruleTimeout)
	defer cancel()
	argv := ruleCommand(r.netns, tool, op, r.queue)
	out, err := r.run(ctx, argv)
	if err == nil {
		return nil
	}
	exit := -1
	var ee interface{ ExitCode() int } // *exec.ExitError
	if errors.As(err, &ee) {
		exit = ee.ExitCode()
	}
	ce := &commandError{argv: argv, exit: exit, out: oneLine(string(out)), err: err}
	if op == "-C" && exit == 1 {
		return ce // "no such rule": the caller's business, not a failure
	}
	return classifyRuleError(ce)
}

// classifyRuleError turns a failed iptables invocation into a one-line error naming
// the cause and the fix, wrapping the invocation's own error.
func classifyRuleError(ce *commandError) error {
	lower := strings.ToLower(ce.out)
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(lower, s) {
				return true
			}
		}
		return false
	}
	switch {
	case has("nfqueue") && has("couldn't load target", "not supported", "no such file", "unknown"):
		return fmt.Errorf("gate: the kernel lacks the NFQUEUE target: modprobe nfnetlink_queue xt_NFQUEUE (%w)", ce)
	case has("permission denied", "must be root", "operation not permitted"):
		return fmt.Errorf("gate: iptables was refused: run ftrun as root, with CAP_NET_ADMIN (%w)", ce)
	case has("failed to execute") || ce.exit == 127:
		return fmt.Errorf("gate: iptables could not start: install iptables and util-linux, scripts/setup does (%w)", ce)
	case has("cannot open", "reassociate"):
		return fmt.Errorf("gate: cannot enter the program's network namespace: check that the program still runs (%w)", ce)
	case has("can't initialize", "table does not exist"):
		return fmt.Errorf("gate: the kernel lacks the filter table: modprobe ip_tables ip6_tables, or nf_tables (%w)", ce)
	case errors.Is(ce.err, context.DeadlineExceeded):
		return fmt.Errorf("gate: iptables timed out after %s, another process holds the xtables lock: retry or find it (%w)", ruleTimeout, ce)
	default:
		return fmt.Errorf("gate: iptables failed (%w)", ce)
	}
}

// oneLine joins the lines of a command's output so that errors stay on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), "\n", " | ")), " ")
}

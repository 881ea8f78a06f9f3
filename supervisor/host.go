package supervisor

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftrun/ftrun/checkpoint"
)

// ProbeHost returns what `ftrun check` reports about the kernel and host beyond CRIU.
func ProbeHost() []checkpoint.Finding {
	var fs []checkpoint.Finding
	mode := CgroupMode()
	if mnt, err := cgroup2Mount(); err == nil {
		fs = append(fs, checkpoint.Finding{Name: "cgroups", OK: true, Required: true,
			Detail: fmt.Sprintf("mode %s; cgroup2 at %s (grouping, freeze, kill)", mode, mnt)})
	} else {
		fs = append(fs, checkpoint.Finding{Name: "cgroups", Required: true, Detail: "mode " + mode,
			Fix: "ftrun needs a cgroup2 hierarchy: mount one (`mount -t cgroup2 none /sys/fs/cgroup/unified`)"})
	}
	fs = append(fs, nsFinding("PID namespace", unix.CLONE_NEWPID, true,
		"a restore must not need the original PID: enable CONFIG_PID_NS"))
	fs = append(fs, nsFinding("network namespace", unix.CLONE_NEWNET, false,
		"needed for --net: enable CONFIG_NET_NS"))
	fs = append(fs, tcpRepairFinding())
	fs = append(fs, nfqueueFinding())
	return fs
}

// nsFinding starts a short-lived child in a new namespace of kind flag.
func nsFinding(name string, flag uintptr, required bool, fix string) checkpoint.Finding {
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &unix.SysProcAttr{Cloneflags: flag}
	if err := cmd.Run(); err != nil {
		return checkpoint.Finding{Name: name, Required: required, Detail: err.Error(), Fix: fix}
	}
	return checkpoint.Finding{Name: name, OK: true, Required: required, Detail: "can create"}
}

// tcpRepairFinding checks TCP_REPAIR, which CRIU needs to dump established connections.
func tcpRepairFinding() checkpoint.Finding {
	f := checkpoint.Finding{Name: "TCP repair", Required: false}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		f.Detail = err.Error()
		return f
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_TCP, unix.TCP_REPAIR, 1); err != nil {
		f.Detail = "TCP_REPAIR: " + err.Error()
		f.Fix = "run as root (CAP_NET_ADMIN); the kernel needs CONFIG_CHECKPOINT_RESTORE; without it programs with TCP connections cannot be checkpointed"
		return f
	}
	f.OK, f.Detail = true, "TCP_REPAIR works (established connections can be checkpointed)"
	return f
}

// nfqueueFinding tries an NFQUEUE rule with a cgroup match in a throwaway network
// namespace, so the host's own rules are never touched.
func nfqueueFinding() checkpoint.Finding {
	f := checkpoint.Finding{Name: "iptables NFQUEUE + cgroup match"}
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		f.Detail, f.Fix = "iptables not found", "install iptables (scripts/setup does); needed for the output gate"
		return f
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	script := ipt + " -w -N FTRUN_CHECK && " + ipt + " -w -A FTRUN_CHECK -m cgroup --path / -j NFQUEUE --queue-num 4242"
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", script)
	cmd.SysProcAttr = &unix.SysProcAttr{Cloneflags: unix.CLONE_NEWNET}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		f.Detail = strings.TrimSpace(out.String())
		if f.Detail == "" {
			f.Detail = err.Error()
		}
		f.Fix = "load xt_NFQUEUE, nfnetlink_queue and xt_cgroup (modprobe); needed for the output gate"
		return f
	}
	f.OK, f.Detail = true, "rule accepted (checked in a scratch network namespace)"
	return f
}

// RequireRoot is the one-line error for commands that need root.
func RequireRoot() error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("ftrun must run as root (CRIU, cgroups and namespaces need it)")
	}
	return nil
}

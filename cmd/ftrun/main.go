// Command ftrun keeps an unmodified program alive through crashes, hangs and its own
// supervisor's death by checkpointing it with CRIU and restoring it.
//
// This file only turns flags into options; the work happens in the packages below.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ftrun/ftrun/arbiter"
	"github.com/ftrun/ftrun/checkpoint"
	"github.com/ftrun/ftrun/contrib/demo"
	"github.com/ftrun/ftrun/failover"
	"github.com/ftrun/ftrun/supervisor"
	"github.com/ftrun/ftrun/supervisor/netplace"
	"github.com/ftrun/ftrun/supervisor/phase"
	"github.com/ftrun/ftrun/transport/auth"
	"github.com/ftrun/ftrun/transport/standby"
	"github.com/ftrun/ftrun/watchdog"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const (
	defaultStateRoot    = "/var/lib/ftrun"
	defaultStandbyState = "/var/lib/ftrun-standby"
)

func main() {
	// Before anything else: nothing ftrun inherited may reach the program or CRIU.
	if err := supervisor.SealInheritedFds(); err != nil {
		fmt.Fprintf(os.Stderr, "ftrun: %v\n", err)
		os.Exit(supervisor.ExitError)
	}
	if err := newApp().Run(os.Args); err != nil {
		fmt.Fprintf(os.Stderr, "ftrun: %v\n", err)
		os.Exit(exitCode(err))
	}
}

// newApp is ftrun's command line.
func newApp() *cli.App {
	return &cli.App{
		Name:    "ftrun",
		Usage:   "checkpoint/restart supervisor: protects an unmodified program with CRIU",
		Version: version,
		Description: "ftrun runs a program in its own cgroup and PID namespace, checkpoints it every\n" +
			"interval with CRIU, and when it crashes or hangs restores the newest good checkpoint\n" +
			"(then older ones, then a fresh start). Every flag can also be set by environment.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "log-format", Value: "auto", Usage: "log format: text, json, journal (systemd's native protocol, with SERVICE=, EPOCH=, STEP=... fields) or auto (journal when systemd connected stderr to it, else text)", EnvVars: []string{"FTRUN_LOG_FORMAT"}},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "debug, info, warn or error", EnvVars: []string{"FTRUN_LOG_LEVEL"}},
			&cli.StringFlag{Name: "cgroup-root", Value: supervisor.CgroupRoot, Hidden: true, Usage: "parent of the services' cgroups (several hosts simulated on one machine)", EnvVars: []string{"FTRUN_CGROUP_ROOT"}},
		},
		Commands:       []*cli.Command{runCmd(), checkCmd(), statusCmd(), checkpointCmd(), restoreCmd(), keygenCmd(), standbyCmd(), demoCmd(), benchCmd()},
		ExitErrHandler: func(c *cli.Context, err error) {},
		Before: func(c *cli.Context) error {
			supervisor.CgroupRoot = c.String("cgroup-root")
			return nil
		},
	}
}

func exitCode(err error) int {
	var xe *supervisor.ExitErr
	if errors.As(err, &xe) {
		return xe.Code
	}
	var ce cli.ExitCoder
	if errors.As(err, &ce) {
		return ce.ExitCode()
	}
	if strings.Contains(err.Error(), "flag provided but not defined") || strings.Contains(err.Error(), "Required flag") || strings.Contains(err.Error(), "invalid value") {
		return supervisor.ExitUsage
	}
	return supervisor.ExitError
}

func newLogger(c *cli.Context) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.String("log-level"))); err != nil {
		return nil, usage("--log-level: %v", err)
	}
	format := logFormat(c.String("log-format"), stderrIsJournal(), journalUp())
	h, err := newHandler(format, &slog.HandlerOptions{Level: level})
	if err != nil {
		return nil, &supervisor.ExitErr{Code: supervisor.ExitSetup, Err: fmt.Errorf("--log-format journal: %w", err)}
	}
	if h == nil {
		return nil, usage("--log-format must be auto, text, json or journal, not %q", c.String("log-format"))
	}
	return slog.New(h), nil
}

func usage(format string, a ...any) error {
	return &supervisor.ExitErr{Code: supervisor.ExitUsage, Err: fmt.Errorf(format, a...)}
}

func env(name string) []string { return []string{"FTRUN_" + name} }

func stateDirFlag() cli.Flag {
	return &cli.StringFlag{Name: "state-dir", Usage: "service state directory (default " + defaultStateRoot + "/NAME)", EnvVars: env("STATE_DIR")}
}

func nameFlag() cli.Flag {
	return &cli.StringFlag{Name: "name", Usage: "service name (default: the command's base name)", EnvVars: env("NAME")}
}

func runCmd() *cli.Command {
	return &cli.Command{
		Name:      "run",
		Usage:     "run CMD under protection",
		ArgsUsage: "-- CMD [ARGS...]",
		Flags: []cli.Flag{
			nameFlag(), stateDirFlag(),
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "time between checkpoints (epoch length)", EnvVars: env("INTERVAL")},
			&cli.IntFlag{Name: "keep", Value: 3, Usage: "checkpoints to keep", EnvVars: env("KEEP")},
			&cli.StringFlag{Name: "restart", Value: "on-failure", Usage: "what exit 0 means: on-failure (stop), always (start again), never (any exit stops)", EnvVars: env("RESTART")},
			&cli.BoolFlag{Name: "no-fresh", Usage: "never fall back to a fresh start (the program's state would be lost)", EnvVars: env("NO_FRESH")},
			&cli.BoolFlag{Name: "no-final-checkpoint", Usage: "on SIGTERM stop the program without a last checkpoint", EnvVars: env("NO_FINAL_CHECKPOINT")},
			&cli.BoolFlag{Name: "discard", Usage: "throw away existing checkpoints and start afresh", EnvVars: env("DISCARD")},
			&cli.IntFlag{Name: "burst", Value: supervisor.DefaultLadderPolicy.Burst, Usage: "give up after this many crashes within --burst-window", EnvVars: env("BURST")},
			&cli.DurationFlag{Name: "burst-window", Value: supervisor.DefaultLadderPolicy.Window, Usage: "period for --burst", EnvVars: env("BURST_WINDOW")},
			&cli.DurationFlag{Name: "backoff", Value: supervisor.DefaultLadderPolicy.BackoffBase, Usage: "delay before a repeated recovery attempt (doubles, capped at --backoff-max)", EnvVars: env("BACKOFF")},
			&cli.DurationFlag{Name: "backoff-max", Value: supervisor.DefaultLadderPolicy.BackoffMax, Usage: "cap for --backoff", EnvVars: env("BACKOFF_MAX")},
			&cli.StringFlag{Name: "health-cmd", Usage: "shell command that exits 0 while the program answers", EnvVars: env("HEALTH_CMD")},
			&cli.StringFlag{Name: "health-tcp", Usage: "HOST:PORT that must accept (and answer, see --health-send/--health-expect)", EnvVars: env("HEALTH_TCP")},
			&cli.StringFlag{Name: "health-send", Usage: "bytes to send on --health-tcp; C-style escapes (\\r \\n \\t \\xHH ...) are decoded (in a systemd EnvironmentFile, single-quote the value: 'PING\\r\\n')", EnvVars: env("HEALTH_SEND")},
			&cli.StringFlag{Name: "health-expect", Usage: "reply --health-tcp must contain (escapes as in --health-send)", EnvVars: env("HEALTH_EXPECT")},
			&cli.DurationFlag{Name: "health-interval", Value: time.Second, Usage: "time between health probes", EnvVars: env("HEALTH_INTERVAL")},
			&cli.DurationFlag{Name: "health-timeout", Value: 2 * time.Second, Usage: "time a probe may take", EnvVars: env("HEALTH_TIMEOUT")},
			&cli.IntFlag{Name: "health-threshold", Value: 3, Usage: "consecutive failed probes that mean the program hangs", EnvVars: env("HEALTH_THRESHOLD")},
			&cli.DurationFlag{Name: "health-start-period", Value: 0, Usage: "grace after each (re)start before failures count", EnvVars: env("HEALTH_START_PERIOD")},
			&cli.StringFlag{Name: "criu", Usage: "criu binary (default: from PATH)", EnvVars: env("CRIU")},
			incrementalFlag(), fullEveryFlag(),
			&cli.DurationFlag{Name: "criu-timeout", Value: 10 * time.Second, Usage: "how long CRIU may take to freeze the program", EnvVars: env("CRIU_TIMEOUT")},
			dumpTimeoutFlag(), restoreTimeoutFlag(),
			&cli.DurationFlag{Name: "stop-timeout", Value: supervisor.DefaultStopTimeout, Usage: "on stop without a final checkpoint: time between SIGTERM to the program and SIGKILL", EnvVars: env("STOP_TIMEOUT")},
			&cli.IntFlag{Name: "preserve-fds", Value: -1, DefaultText: "LISTEN_FDS under systemd socket activation, else 0", Usage: "pass N descriptors from 3 on to the program (every other inherited descriptor is closed for it)", EnvVars: env("PRESERVE_FDS")},
			&cli.StringFlag{Name: "standby", Usage: "`HOST:PORT` of the peer: an 'ftrun standby' to stream every checkpoint to, or (after it took the service over) the live copy this host serves as standby of", EnvVars: env("STANDBY")},
			durabilityFlag(), epochOnOutputFlag(),
			&cli.StringFlag{Name: "listen", Value: ":7946", Usage: "with --standby: where this host serves as the standby of the service's live copy on the peer, when the peer took it over (\"\": exit 156 instead); given explicitly, also where it answers the peer while it decides its role at boot and while it runs the program, so that both hosts of a pair can run this same command (see --priority)", EnvVars: env("LISTEN")},
			&cli.IntFlag{Name: "priority", Value: 0, Usage: "with --standby and --listen: when both hosts boot with no copy running and hold the same epoch, the one with the higher priority runs the program (then the smaller certificate name, then the smaller --node)", EnvVars: env("PRIORITY")},
			&cli.StringFlag{Name: "node", DefaultText: "the host name", Usage: "this host's name towards the arbiter and its peer", EnvVars: env("NODE")},
			&cli.DurationFlag{Name: "peer-wait", Value: supervisor.DefaultPeerWait, Usage: "with --standby: how long the boot tries to reach the peer before deciding alone", EnvVars: env("PEER_WAIT")},
			&cli.DurationFlag{Name: "takeover-timeout", Value: supervisor.HeartbeatTimeout, Usage: "serving as standby: silence of the live copy after which this host takes over", EnvVars: env("TAKEOVER_TIMEOUT")},
			&cli.BoolFlag{Name: "force-primary", Usage: "with --standby: run the program although the peer cannot be reached and this host was its standby last (only when the peer is gone for good)", EnvVars: env("FORCE_PRIMARY")},
			arbiterFlag(),
			keysFlag(),
			&cli.StringSliceFlag{Name: "sync", Usage: "a state file or directory of the program: captured with every checkpoint (and streamed to the standby), put back before every restore (repeatable)", EnvVars: env("SYNC")},
			&cli.StringFlag{Name: "user", Usage: "run the program as USER[:GROUP] (default: as ftrun's user; programs that drop privileges themselves need none)", EnvVars: env("USER")},
			&cli.StringFlag{Name: "metrics", Usage: "ADDR (e.g. :9464) to serve Prometheus metrics on, at /metrics", EnvVars: env("METRICS")},
			&cli.BoolFlag{Name: "no-sync", Hidden: true, Usage: "skip fsync of checkpoints (benchmarks only)", EnvVars: env("NO_SYNC")},
			&cli.BoolFlag{Name: "net", Usage: "run the program in its own network namespace, on a veth attached to --bridge, serving --addr", EnvVars: env("NET")},
			&cli.StringFlag{Name: "addr", Usage: "with --net: the service address, CIDR (e.g. 198.18.5.100/24)", EnvVars: env("ADDR")},
			&cli.StringFlag{Name: "mac", Usage: "with --net: the service MAC (default: derived from --name, so a standby uses the same one)", EnvVars: env("MAC")},
			bridgeFlag(),
			&cli.StringFlag{Name: "gateway", Usage: "with --net: default route of the program's namespace", EnvVars: env("GATEWAY")},
			&cli.StringFlag{Name: "commit", Usage: "when the program's output may leave: standby (once the standby holds the epoch that explains it; default with --net and --standby), local (once that epoch is on local disk) or off", EnvVars: env("COMMIT")},
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			argv := c.Args().Slice()
			if len(argv) == 0 {
				return usage("no command: ftrun run [flags] -- CMD [ARGS...]")
			}
			if err := supervisor.RequireRoot(); err != nil {
				return &supervisor.ExitErr{Code: supervisor.ExitSetup, Err: err}
			}
			criu := criuFromFlags(c)
			if v, err := (checkpoint.Prober{Path: c.String("criu")}).Usable(); err != nil {
				return &supervisor.ExitErr{Code: supervisor.ExitSetup, Err: err}
			} else {
				log.Debug("criu usable", "version", v.String())
			}
			restart := supervisor.RestartPolicy(c.String("restart"))
			switch restart {
			case supervisor.RestartOnFailure, supervisor.RestartAlways, supervisor.RestartNever:
			default:
				return usage("--restart must be on-failure, always or never, not %q", restart)
			}
			if c.Duration("interval") < 10*time.Millisecond {
				return usage("--interval %s is too short (minimum 10ms)", c.Duration("interval"))
			}
			name := c.String("name")
			if name == "" {
				name = filepath.Base(argv[0])
			}
			stateDir := c.String("state-dir")
			if stateDir == "" {
				stateDir = filepath.Join(defaultStateRoot, name)
			}
			health, err := healthFromFlags(c)
			if err != nil {
				return err
			}
			fromMemory, err := ackFromMemory(c)
			if err != nil {
				return err
			}
			var standbyTLS, listenTLS *tls.Config
			if c.String("standby") != "" {
				keys, err := auth.LoadConfig(c.String("keys"))
				if err != nil {
					return usage("--standby needs keys: %v", err)
				}
				if err := keys.Require(auth.RolePrimary); err != nil {
					return usage("--standby: %v", err)
				}
				if !keys.Identity().MayServe(name) {
					return usage("--standby: this host's certificate %s may not ship service %q (issue one with `ftrun keygen issue --role primary --service %s`)", keys.Identity(), name, name)
				}
				standbyTLS, listenTLS = keys.Client(), keys.Server()
				if c.String("listen") != "" && keys.Require(auth.RoleStandby) != nil {
					log.Warn("this host's certificate lacks the standby role: after a take-over by the peer it cannot serve as the live copy's standby, and exits instead", "certificate", keys.Identity().String())
					listenTLS = nil
				}
			}
			arb, err := arbiter.Open(c.String("arbiter"), 0)
			if err != nil {
				return usage("%v", err)
			}
			if arb != nil {
				defer arb.Close()
			}
			netSpec, err := netFromFlags(c, name)
			if err != nil {
				return err
			}
			commit, err := supervisor.ParseCommitMode(c.String("commit"))
			if err != nil {
				return usage("%v", err)
			}
			extra, listen, err := preservedFromFlags(c)
			if err != nil {
				return err
			}
			node := c.String("node")
			if node == "" {
				node, _ = os.Hostname()
			}
			wd, _ := os.Getwd()
			sup, err := supervisor.New(supervisor.Config{
				Net: netSpec, Commit: commit,
				Standby: c.String("standby"), StandbyTLS: standbyTLS, AckFromMemory: fromMemory, EpochOnOutput: c.Bool("epoch-on-output"), Listen: c.String("listen"), ListenTLS: listenTLS,
				PeerWait: c.Duration("peer-wait"), TakeoverTimeout: c.Duration("takeover-timeout"), ForcePrimary: c.Bool("force-primary"),
				Symmetric: c.IsSet("listen") && c.String("listen") != "", Priority: c.Int("priority"),
				Arbiter: arb, Node: node, Sync: c.StringSlice("sync"), MetricsAddr: c.String("metrics"),
				Name: name, Command: argv, WorkDir: wd, StateDir: stateDir,
				Interval: c.Duration("interval"), Keep: c.Int("keep"), Restart: restart,
				Ladder: supervisor.LadderPolicy{Burst: c.Int("burst"), Window: c.Duration("burst-window"),
					BackoffBase: c.Duration("backoff"), BackoffMax: c.Duration("backoff-max"), NoFresh: c.Bool("no-fresh")},
				NoFinalCheckpoint: c.Bool("no-final-checkpoint"), Discard: c.Bool("discard"),
				Health: health, Criu: criu, CriuTimeout: c.Duration("criu-timeout"), NoSync: c.Bool("no-sync"),
				StopTimeout: c.Duration("stop-timeout"), ExtraFiles: extra, ListenFds: listen,
				Log: log, User: c.String("user"),
				Incremental: supervisor.DirtyMode(c.String("incremental")), FullEvery: c.Int("full-every"),
			})
			if err != nil {
				return usage("%v", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			err = sup.Run(ctx)
			var xe *supervisor.ExitErr
			if errors.As(err, &xe) && xe.Code == supervisor.ExitOK {
				log.Info("ftrun exits", "reason", xe.Err)
				return nil
			}
			return err
		},
	}
}

func bridgeFlag() cli.Flag {
	return &cli.StringFlag{Name: "bridge", Value: "br0", Usage: "with --net: the host's bridge on the clients' network, which the program's veth joins", EnvVars: env("BRIDGE")}
}

// netFromFlags reads --net, --addr, --mac, --bridge and --gateway.
func netFromFlags(c *cli.Context, name string) (*netplace.Spec, error) {
	if !c.Bool("net") {
		for _, f := range []string{"addr", "mac", "gateway"} {
			if c.IsSet(f) {
				return nil, usage("--%s needs --net", f)
			}
		}
		return nil, nil
	}
	spec, err := netplace.ParseSpec(name, c.String("addr"), c.String("mac"), c.String("bridge"), c.String("gateway"))
	if err != nil {
		return nil, usage("%v", err)
	}
	spec.MAC = spec.HardwareAddr()
	return &spec, nil
}

func healthFromFlags(c *cli.Context) (*supervisor.Health, error) {
	cfg := watchdog.HealthConfig{Interval: c.Duration("health-interval"), Timeout: c.Duration("health-timeout"),
		Threshold: c.Int("health-threshold"), StartPeriod: c.Duration("health-start-period")}
	switch {
	case c.String("health-cmd") != "" && c.String("health-tcp") != "":
		return nil, usage("use one of --health-cmd and --health-tcp")
	case c.String("health-cmd") != "":
		return &supervisor.Health{Probe: watchdog.CommandProbe(c.String("health-cmd")), Config: cfg}, nil
	case c.String("health-tcp") != "":
		send, err := unescape(c.String("health-send"))
		if err != nil {
			return nil, usage("--health-send: %v", err)
		}
		expect, err := unescape(c.String("health-expect"))
		if err != nil {
			return nil, usage("--health-expect: %v", err)
		}
		return &supervisor.Health{Probe: watchdog.TCPProbe(c.String("health-tcp"), send, expect), Config: cfg}, nil
	}
	return nil, nil
}

// unescape decodes C-style escapes (\r \n \t \\ \" \xHH \NNN \uXXXX) so that a
// protocol like redis's (PING\r\n) can be written on a command line or in an
// environment file. A backslash before anything else is an error rather than a
// silent literal: "PINGrn", what systemd makes of an unquoted PING\r\n, cannot be
// caught, but a half-understood escape can.
func unescape(s string) (string, error) {
	var b strings.Builder
	for rest := s; rest != ""; {
		if strings.HasPrefix(rest, `\"`) || strings.HasPrefix(rest, `\'`) {
			b.WriteByte(rest[1])
			rest = rest[2:]
			continue
		}
		r, multibyte, tail, err := strconv.UnquoteChar(rest, 0)
		if err != nil {
			return "", fmt.Errorf("bad escape at %q in %q (C-style escapes: \\r \\n \\t \\\\ \\xHH \\NNN \\uXXXX)", rest[:min(len(rest), 4)], s)
		}
		if multibyte {
			b.WriteRune(r)
		} else {
			b.WriteByte(byte(r))
		}
		rest = tail
	}
	return b.String(), nil
}

const defaultKeys = "/etc/ftrun/keys"

func arbiterFlag() cli.Flag {
	return &cli.StringFlag{Name: "arbiter", Value: "none", EnvVars: env("ARBITER"),
		Usage: "who may run the program: none (a partition can leave two live copies) or etcd:HOST:PORT[,...] (a leased key; losing it freezes and kills the program)"}
}

func keysFlag() cli.Flag {
	return &cli.StringFlag{Name: "keys", Value: defaultKeys, Usage: "directory holding ca.crt, this host's node.key and node.crt, and optionally revoked (see 'ftrun keygen'; TLS 1.3, both ends authenticated)", EnvVars: env("KEYS")}
}

func standbyCmd() *cli.Command {
	return &cli.Command{
		Name:  "standby",
		Usage: "hold the newest committed checkpoint of every primary that streams here; take over when a primary goes silent",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: ":7946", Usage: "address to accept primaries on", EnvVars: env("LISTEN")},
			&cli.StringFlag{Name: "state-dir", Value: defaultStandbyState, Usage: "where epochs are kept, one directory per service", EnvVars: env("STANDBY_STATE_DIR")},
			keysFlag(),
			&cli.DurationFlag{Name: "takeover-timeout", Value: supervisor.HeartbeatTimeout, Usage: "silence of a primary after which this standby restores its program here", EnvVars: env("TAKEOVER_TIMEOUT")},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "checkpoint interval of a program after take-over", EnvVars: env("INTERVAL")},
			arbiterFlag(),
			bridgeFlag(),
			&cli.StringFlag{Name: "criu", Usage: "criu binary (default: from PATH)", EnvVars: env("CRIU")},
			incrementalFlag(), fullEveryFlag(),
			dumpTimeoutFlag(), restoreTimeoutFlag(),
			&cli.StringFlag{Name: "metrics", Usage: "ADDR (e.g. :9465) to serve Prometheus metrics on, one series per service, at /metrics", EnvVars: env("METRICS")},
			&cli.IntFlag{Name: "max-unauthenticated", Value: standby.DefaultMaxUnauthenticated, Usage: "connections not yet past TLS and Hello, in all (more are closed at once; reaching it stops take-overs while it lasts)", EnvVars: env("MAX_UNAUTHENTICATED")},
			&cli.IntFlag{Name: "max-unauthenticated-per-host", Value: standby.DefaultMaxUnauthenticatedPerHost, Usage: "connections not yet past TLS and Hello, per remote address", EnvVars: env("MAX_UNAUTHENTICATED_PER_HOST")},
			&cli.DurationFlag{Name: "handshake-timeout", Value: standby.DefaultHandshakeTimeout, Usage: "time a connection has for TLS and its Hello", EnvVars: env("HANDSHAKE_TIMEOUT")},
			&cli.DurationFlag{Name: "idle-timeout", Value: standby.DefaultIdleTimeout, Usage: "a primary's connection silent this long is closed", EnvVars: env("IDLE_TIMEOUT")},
			&cli.IntFlag{Name: "quota-services", Value: 16, Usage: "services one certificate may hold here (0: no limit)", EnvVars: env("QUOTA_SERVICES")},
			&cli.StringFlag{Name: "quota-bytes", Value: "0", Usage: "disk one certificate's services may take here, committed and in flight, e.g. 20GiB (0: no limit; set it so that the quotas of all certificates fit the disk)", EnvVars: env("QUOTA_BYTES")},
			&cli.IntFlag{Name: "quota-conns", Value: 32, Usage: "connections one certificate may hold open here; each may hold up to two frames of 16 MiB in memory (0: no limit)", EnvVars: env("QUOTA_CONNS")},
			&cli.StringFlag{Name: "peer", Usage: "`HOST:PORT` where a program taken over here streams its checkpoints: the old primary's 'ftrun run --listen', which serves as its standby once back (\"\": local checkpoints only)", EnvVars: env("PEER")},
			durabilityFlag(), epochOnOutputFlag(),
		},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			arb, err := arbiter.Open(c.String("arbiter"), 0)
			if err != nil {
				return usage("%v", err)
			}
			if arb != nil {
				defer arb.Close()
			}
			keys, err := auth.LoadConfig(c.String("keys"))
			if err != nil {
				return usage("%v", err)
			}
			if err := keys.Require(auth.RoleStandby); err != nil {
				return usage("%v", err)
			}
			quotaBytes, err := parseBytes(c.String("quota-bytes"))
			if err != nil {
				return usage("--quota-bytes: %v", err)
			}
			host, _ := os.Hostname()
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			fromMemory, err := ackFromMemory(c)
			if err != nil {
				return err
			}
			live := supervisor.LiveConfig{Interval: c.Duration("interval"), Log: log, Host: host,
				Bridge: c.String("bridge"), Peer: c.String("peer"), PeerTLS: keys.Client(), AckFromMemory: fromMemory,
				EpochOnOutput: c.Bool("epoch-on-output"), Criu: criuFromFlags(c),
				Incremental: supervisor.DirtyMode(c.String("incremental")), FullEvery: c.Int("full-every")}
			var adopt func(string, string) (failover.Live, bool)
			if arb == nil {
				// With an arbiter a copy runs only under the service's key, which
				// the dead standby's lease held: the copy is not adopted, and the
				// take-over that follows kills it.
				adopt = supervisor.AdoptLive(live)
			}
			return failover.Run(ctx, failover.Config{
				Listen: c.String("listen"), StateDir: c.String("state-dir"), TLS: keys.Server(), Host: host,
				Timeout: c.Duration("takeover-timeout"), Log: log, Arbiter: arb, Bridge: c.String("bridge"), MetricsAddr: c.String("metrics"),
				Server: standby.Config{
					MaxUnauthenticated: c.Int("max-unauthenticated"), MaxUnauthenticatedPerHost: c.Int("max-unauthenticated-per-host"),
					HandshakeTimeout: c.Duration("handshake-timeout"), IdleTimeout: c.Duration("idle-timeout"),
					Quota: standby.Quota{Services: c.Int("quota-services"), Bytes: quotaBytes, Conns: c.Int("quota-conns")},
				},
				GoLive: supervisor.LiveCopy(live), Adopt: adopt,
			})
		},
	}
}

// epochOnOutputFlag is --epoch-on-output, of `ftrun run` and of `ftrun standby` (for
// the copy it takes over).
func epochOnOutputFlag() cli.Flag {
	return &cli.BoolFlag{Name: "epoch-on-output", Usage: "behind the output gate, start an epoch as soon as the program's output waits and the previous epoch's output is out, not at the next --interval: replies wait for about two commits instead of up to an interval and a commit, for more checkpoints while the program talks", EnvVars: env("EPOCH_ON_OUTPUT")}
}

// durabilityFlag is --standby-durability, of `ftrun run` and of `ftrun standby` (for
// the stream of a copy it took over).
func durabilityFlag() cli.Flag {
	return &cli.StringFlag{Name: "standby-durability", Value: "disk",
		Usage: "when the standby acks an epoch, releasing the output it explains: disk (once it is on the standby's disk: " +
			"nothing acknowledged is lost even if both hosts lose power at once) or memory (once it is complete and verified " +
			"in the standby's memory, as Remus's backup acks: it holds while one host at a time fails, and saves the standby's fsync)",
		EnvVars: env("STANDBY_DURABILITY")}
}

// ackFromMemory reads --standby-durability.
func ackFromMemory(c *cli.Context) (bool, error) {
	switch d := c.String("standby-durability"); d {
	case "disk":
		return false, nil
	case "memory":
		return true, nil
	default:
		return false, usage("--standby-durability %q: want disk or memory", d)
	}
}

func checkCmd() *cli.Command {
	return &cli.Command{
		Name:  "check",
		Usage: "probe this machine for what ftrun needs; exit 0 when `ftrun run` can work",
		Flags: []cli.Flag{&cli.StringFlag{Name: "criu", Usage: "criu binary (default: from PATH)", EnvVars: env("CRIU")}},
		Action: func(c *cli.Context) error {
			var fs []checkpoint.Finding
			if os.Geteuid() != 0 {
				fs = append(fs, checkpoint.Finding{Name: "root", Required: true, Detail: "not root", Fix: "run ftrun as root"})
			} else {
				fs = append(fs, checkpoint.Finding{Name: "root", OK: true, Required: true, Detail: "yes"})
			}
			fs = append(fs, (checkpoint.Prober{Path: c.String("criu")}).Probe()...)
			fs = append(fs, supervisor.ProbeHost()...)
			tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
			bad := 0
			for _, f := range fs {
				mark := "ok"
				if !f.OK {
					mark = "MISSING"
					if !f.Required {
						mark = "optional"
					} else {
						bad++
					}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\n", mark, f.Name, f.Detail)
				if !f.OK && f.Fix != "" {
					fmt.Fprintf(tw, "\t\tfix: %s\n", f.Fix)
				}
			}
			tw.Flush()
			if bad > 0 {
				return &supervisor.ExitErr{Code: supervisor.ExitSetup, Err: fmt.Errorf("%d required item(s) missing: `ftrun run` cannot work here", bad)}
			}
			fmt.Println("ftrun run can work on this machine")
			return nil
		},
	}
}

// resolveStateDirs returns the state dir named by flags, or every service under the
// default root when none is named.
func resolveStateDirs(c *cli.Context) []string {
	if d := c.String("state-dir"); d != "" {
		return []string{d}
	}
	if n := c.String("name"); n != "" {
		return []string{filepath.Join(defaultStateRoot, n)}
	}
	matches, _ := filepath.Glob(filepath.Join(defaultStateRoot, "*", supervisor.ControlSocket))
	if _, err := os.Stat(filepath.Join(defaultStandbyState, supervisor.ControlSocket)); err == nil {
		matches = append(matches, filepath.Join(defaultStandbyState, supervisor.ControlSocket))
	}
	var dirs []string
	for _, m := range matches {
		dirs = append(dirs, filepath.Dir(m))
	}
	return dirs
}

func statusCmd() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show what the supervisor of a service is doing",
		Flags: []cli.Flag{nameFlag(), stateDirFlag(), &cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			dirs := resolveStateDirs(c)
			if len(dirs) == 0 {
				return fmt.Errorf("no running ftrun found under %s (name one with --state-dir or --name)", defaultStateRoot)
			}
			var out []any
			for _, d := range dirs {
				resp, err := supervisor.Query(d, supervisor.Request{Op: "status"}, 5*time.Second)
				if err != nil {
					return err
				}
				if resp.Status != nil {
					out = append(out, *resp.Status)
				} else {
					out = append(out, resp.Standby)
				}
			}
			if c.Bool("json") {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if len(out) == 1 {
					return enc.Encode(out[0])
				}
				return enc.Encode(out)
			}
			for _, o := range out {
				switch v := o.(type) {
				case supervisor.Status:
					printStatus(v)
				case []failover.StandbyStatus:
					printStandby(v)
				}
			}
			return nil
		},
	}
}

func printStandby(services []failover.StandbyStatus) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tROLE\tEPOCH\tPRIMARY\tLAST HEARD\tRECEIVED")
	for _, s := range services {
		peer, heard := "disconnected", "never (since start)"
		if s.Connected {
			peer = "connected"
		}
		if !s.LastHeard.IsZero() {
			heard = s.Silence.Round(time.Millisecond).String() + " ago"
		}
		role := s.Role
		if s.LiveStateDir != "" {
			role += " (ftrun status --state-dir " + s.LiveStateDir + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", s.Service, role, s.Epoch, peer, heard, humanBytes(int64(s.BytesReceived)))
	}
	tw.Flush()
	for _, s := range services {
		if s.Receiving != nil {
			fmt.Printf("%s: receiving %s\n", s.Service, s.Receiving)
		}
		for _, p := range s.Problems {
			fmt.Printf("%s cannot fail over here: %s\n", s.Service, p)
		}
	}
}

func printStatus(st supervisor.Status) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	age := "-"
	if !st.LastCheckpoint.IsZero() {
		age = st.LastCheckpointAge.Round(time.Millisecond).String() + " ago"
	}
	rows := [][2]string{
		{"service", st.Service}, {"role", st.Role}, {"state", string(st.State)}, {"protection", st.Protection},
		{"pid", fmt.Sprint(st.Pid)}, {"command", strings.Join(st.Command, " ")},
		{"epoch", fmt.Sprint(st.Epoch)}, {"last checkpoint", age},
		{"last frozen time", st.LastFrozen.String()}, {"last checkpoint took", st.LastCheckpointTime.Round(time.Microsecond).String()},
		{"image size", humanBytes(st.ImageBytes)}, {"last checkpoint wrote", wroteText(st.LastCheckpointWritten, st.LastCheckpointChanged)},
		{"checkpoints", fmt.Sprintf("%d ok (%d incremental, %d over an older set), %d failed", st.Checkpoints, st.IncrementalCheckpoints, st.WrittenOver, st.CheckpointFailures)},
		{"restores", fmt.Sprint(st.Restores)}, {"fresh starts", fmt.Sprint(st.FreshStarts)},
		{"adoptions", fmt.Sprint(st.Adoptions)}, {"health failures", fmt.Sprint(st.HealthFailures)},
		{"state dir", st.StateDir},
	}
	if st.Peer != "" {
		rows = append(rows, [2]string{"peer", st.Peer},
			[2]string{"standby epoch", fmt.Sprintf("%d (lag %d)", st.StandbyEpoch, st.Lag())},
			[2]string{"last shipped", fmt.Sprintf("%s (full: %v)", humanBytes(st.LastShippedBytes), st.LastShipFull)})
		if st.Shipping != nil {
			rows = append(rows, [2]string{"shipping", st.Shipping.String()})
		}
	}
	if st.Addr != "" {
		rows = append(rows, [2]string{"address", st.Addr + " (own network namespace: nsenter --net=" + st.NetNS + ")"})
	}
	if st.Commit != "" {
		rows = append(rows, [2]string{"output commit", st.Commit})
	}
	if st.Incremental != "" {
		rows = append(rows, [2]string{"incremental checkpoints", st.Incremental})
	}
	if st.TCPDump != "" {
		rows = append(rows, [2]string{"TCP connections in dumps", st.TCPDump})
	}
	if h := st.Held; h != nil {
		rows = append(rows, [2]string{"held output", fmt.Sprintf("%d packets, %s, oldest %s", h.HeldPackets, humanBytes(h.HeldBytes), h.OldestAge.Round(time.Millisecond))})
	}
	if st.LastError != "" {
		rows = append(rows, [2]string{"last error", st.LastError})
	}
	if st.CommitLatencyP50 > 0 {
		rows = append(rows, [2]string{"epoch commit latency", fmt.Sprintf("p50 %s, p99 %s", ms(st.CommitLatencyP50), ms(st.CommitLatencyP99))})
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s:\t%s\n", r[0], r[1])
	}
	tw.Flush()
	printPhases(st)
	fmt.Println()
}

// printPhases shows where the recent epochs' time went, phase by phase in order.
func printPhases(st supervisor.Status) {
	if len(st.Phases) == 0 {
		return
	}
	fmt.Printf("\nepoch phases over the last %d epochs:\n", st.PhaseEpochs)
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  PHASE\tP50\tP99\tMEAN\t")
	var total time.Duration
	for _, n := range phase.All {
		if q, ok := st.Phases[n]; ok {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t\n", n, ms(q.P50), ms(q.P99), ms(q.Mean))
			total += q.Mean
		}
	}
	fmt.Fprintf(tw, "  (sum of means)\t\t\t%s\t\n", ms(total))
	tw.Flush()
}

// ms shows d in milliseconds with a precision that suits epoch phases.
func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

// wroteText is what a checkpoint wrote, and for an incremental one the memory it
// found changed.
func wroteText(written, changed int64) string {
	if changed == 0 {
		return humanBytes(written)
	}
	return fmt.Sprintf("%s (%s of memory changed)", humanBytes(written), humanBytes(changed))
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func oneDir(c *cli.Context) (string, error) {
	dirs := resolveStateDirs(c)
	if len(dirs) != 1 {
		return "", usage("name the service with --state-dir or --name (found %d running)", len(dirs))
	}
	return dirs[0], nil
}

func checkpointCmd() *cli.Command {
	return &cli.Command{
		Name:  "checkpoint",
		Usage: "take a checkpoint now",
		Flags: []cli.Flag{nameFlag(), stateDirFlag()},
		Action: func(c *cli.Context) error {
			dir, err := oneDir(c)
			if err != nil {
				return err
			}
			resp, err := supervisor.Query(dir, supervisor.Request{Op: "checkpoint"}, 2*time.Minute)
			if err != nil {
				return err
			}
			fmt.Printf("checkpoint committed: epoch %d\n", resp.Epoch)
			return nil
		},
	}
}

func restoreCmd() *cli.Command {
	return &cli.Command{
		Name:  "restore",
		Usage: "replace the running program with a checkpoint (the newest, or --epoch); with no supervisor running, restore it detached",
		Flags: []cli.Flag{nameFlag(), stateDirFlag(),
			&cli.Uint64Flag{Name: "epoch", Usage: "epoch to restore (default: newest)"},
			&cli.StringFlag{Name: "criu", Usage: "criu binary (default: from PATH)", EnvVars: env("CRIU")}},
		Action: func(c *cli.Context) error {
			dir := c.String("state-dir")
			if dir == "" && c.String("name") != "" {
				dir = filepath.Join(defaultStateRoot, c.String("name"))
			}
			if dir == "" {
				return usage("name the service with --state-dir or --name")
			}
			if resp, err := supervisor.Query(dir, supervisor.Request{Op: "restore", Epoch: c.Uint64("epoch")}, 2*time.Minute); err == nil {
				fmt.Printf("restored epoch %d (by the running supervisor)\n", resp.Epoch)
				return nil
			} else if !strings.HasPrefix(err.Error(), "no ftrun supervises") {
				return err
			}
			log, err := newLogger(c)
			if err != nil {
				return err
			}
			pid, epoch, err := supervisor.RestoreDetached(dir, c.Uint64("epoch"), &checkpoint.Criu{Path: c.String("criu")}, log)
			if err != nil {
				return err
			}
			fmt.Printf("restored epoch %d as pid %d (detached; output goes to /dev/null). `ftrun run` with this state dir adopts it.\n", epoch, pid)
			return nil
		},
	}
}

func keygenCmd() *cli.Command {
	return &cli.Command{
		Name:  "keygen",
		Usage: "make the CA and per-host certificates of the primary<->standby channel (TLS 1.3, both ends verified; roles and services in each certificate)",
		Description: "The CA key stays on one host. On it, once:\n" +
			"    ftrun keygen ca /etc/ftrun/ca\n" +
			"On every host (the key never leaves it):\n" +
			"    ftrun keygen request --name HOST /etc/ftrun/keys\n" +
			"Carry /etc/ftrun/keys/node.csr to the CA host and issue what the host may do:\n" +
			"    ftrun keygen issue --ca /etc/ftrun/ca --role standby --out standby.crt node.csr\n" +
			"    ftrun keygen issue --ca /etc/ftrun/ca --role primary --service redis --out host-a.crt node.csr\n" +
			"Copy the certificate back as /etc/ftrun/keys/node.crt, with /etc/ftrun/ca/ca.crt as /etc/ftrun/keys/ca.crt.",
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.ShowSubcommandHelp(c)
			}
			return usage("keygen: no command %q: want ca, request or issue (see `ftrun keygen --help`)", c.Args().First())
		},
		Subcommands: []*cli.Command{
			{
				Name: "ca", Usage: "make the deployment's CA (ca.crt, ca.key) in DIR", ArgsUsage: "DIR",
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usage("usage: ftrun keygen ca DIR")
					}
					if err := auth.InitCA(c.Args().First()); err != nil {
						return err
					}
					fmt.Printf("CA written to %s; keep %s there, copy %s to every host\n", c.Args().First(), auth.CAKeyFile, auth.CACertFile)
					return nil
				},
			},
			{
				Name: "request", Usage: "make this host's key and a certificate request (node.key, node.csr) in DIR", ArgsUsage: "DIR",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "this host's name in its certificate (default " + auth.DefaultNodeName + ")"},
					&cli.BoolFlag{Name: "force", Usage: "replace an existing key (to rotate it)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usage("usage: ftrun keygen request [--name HOST] [--force] DIR")
					}
					csr, err := auth.Request(c.Args().First(), c.String("name"), c.Bool("force"))
					if err != nil {
						return err
					}
					fmt.Printf("request written to %s; issue it on the CA host with `ftrun keygen issue`\n", csr)
					return nil
				},
			},
			{
				Name: "issue", Usage: "sign a host's request with the CA, saying what it may do", ArgsUsage: "CSR",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "ca", Required: true, Usage: "directory made by 'ftrun keygen ca'"},
					&cli.StringSliceFlag{Name: "role", Required: true, Usage: "primary or standby (repeat for both)"},
					&cli.StringSliceFlag{Name: "service", Usage: "a service a primary may ship (repeat; '*' for any, for one-tenant deployments)"},
					&cli.StringFlag{Name: "out", Value: auth.NodeCertFile, Usage: "where to write the certificate"},
					&cli.BoolFlag{Name: "force", Usage: "overwrite --out"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return usage("usage: ftrun keygen issue --ca DIR --role ROLE [--service NAME]... [--out FILE] CSR")
					}
					id, err := auth.Issue(c.String("ca"), c.Args().First(), c.String("out"),
						auth.IssueOptions{Roles: c.StringSlice("role"), Services: c.StringSlice("service"), Force: c.Bool("force")})
					if err != nil {
						return usage("%v", err)
					}
					fmt.Printf("certificate %s written to %s\n", id, c.String("out"))
					return nil
				},
			},
		},
	}
}

// parseBytes reads a size such as 512MiB, 20GiB or 1000000.
func parseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
			if err != nil || n < 0 || n > math.MaxInt64/u.mult {
				return 0, fmt.Errorf("%q is not a size (e.g. 512MiB, 20GiB)", s)
			}
			return n * u.mult, nil
		}
	}
	return 0, fmt.Errorf("%q is not a size", s)
}

func demoCmd() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "protect a Ruby counter and inject failures: kill -9, a hang, ftrun's own death, a deleted file, a corrupt checkpoint; then on network-namespace hosts: the host dies, comes back as standby, a partition with an etcd arbiter",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "work-dir", Usage: "where the demo keeps its state (default: a new temporary directory)"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "checkpoint interval"},
			&cli.BoolFlag{Name: "hosts", Value: true, Usage: "also the host-level failures, on network-namespace hosts on this machine (--hosts=false: this host only)", EnvVars: env("DEMO_HOSTS")},
		},
		Action: func(c *cli.Context) error {
			self, err := os.Executable()
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			return demo.Run(ctx, demo.Options{Ftrun: self, WorkDir: c.String("work-dir"), Interval: c.Duration("interval"), Out: os.Stdout, Hosts: c.Bool("hosts")})
		},
	}
}

func incrementalFlag() cli.Flag {
	return &cli.StringFlag{Name: "incremental", Value: string(supervisor.DefaultDirtyMode), Usage: "incremental checkpoints, which freeze the program only for the pages it wrote since the last one: auto (soft-dirty bits, else userfaultfd write-protection, else off; see 'ftrun check'), soft-dirty, uffd-wp or off", EnvVars: env("INCREMENTAL")}
}

func fullEveryFlag() cli.Flag {
	return &cli.IntFlag{Name: "full-every", Value: supervisor.DefaultFullEvery, Usage: "with --incremental: a full checkpoint after this many incremental ones", EnvVars: env("FULL_EVERY")}
}

func dumpTimeoutFlag() cli.Flag {
	return &cli.DurationFlag{Name: "dump-timeout", Value: checkpoint.DefaultDumpTimeout, Usage: "deadline of one CRIU dump: an overrun kills CRIU, thaws the program and fails the checkpoint", EnvVars: env("DUMP_TIMEOUT")}
}

func restoreTimeoutFlag() cli.Flag {
	return &cli.DurationFlag{Name: "restore-timeout", Value: checkpoint.DefaultRestoreTimeout, Usage: "deadline of one CRIU restore: an overrun kills CRIU and the half-restored program, and recovery goes on to the next step", EnvVars: env("RESTORE_TIMEOUT")}
}

// criuFromFlags is the CRIU of --criu with the deadlines of --dump-timeout and
// --restore-timeout.
func criuFromFlags(c *cli.Context) *checkpoint.Criu {
	return &checkpoint.Criu{Path: c.String("criu"), DumpTimeout: c.Duration("dump-timeout"), RestoreTimeout: c.Duration("restore-timeout")}
}

// preservedFromFlags is what --preserve-fds (or systemd's socket activation) hands the
// program, and whether it came from socket activation.
func preservedFromFlags(c *cli.Context) ([]*os.File, bool, error) {
	n, listen := c.Int("preserve-fds"), false
	if n < 0 {
		n = supervisor.ListenFds()
		listen = n > 0
	}
	files, err := supervisor.PreservedFds(n)
	if err != nil {
		return nil, false, usage("%v", err)
	}
	return files, listen, nil
}

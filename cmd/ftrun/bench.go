package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ftrun/ftrun/bench"
	"github.com/ftrun/ftrun/supervisor"
)

func benchCmd() *cli.Command {
	var names []string
	for _, s := range bench.Scenarios() {
		names = append(names, s.Name)
	}
	return &cli.Command{
		Name:  "bench",
		Usage: "run ftrun's benchmarks on this machine against their baselines and write a report folder",
		Description: "Runs every scenario (" + strings.Join(names, ", ") + ") on this machine\n" +
			"and writes DIR/README.md (a summary table of every figure next to its baseline from the\n" +
			"same run, then one section per scenario), one SVG per plot and DIR/results.json.\n" +
			"Needs root and what scripts/setup installs (criu, redis-server, ruby, gcc, iptables).\n" +
			"Exits non-zero if a scenario fails; the report still says what ran.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "quick", Usage: "the short variant (under 3 minutes), for CI"},
			&cli.StringFlag{Name: "out", Usage: "report folder (default ./bench-report-TIMESTAMP)"},
			&cli.BoolFlag{Name: "keep-scratch", Usage: "keep the scratch directory (state dirs, logs, CRIU logs) for a look afterwards"},
			&cli.StringSliceFlag{Name: "only", Usage: "run only these scenarios (comma-separated: " + strings.Join(names, ",") + ")"},
			&cli.IntSliceFlag{Name: "incremental-mb", Usage: "the incremental scenario's program sizes in MB (default 512; 64 with --quick)", EnvVars: []string{"FTRUN_BENCH_INCREMENTAL_MB"}},
		},
		Action: func(c *cli.Context) error {
			if err := supervisor.RequireRoot(); err != nil {
				return &supervisor.ExitErr{Code: supervisor.ExitSetup, Err: err}
			}
			if c.NArg() > 0 {
				return usage("ftrun bench takes no arguments (got %q)", c.Args().Slice())
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the ftrun binary: %w", err)
			}
			out := c.String("out")
			if out == "" {
				out = "bench-report-" + time.Now().Format("20060102-150405")
			}
			var only []string
			for _, o := range c.StringSlice("only") {
				for _, n := range strings.Split(o, ",") {
					if n = strings.TrimSpace(n); n != "" {
						only = append(only, n)
					}
				}
			}
			if _, err := bench.Select(bench.Scenarios(), only); err != nil {
				return usage("--only: %v", err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
			defer stop()
			_, err = bench.Run(ctx, bench.Options{Ftrun: self, Out: out, Quick: c.Bool("quick"), Only: only,
				Progress: os.Stderr, Command: strings.Join(os.Args, " "), KeepScratch: c.Bool("keep-scratch"), IncrementalMB: c.IntSlice("incremental-mb")})
			return err
		},
	}
}

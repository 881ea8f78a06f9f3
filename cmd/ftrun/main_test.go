package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"

	"github.com/ftrun/ftrun/supervisor"
)

func TestUnescape(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: `PING\r\n`, want: "PING\r\n"},
		{in: `PINGrn`, want: "PINGrn"}, // what systemd leaves of an unquoted PING\r\n: taken literally
		{in: `a\tb\\c`, want: "a\tb\\c"},
		{in: `\x00\xff\101`, want: "\x00\xffA"},
		{in: `caf\u00e9 ü`, want: "café ü"},
		{in: `say \"hi\" 'x' \'y\'`, want: `say "hi" 'x' 'y'`},
		{in: "", want: ""},
		{in: `PING\q`, err: `bad escape at "\\q"`},
		{in: `tail\`, err: "bad escape"},
	}
	for _, tt := range tests {
		got, err := unescape(tt.in)
		switch {
		case tt.err != "":
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("unescape(%q) error %v, want one containing %q", tt.in, err, tt.err)
			}
		case err != nil || got != tt.want:
			t.Errorf("unescape(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// `ftrun keygen DIR` (the form before keygen had commands) is a usage error that
// names the commands, not cli's "No help topic" with exit 3.
func TestKeygenWithoutCommandIsUsage(t *testing.T) {
	app := &cli.App{Name: "ftrun", Commands: []*cli.Command{keygenCmd()}, ExitErrHandler: func(*cli.Context, error) {}}
	err := app.Run([]string{"ftrun", "keygen", t.TempDir()})
	var ee *supervisor.ExitErr
	if !errors.As(err, &ee) || ee.Code != supervisor.ExitUsage || !strings.Contains(err.Error(), "want ca, request or issue") {
		t.Fatalf("ftrun keygen DIR: %v", err)
	}
}

// A backquoted word in a flag's usage is its placeholder in --help: "--standby
// `ftrun standby`" read as if that were the value to give. Only upper-case
// placeholders (HOST:PORT, DIR) are meant.
func TestFlagPlaceholders(t *testing.T) {
	app := newApp()
	var check func(path string, flags []cli.Flag)
	check = func(path string, flags []cli.Flag) {
		for _, f := range flags {
			df, ok := f.(cli.DocGenerationFlag)
			if !ok {
				continue
			}
			_, rest, _ := strings.Cut(df.GetUsage(), "`")
			name, _, quoted := strings.Cut(rest, "`")
			if quoted && strings.ToUpper(name) != name {
				t.Errorf("%s --%s: placeholder %q", path, f.Names()[0], name)
			}
		}
	}
	check("ftrun", app.Flags)
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			check(path+" "+c.Name, c.Flags)
			walk(path+" "+c.Name, c.Subcommands)
		}
	}
	walk("ftrun", app.Commands)
}

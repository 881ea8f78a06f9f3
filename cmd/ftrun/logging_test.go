package main

import (
	"strings"
	"testing"
)

func TestLogFormat(t *testing.T) {
	tests := []struct {
		flag            string
		stream, journal bool
		want            string
	}{
		{"auto", false, false, "text"},
		{"auto", true, true, "journal"},
		{"auto", true, false, "text"}, // stderr was the journal but journald is gone
		{"auto", false, true, "text"}, // journald runs, but stderr goes elsewhere (a terminal)
		{"json", true, true, "json"},  // an explicit choice wins
		{"journal", false, false, "journal"},
	}
	for _, tt := range tests {
		if got := logFormat(tt.flag, tt.stream, tt.journal); got != tt.want {
			t.Errorf("logFormat(%q, stream %v, journal %v) = %q, want %q", tt.flag, tt.stream, tt.journal, got, tt.want)
		}
	}
}

func TestJournalKey(t *testing.T) {
	for in, want := range map[string]string{
		"service": "SERVICE", "epoch": "EPOCH", "step": "STEP", "criu-log": "CRIU_LOG",
		"held.bytes": "HELD_BYTES", "_COMM": "COMM", "9lives": "F_9LIVES", "": "F_", "ünï": "N_",
	} {
		if got := journalKey(in); got != want {
			t.Errorf("journalKey(%q) = %q, want %q", in, got, want)
		}
	}
}

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

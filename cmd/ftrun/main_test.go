package main

import (
	"strings"
	"testing"
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

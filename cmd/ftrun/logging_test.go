package main

import "testing"

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

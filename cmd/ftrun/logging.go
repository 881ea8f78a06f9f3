package main

import (
	"errors"
	"log/slog"
	"os"
	"strings"

	"github.com/coreos/go-systemd/v22/journal"
	slogjournal "github.com/systemd/slog-journal"
)

// logFormat picks the handler for --log-format. "auto" means the journal when
// systemd connected stderr to it (JOURNAL_STREAM names stderr's device and inode)
// and its socket is there, text otherwise: a line on a journal stream loses its
// fields, a native entry keeps them.
func logFormat(flag string, stderrIsJournal, journalUp bool) string {
	if flag != "auto" {
		return flag
	}
	if stderrIsJournal && journalUp {
		return "journal"
	}
	return "text"
}

// newHandler builds the handler for a resolved format ("" when it is not one).
func newHandler(format string, opts *slog.HandlerOptions) (slog.Handler, error) {
	switch format {
	case "text":
		return slog.NewTextHandler(os.Stderr, opts), nil
	case "json":
		return slog.NewJSONHandler(os.Stderr, opts), nil
	case "journal":
		if !journalUp() {
			// The handler would send into nothing without an error.
			return nil, errors.New("no journald socket at /run/systemd/journal/socket (use --log-format text)")
		}
		h, err := slogjournal.NewHandler(&slogjournal.Options{Level: opts.Level, ReplaceAttr: journalAttr,
			ReplaceGroup: journalKey})
		if err != nil {
			return nil, err
		}
		return h.WithAttrs([]slog.Attr{slog.String("SYSLOG_IDENTIFIER", "ftrun")}), nil
	}
	return nil, nil
}

// journalUp reports whether journald's native socket exists.
func journalUp() bool { return journal.Enabled() }

// stderrIsJournal reports whether systemd connected stderr to the journal.
func stderrIsJournal() bool {
	ok, err := journal.StderrIsJournalStream()
	return err == nil && ok
}

// journalAttr renames an attribute to a journal field name: journald drops
// fields that do not match ^[A-Z_][A-Z0-9_]*$, so "service" becomes SERVICE and
// "criu-log" CRIU_LOG.
func journalAttr(_ []string, a slog.Attr) slog.Attr {
	a.Key = journalKey(a.Key)
	return a
}

// journalKey maps a key to [A-Z0-9_]+, not starting with a digit, and never to
// one of the trusted fields journald reserves (a leading underscore).
func journalKey(k string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(k) {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := strings.TrimLeft(b.String(), "_")
	if out == "" || (out[0] >= '0' && out[0] <= '9') {
		out = "F_" + out
	}
	return out
}

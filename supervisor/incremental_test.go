package supervisor

import (
	"errors"
	"testing"
)

func TestParentFor(t *testing.T) {
	for _, c := range []struct {
		name                     string
		parent                   string
		parentInc, inc, inRow, n int
		want                     string
	}{
		{"no parent yet", "", 1, 1, 0, 100, ""},
		{"same incarnation", "/s/3", 1, 1, 5, 100, "/s/3"},
		{"restored since: a new incarnation dumps whole", "/s/3", 1, 2, 5, 100, ""},
		{"a full one is due", "/s/3", 1, 1, 100, 100, ""},
	} {
		if got := parentFor(c.parent, c.parentInc, c.inc, c.inRow, c.n); got != c.want {
			t.Errorf("%s: parentFor = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestChooseDirtyMode(t *testing.T) {
	ok := func() error { return nil }
	no := func() error { return errors.New("absent") }
	for _, c := range []struct {
		m         DirtyMode
		uffd, sd  func() error
		want      DirtyMode
		wantError bool
	}{
		{DirtyAuto, ok, ok, DirtyUffdWP, false},
		{DirtyAuto, no, ok, DirtySoftDirty, false},
		{DirtyAuto, no, no, DirtyOff, false},
		{DirtyUffdWP, no, ok, "", true},
		{DirtySoftDirty, ok, no, "", true},
		{DirtyOff, no, no, DirtyOff, false},
		{"bogus", ok, ok, "", true},
	} {
		got, err := chooseDirtyMode(c.m, c.uffd, c.sd)
		if got != c.want || (err != nil) != c.wantError {
			t.Errorf("chooseDirtyMode(%q) = %q, %v; want %q, error %v", c.m, got, err, c.want, c.wantError)
		}
	}
}

func TestFailedDumpClearsTheParent(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	inc.committed("/s/1", 1, false)
	if _, rel := inc.prepare(nil, 1, "/s/2"); rel != "../1" {
		t.Fatalf("second dump's parent = %q, want ../1", rel)
	}
	// The dump into /s/2 failed: nothing was committed. The next may not lean on /s/1,
	// whose tracking the failed dump reset.
	if _, rel := inc.prepare(nil, 1, "/s/3"); rel != "" {
		t.Fatalf("after a failed dump the parent = %q, want a full dump", rel)
	}
}

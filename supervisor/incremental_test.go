package supervisor

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/ftrun/ftrun/checkpoint"
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
		{DirtyAuto, ok, ok, DirtySoftDirty, false}, // CRIU's own, where there is a choice
		{DirtyAuto, ok, no, DirtyUffdWP, false},
		{DirtyAuto, no, ok, DirtySoftDirty, false},
		{DirtyAuto, no, no, DirtyOff, false},
		{DirtyUffdWP, no, ok, "", true},
		{DirtyUffdWP, ok, ok, "", true}, // CRIU would use the soft-dirty bits anyway
		{DirtyUffdWP, ok, no, DirtyUffdWP, false},
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

// parentOf is the ParentDir incremental sets for a dump of incarnation into dir.
func parentOf(inc *incremental, incarnation int, dir string) string {
	o := checkpoint.Options{ImagesDir: dir}
	inc.prepare(&o, nil, incarnation, false)
	if !o.TrackMem {
		return "(untracked)"
	}
	return o.ParentDir
}

func TestFailedDumpClearsTheParent(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	if got := parentOf(inc, 1, "/s/1"); got != "" {
		t.Fatalf("first dump's parent = %q, want a full dump", got)
	}
	inc.committed("/s/1", 1, false)
	if got := parentOf(inc, 1, "/s/2"); got != "../1" {
		t.Fatalf("second dump's parent = %q, want ../1", got)
	}
	// The dump into /s/2 failed: nothing was committed. The next may not lean on /s/1,
	// whose tracking the failed dump reset.
	if got := parentOf(inc, 1, "/s/3"); got != "" {
		t.Fatalf("after a failed dump the parent = %q, want a full dump", got)
	}
	inc.committed("/s/3", 1, false)
	// A restore since: the restored program's pages were never tracked.
	if got := parentOf(inc, 2, "/s/4"); got != "" {
		t.Fatalf("after a restore the parent = %q, want a full dump", got)
	}
}

func TestAFullDumpEveryN(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 2, nil)
	parentOf(inc, 1, "/s/1")
	inc.committed("/s/1", 1, false)
	var got []string
	for k := 2; k <= 5; k++ {
		dir := fmt.Sprintf("/s/%d", k)
		p := parentOf(inc, 1, dir)
		got = append(got, p)
		inc.committed(dir, 1, p != "")
	}
	want := []string{"../1", "../2", "", "../4"}
	if !slices.Equal(got, want) {
		t.Fatalf("parents = %q, want %q", got, want)
	}
}

func TestOffTracksNothing(t *testing.T) {
	for _, m := range []DirtyMode{"", DirtyOff} {
		inc := newIncremental(m, 100, nil)
		inc.committed("/s/1", 1, false)
		if got := parentOf(inc, 1, "/s/2"); got != "(untracked)" {
			t.Errorf("mode %q: parent = %q, want no tracking", m, got)
		}
	}
}

// The final dump ends the program: it is full, whatever the last one was.
func TestFinalDumpIsFull(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	parentOf(inc, 1, "/s/1")
	inc.committed("/s/1", 1, false)
	o := checkpoint.Options{ImagesDir: "/s/2"}
	inc.prepare(&o, nil, 1, true)
	if o.TrackMem || o.ParentDir != "" {
		t.Fatalf("final dump options %+v, want a plain full dump", o)
	}
}

// A set that could not be made durable is nobody's parent.
func TestUndurableSetIsNoParent(t *testing.T) {
	inc := newIncremental(DirtySoftDirty, 100, nil)
	parentOf(inc, 1, "/s/1")
	inc.committed("/s/1", 1, false)
	inc.dropParent()
	if got := parentOf(inc, 1, "/s/2"); got != "" {
		t.Fatalf("parent after a failed sync = %q, want a full dump", got)
	}
}

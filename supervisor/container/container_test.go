package container

import (
	"slices"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	for line, want := range map[string]mountEntry{
		"22 27 0:21 / /proc rw,relatime - proc proc rw":                                     {point: "/proc", fstype: "proc"},
		"43 42 0:4 net:[4026532178] /run/netns/a rw shared:2 - nsfs nsfs rw":                {point: "/run/netns/a", fstype: "nsfs"},
		`50 27 254:0 /x /mnt/with\040space rw,relatime master:1 - ext4 /dev/vda rw,discard`: {point: "/mnt/with space", fstype: "ext4"},
		`51 27 254:0 /x /mnt/back\134slash rw,relatime - ext4 /dev/vda rw`:                  {point: `/mnt/back\slash`, fstype: "ext4"},
		"52 27 254:0 / /short - ": {},
	} {
		got, ok := parseMountinfo(line)
		if ok != (want != mountEntry{}) || got != want {
			t.Errorf("parseMountinfo(%q) = %+v, %v; want %+v", line, got, ok, want)
		}
	}
}

func TestNsfsMountsDeepestFirst(t *testing.T) {
	mi := []mountEntry{{"/", "ext4"}, {"/run/netns", "ext4"}, {"/run/netns/a", "nsfs"}, {"/proc", "proc"}, {"/run/netns/b", "nsfs"}}
	if got := nsfsMounts(mi); !slices.Equal(got, []string{"/run/netns/b", "/run/netns/a"}) {
		t.Errorf("nsfsMounts = %v", got)
	}
}

func TestLookupUser(t *testing.T) {
	c, err := LookupUser("root")
	if err != nil || c.UID != 0 || c.GID != 0 {
		t.Fatalf("root: %+v, %v", c, err)
	}
	c, err = LookupUser("12345:54321")
	if err != nil || c.UID != 12345 || c.GID != 54321 {
		t.Fatalf("numeric: %+v, %v", c, err)
	}
	if _, err := LookupUser("no-such-user-here"); err == nil || !strings.Contains(err.Error(), "--user") {
		t.Fatalf("unknown user: %v", err)
	}
	if _, err := LookupUser("root:no-such-group-here"); err == nil {
		t.Fatalf("unknown group: no error")
	}
}

func TestCommandCarriesSpecOutOfTheProgramsEnv(t *testing.T) {
	path, argv, env, err := Command(Spec{Path: "/bin/true", Args: []string{"true", "x"}, Dir: "/"}, []string{"A=1", initEnv + "=stale"})
	if err != nil {
		t.Fatal(err)
	}
	if path == "" || !slices.Equal(argv[1:], []string{"true", "x"}) {
		t.Errorf("Command = %q %q", path, argv)
	}
	n := 0
	for _, kv := range env {
		if strings.HasPrefix(kv, initEnv+"=") {
			n++
			if strings.Contains(kv, "stale") {
				t.Errorf("a stale spec survived: %q", kv)
			}
		}
	}
	if n != 1 || !slices.Contains(env, "A=1") {
		t.Errorf("env = %q", env)
	}
	if got := withoutInit(env); slices.ContainsFunc(got, func(kv string) bool { return strings.HasPrefix(kv, initEnv) }) {
		t.Errorf("withoutInit left the spec: %q", got)
	}
}

package container

import (
	"slices"
	"strings"
	"testing"
)

func TestParseMountinfo(t *testing.T) {
	for line, want := range map[string]mountEntry{
		"22 27 0:21 / /proc rw,relatime - proc proc rw":                                     {root: "/", point: "/proc", fstype: "proc"},
		"43 42 0:4 net:[4026532178] /run/netns/a rw shared:2 - nsfs nsfs rw":                {root: "net:[4026532178]", point: "/run/netns/a", fstype: "nsfs"},
		`50 27 254:0 /x /mnt/with\040space rw,relatime master:1 - ext4 /dev/vda rw,discard`: {root: "/x", point: "/mnt/with space", fstype: "ext4"},
		`51 27 254:0 /x /mnt/back\134slash rw,relatime - ext4 /dev/vda rw`:                  {root: "/x", point: `/mnt/back\slash`, fstype: "ext4"},
		"52 27 254:0 / /short - ": {},
	} {
		got, ok := parseMountinfo(line)
		if ok != (want != mountEntry{}) || got != want {
			t.Errorf("parseMountinfo(%q) = %+v, %v; want %+v", line, got, ok, want)
		}
	}
}

func TestTransientMountsDeepestFirst(t *testing.T) {
	mi := []mountEntry{
		{"/", "/", "ext4"}, {"/run/netns", "/run/netns", "ext4"}, {"net:[1]", "/run/netns/a", "nsfs"},
		{"/", "/proc", "proc"}, {"/", "/home", "xfs"}, {"/srv/x/root", "/tmp/ct/root", "ext4"},
		{"/pts", "/dev/console", "devpts"}, {"/", "/tmp", "tmpfs"}, {"net:[2]", "/run/netns/b", "nsfs"},
		{"/", "/tmp/TestX/116", "tmpfs"}, {"/", "/var/tmp/scratch", "ext4"}, {"/", "/run", "tmpfs"},
		{"/", "/run/criu", "tmpfs"}, // CRIU's kernel probe cache: a restore must not need it
	}
	want := []string{"/run/criu", "/var/tmp/scratch", "/tmp/TestX/116", "/run/netns/b", "/tmp/ct/root", "/run/netns/a", "/run/netns"}
	if got := transientMounts(mi); !slices.Equal(got, want) {
		t.Errorf("transientMounts = %v, want %v", got, want)
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

func TestCommandSetsTheUsersEnvironment(t *testing.T) {
	_, _, env, err := Command(Spec{Path: "/bin/true", Args: []string{"true"}, Dir: "/", User: &Cred{Name: "postgres", Home: "/var/lib/postgresql"}},
		[]string{"HOME=/root", "USER=root", "PATH=/bin"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"HOME=/var/lib/postgresql", "USER=postgres", "LOGNAME=postgres", "PATH=/bin"} {
		if !slices.Contains(env, want) {
			t.Errorf("env %q lacks %q", env, want)
		}
	}
	if slices.Contains(env, "HOME=/root") || slices.Contains(env, "USER=root") {
		t.Errorf("root's identity left in %q", env)
	}
}

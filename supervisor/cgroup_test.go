package supervisor

import (
	"strings"
	"testing"
)

func TestChoosePlacement(t *testing.T) {
	const unit = "/system.slice/ftrun@redis.service"
	tests := []struct {
		name string
		sd   SystemdView
		want Placement
		note string // a substring the note must hold ("" = no note)
	}{
		{name: "no systemd", sd: SystemdView{Own: "/user.slice/session-1.scope"},
			want: Placement{Group: "/ftrun/redis"}},
		{name: "delegated unit: ftrun moves to a leaf, the program to its sibling",
			sd:   SystemdView{InvocationID: "abc", Own: unit, Delegated: true},
			want: Placement{Group: unit + "/program/redis", Self: unit + "/supervisor", Unit: unit}},
		{name: "already in UNIT/supervisor (DelegateSubgroup=supervisor)",
			sd:   SystemdView{InvocationID: "abc", Own: unit + "/supervisor", Delegated: true},
			want: Placement{Group: unit + "/program/redis", Unit: unit}},
		{name: "unit without Delegate=yes stays outside, and says how to fix it",
			sd:   SystemdView{InvocationID: "abc", Own: unit},
			want: Placement{Group: "/ftrun/redis"}, note: "Delegate=yes"},
		{name: "INVOCATION_ID but not in a service (a scope)",
			sd:   SystemdView{InvocationID: "abc", Own: "/user.slice/run-r1.scope", Delegated: true},
			want: Placement{Group: "/ftrun/redis"}, note: "no service's"},
		{name: "nested slices and a container's cgroup namespace root",
			sd:   SystemdView{InvocationID: "abc", Own: "/a.slice/a-b.slice/x.service", Delegated: true},
			want: Placement{Group: "/a.slice/a-b.slice/x.service/program/redis", Self: "/a.slice/a-b.slice/x.service/supervisor", Unit: "/a.slice/a-b.slice/x.service"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ChoosePlacement("redis", tt.sd)
			note := got.Note
			got.Note = ""
			if got != tt.want {
				t.Errorf("ChoosePlacement = %+v, want %+v", got, tt.want)
			}
			if (tt.note == "") != (note == "") || !strings.Contains(note, tt.note) {
				t.Errorf("note %q, want one containing %q", note, tt.note)
			}
		})
	}
}

func TestOwnCgroup2(t *testing.T) {
	hybrid := "9:name=systemd:/system.slice/x.service\n4:memory:/system.slice/x.service\n0::/system.slice/x.service\n"
	if got := ownCgroup2(hybrid); got != "/system.slice/x.service" {
		t.Errorf("hybrid: %q", got)
	}
	if got := ownCgroup2("0::/\n"); got != "/" {
		t.Errorf("v2 root: %q", got)
	}
	if got := ownCgroup2("4:memory:/a\n"); got != "" {
		t.Errorf("v1 only: %q, want empty", got)
	}
}

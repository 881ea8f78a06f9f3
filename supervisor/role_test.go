package supervisor

import "testing"

func TestDecideRole(t *testing.T) {
	cases := []struct {
		in   RoleInput
		want string
	}{
		{RoleInput{Peer: PeerLive}, RoleStandby},
		{RoleInput{Peer: PeerLive, Last: RolePrimary}, RoleStandby},
		{RoleInput{Peer: PeerLive, ForcePrimary: true}, RoleStandby}, // never two copies
		{RoleInput{Peer: PeerStandby, Last: RoleStandby}, RolePrimary},
		{RoleInput{Peer: PeerStandby}, RolePrimary},
		{RoleInput{Peer: PeerUnreachable}, RolePrimary},
		{RoleInput{Peer: PeerUnreachable, Last: RolePrimary}, RolePrimary},
		{RoleInput{Peer: PeerUnreachable, Last: RoleStandby}, RoleStandby},
		{RoleInput{Peer: PeerUnreachable, Last: RoleStandby, ForcePrimary: true}, RolePrimary},
	}
	for _, c := range cases {
		got := DecideRole(c.in)
		if got.Role != c.want || got.Reason == "" {
			t.Errorf("DecideRole(%+v) = %+v, want role %s with a reason", c.in, got, c.want)
		}
	}
}

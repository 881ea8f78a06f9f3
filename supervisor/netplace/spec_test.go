package netplace

import (
	"bytes"
	"encoding/hex"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestMACFor(t *testing.T) {
	seen := map[string]string{}
	for _, svc := range []string{"web", "web2", "db", "", "a-very-long-service-name-indeed"} {
		mac := MACFor(svc)
		if len(mac) != 6 {
			t.Fatalf("MACFor(%q) = %s: want 6 bytes", svc, mac)
		}
		if mac[0] != 0x02 {
			t.Errorf("MACFor(%q) = %s: want first byte 02 (locally administered, unicast)", svc, mac)
		}
		if !bytes.Equal(mac, MACFor(svc)) {
			t.Errorf("MACFor(%q) is not stable", svc)
		}
		if err := validateMAC(mac); err != nil {
			t.Errorf("MACFor(%q) = %s fails validation: %v", svc, mac, err)
		}
		if other, dup := seen[mac.String()]; dup {
			t.Errorf("MACFor(%q) = MACFor(%q) = %s", svc, other, mac)
		}
		seen[mac.String()] = svc
	}
}

func TestHostLink(t *testing.T) {
	cases := []struct {
		service, prefix string
	}{
		{"web", "ft-web-"},
		{"Web", "ft-web-"},
		{"db", "ft-db-"},
		{"database", "ft-dat-"},
		{"a.b_c", "ft-abc-"},
		{"ÄÖÜ", "ft-"},
		{"", "ft-"},
		{strings.Repeat("x", 300), "ft-xxx-"},
	}
	seen := map[string]string{}
	for _, c := range cases {
		name := Spec{Service: c.service}.HostLink()
		if !strings.HasPrefix(name, c.prefix) {
			t.Errorf("HostLink(%q) = %q: want prefix %q", c.service, name, c.prefix)
		}
		suffix := strings.TrimPrefix(name, c.prefix)
		if _, err := hex.DecodeString(suffix); err != nil || len(suffix) != 8 {
			t.Errorf("HostLink(%q) = %q: want 8 hex digits after %q", c.service, name, c.prefix)
		}
		if len(name) > maxIfName {
			t.Errorf("HostLink(%q) = %q: %d bytes, over IFNAMSIZ", c.service, name, len(name))
		}
		if err := validateIfName(name); err != nil {
			t.Errorf("HostLink(%q) = %q: %v", c.service, name, err)
		}
		if name != (Spec{Service: c.service}).HostLink() {
			t.Errorf("HostLink(%q) is not stable", c.service)
		}
		if other, dup := seen[name]; dup {
			t.Errorf("HostLink(%q) = HostLink(%q) = %q", c.service, other, name)
		}
		seen[name] = c.service
	}
	// Services differing only past the hint still get different names.
	if a, b := (Spec{Service: "web1"}).HostLink(), (Spec{Service: "web2"}).HostLink(); a == b {
		t.Errorf("web1 and web2 share host link %q", a)
	}
}

func TestSpecDefaults(t *testing.T) {
	s := Spec{Service: "web"}
	if got := s.BridgeName(); got != "br0" {
		t.Errorf("BridgeName() = %q, want br0", got)
	}
	if got := s.HardwareAddr(); !bytes.Equal(got, MACFor("web")) {
		t.Errorf("HardwareAddr() = %s, want MACFor(web) %s", got, MACFor("web"))
	}
	mac := net.HardwareAddr{0x02, 1, 2, 3, 4, 5}
	s = Spec{Service: "web", MAC: mac, Bridge: "lan0"}
	if s.BridgeName() != "lan0" || !bytes.Equal(s.HardwareAddr(), mac) {
		t.Errorf("explicit bridge/MAC not used: %q %s", s.BridgeName(), s.HardwareAddr())
	}
}

func TestValidate(t *testing.T) {
	good := Spec{Service: "web", Addr: netip.MustParsePrefix("198.18.5.100/24")}
	with := func(f func(*Spec)) Spec { s := good; f(&s); return s }
	cases := []struct {
		name string
		spec Spec
		want string // "" means valid; else a fragment of the error
	}{
		{"minimal", good, ""},
		{"full", with(func(s *Spec) {
			s.MAC = net.HardwareAddr{0x02, 0, 0x5e, 0x10, 0, 1}
			s.Bridge = "lan0"
			s.Gateway = netip.MustParseAddr("198.18.5.1")
		}), ""},
		{"slash32", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("198.18.5.100/32") }), ""},
		{"slash31 low", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("198.18.5.100/31") }), ""},
		{"no service", with(func(s *Spec) { s.Service = "" }), "service name"},
		{"no addr", with(func(s *Spec) { s.Addr = netip.Prefix{} }), "missing service address"},
		{"ipv6", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("2001:db8::5/64") }), "only IPv4"},
		{"mapped ipv4", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("::ffff:198.18.5.100/120") }), "only IPv4"},
		{"network address", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("198.18.5.0/24") }), "network address"},
		{"broadcast address", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("198.18.5.255/24") }), "broadcast address"},
		{"slash0", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("198.18.5.100/0") }), "/0"},
		{"loopback", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("127.0.0.2/8") }), "not a unicast host address"},
		{"multicast addr", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("224.0.0.5/24") }), "not a unicast host address"},
		{"unspecified", with(func(s *Spec) { s.Addr = netip.MustParsePrefix("0.0.0.0/24") }), "not a unicast host address"},
		{"multicast mac", with(func(s *Spec) { s.MAC = net.HardwareAddr{0x01, 0, 0x5e, 0, 0, 1} }), "multicast"},
		{"zero mac", with(func(s *Spec) { s.MAC = net.HardwareAddr{0, 0, 0, 0, 0, 0} }), "all-zero"},
		{"long mac", with(func(s *Spec) { s.MAC = make(net.HardwareAddr, 8) }), "6-byte"},
		{"long bridge", with(func(s *Spec) { s.Bridge = "a-bridge-name-too-long" }), "--bridge"},
		{"slash bridge", with(func(s *Spec) { s.Bridge = "br/0" }), "--bridge"},
		{"gateway outside", with(func(s *Spec) { s.Gateway = netip.MustParseAddr("198.18.6.1") }), "not inside the service subnet"},
		{"gateway is addr", with(func(s *Spec) { s.Gateway = netip.MustParseAddr("198.18.5.100") }), "service address itself"},
		{"gateway ipv6", with(func(s *Spec) { s.Gateway = netip.MustParseAddr("2001:db8::1") }), "IPv4"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.spec.Validate()
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("Validate() = %v, want nil", err)
			case c.want != "" && err == nil:
				t.Fatalf("Validate() = nil, want error containing %q", c.want)
			case c.want != "" && !strings.Contains(err.Error(), c.want):
				t.Fatalf("Validate() = %q, want it to contain %q", err, c.want)
			case err != nil && strings.Contains(err.Error(), "\n"):
				t.Fatalf("Validate() error spans lines: %q", err)
			}
		})
	}
}

func TestParseSpec(t *testing.T) {
	s, err := ParseSpec("web", "198.18.5.100/24", "02:00:5e:10:00:01", "lan0", "198.18.5.1")
	if err != nil {
		t.Fatal(err)
	}
	want := Spec{
		Service: "web",
		Addr:    netip.MustParsePrefix("198.18.5.100/24"),
		MAC:     net.HardwareAddr{0x02, 0, 0x5e, 0x10, 0, 1},
		Bridge:  "lan0",
		Gateway: netip.MustParseAddr("198.18.5.1"),
	}
	if s.Service != want.Service || s.Addr != want.Addr || !bytes.Equal(s.MAC, want.MAC) || s.Bridge != want.Bridge || s.Gateway != want.Gateway {
		t.Fatalf("ParseSpec = %+v, want %+v", s, want)
	}
	s, err = ParseSpec("web", "198.18.5.100/24", "", "", "")
	if err != nil {
		t.Fatal(err)
	}
	if s.MAC != nil || s.Bridge != "" || s.Gateway.IsValid() {
		t.Fatalf("optional fields set: %+v", s)
	}

	bad := []struct{ addr, mac, gw, want string }{
		{"", "", "", "--net needs --addr"},
		{"198.18.5.100", "", "", "not an address with a subnet"},
		{"198.18.5.300/24", "", "", "not an address with a subnet"},
		{"198.18.5.100/24", "zz:zz", "", "--mac"},
		{"198.18.5.100/24", "", "gateway", "--gateway"},
		{"198.18.5.100/24", "03:00:00:00:00:01", "", "multicast"},
	}
	for _, b := range bad {
		_, err := ParseSpec("web", b.addr, b.mac, "", b.gw)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ParseSpec(%q, %q, %q) = %v, want error containing %q", b.addr, b.mac, b.gw, err, b.want)
		}
	}
}

func TestGarpFrames(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee}
	ip := netip.MustParseAddr("198.19.88.100")
	frames, err := garpFrames(mac, ip)
	if err != nil {
		t.Fatal(err)
	}
	if len(frames) != 2 {
		t.Fatalf("got %d frames, want request and reply", len(frames))
	}
	hdr := "ffffffffffff" + "02aabbccddee" + "0806" + "0001" + "0800" + "06" + "04"
	sender := "02aabbccddee" + "c6135864"
	wantReq := hdr + "0001" + sender + "000000000000" + "c6135864"
	wantRep := hdr + "0002" + sender + "ffffffffffff" + "c6135864"
	if got := hex.EncodeToString(frames[0]); got != wantReq {
		t.Errorf("request frame\n got %s\nwant %s", got, wantReq)
	}
	if got := hex.EncodeToString(frames[1]); got != wantRep {
		t.Errorf("reply frame\n got %s\nwant %s", got, wantRep)
	}
	if _, err := garpFrames(mac, netip.MustParseAddr("2001:db8::1")); err == nil {
		t.Error("garpFrames accepted an IPv6 address")
	}
	if _, err := garpFrames(net.HardwareAddr{1, 2}, ip); err == nil {
		t.Error("garpFrames accepted a 2-byte MAC")
	}
}

func TestLastAddr(t *testing.T) {
	cases := map[string]string{
		"198.18.5.100/24": "198.18.5.255",
		"198.18.5.100/30": "198.18.5.103",
		"10.1.2.3/8":      "10.255.255.255",
		"198.18.5.100/32": "198.18.5.100",
	}
	for p, want := range cases {
		if got := lastAddr(netip.MustParsePrefix(p)); got.String() != want {
			t.Errorf("lastAddr(%s) = %s, want %s", p, got, want)
		}
	}
}

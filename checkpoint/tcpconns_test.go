package checkpoint

import (
	"encoding/binary"
	"testing"
)

func TestIPv4FromImage(t *testing.T) {
	// CRIU keeps an in_addr's four bytes as a host-order integer.
	var v uint32
	b := []byte{198, 18, 5, 100}
	v = binary.NativeEndian.Uint32(b)
	if got := ipv4(v).String(); got != "198.18.5.100" {
		t.Errorf("ipv4(%#x) = %s, want 198.18.5.100", v, got)
	}
}

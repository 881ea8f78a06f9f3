package svcname

import (
	"errors"
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	for _, ok := range []string{"redis", "redis-server", "counter.rb", "_x", "a", "A9._-", strings.Repeat("a", MaxLen)} {
		if err := Check(ok); err != nil {
			t.Errorf("Check(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "../x", "x/..", "/etc", "a/b", ".hidden", "-flag", "sp ace", "nul\x00", "ü", strings.Repeat("a", MaxLen+1), "*"} {
		if err := Check(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("Check(%q) = %v, want ErrInvalid", bad, err)
		}
	}
}

package arbiter

import (
	"strings"
	"testing"
)

func TestOpenSpec(t *testing.T) {
	for _, spec := range []string{"", "none"} {
		if a, err := Open(spec, 0); a != nil || err != nil {
			t.Errorf("Open(%q) = %v, %v; want no arbiter", spec, a, err)
		}
	}
	for spec, want := range map[string]string{
		"etcd:":      "names no etcd endpoint",
		"etcd: , ":   "names no etcd endpoint",
		"zookeeper:": "use none or etcd:",
	} {
		if _, err := Open(spec, 0); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Open(%q) = %v, want an error saying %q", spec, err, want)
		}
	}
}

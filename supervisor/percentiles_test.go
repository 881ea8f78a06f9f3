package supervisor

import (
	"testing"
	"time"
)

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	p50, p99 := percentiles(ds)
	if p50 != 51*time.Millisecond || p99 != 100*time.Millisecond {
		t.Fatalf("p50 %v p99 %v", p50, p99)
	}
	if a, b := percentiles(nil); a != 0 || b != 0 {
		t.Fatal("empty")
	}
	if ds[0] != 100*time.Millisecond {
		t.Fatal("percentiles reordered its input")
	}
}

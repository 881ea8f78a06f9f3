package promserve

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// The registry is served at /metrics, and the server is gone once ctx ends.
func TestServe(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "promserve_test_total", Help: "a test counter"})
	reg.MustRegister(c)
	c.Add(3)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	addr, err := Serve(ctx, &wg, "127.0.0.1:0", reg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "promserve_test_total 3") {
		t.Errorf("/metrics lacks the counter:\n%s", body)
	}
	cancel()
	wg.Wait()
	if _, err := http.Get("http://" + addr + "/metrics"); err == nil {
		t.Error("still served after its context ended")
	}
	if _, err := Serve(context.Background(), &wg, "no-such-host-or-port", reg); err == nil || !strings.Contains(err.Error(), "--metrics") {
		t.Errorf("a bad address = %v, want an error naming --metrics", err)
	}
}

package failover

import (
	"github.com/prometheus/client_golang/prometheus"
)

// collector shows a standby's services, one series per service, read from the same
// status `ftrun status` prints at the moment Prometheus scrapes.
type collector struct {
	status                                           func() []StandbyStatus
	failovers                                        func(service string) int
	epoch, received, connected, silence, live, probs *prometheus.Desc
	takeovers                                        *prometheus.Desc
}

func newCollector(status func() []StandbyStatus, failovers func(string) int) *collector {
	l := []string{"service"}
	return &collector{status: status, failovers: failovers,
		epoch:     prometheus.NewDesc("ftrun_standby_committed_epoch", "Newest epoch the standby holds committed for the service.", l, nil),
		received:  prometheus.NewDesc("ftrun_standby_received_bytes_total", "Bytes received from the service's primary.", l, nil),
		connected: prometheus.NewDesc("ftrun_standby_primary_connected", "1 while the service's primary is connected.", l, nil),
		silence:   prometheus.NewDesc("ftrun_standby_primary_silence_seconds", "Time since the service's primary was last heard.", l, nil),
		live:      prometheus.NewDesc("ftrun_standby_live", "1 once the standby has taken the service over and runs it.", l, nil),
		probs:     prometheus.NewDesc("ftrun_standby_failover_problems", "Problems that would make a failover of the service fail on this host.", l, nil),
		takeovers: prometheus.NewDesc("ftrun_failovers_total", "Times this standby took the service over.", l, nil),
	}
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.epoch, c.received, c.connected, c.silence, c.live, c.probs, c.takeovers} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	for _, s := range c.status() {
		ch <- prometheus.MustNewConstMetric(c.epoch, prometheus.GaugeValue, float64(s.Epoch), s.Service)
		ch <- prometheus.MustNewConstMetric(c.received, prometheus.CounterValue, float64(s.BytesReceived), s.Service)
		ch <- prometheus.MustNewConstMetric(c.connected, prometheus.GaugeValue, b(s.Connected), s.Service)
		ch <- prometheus.MustNewConstMetric(c.silence, prometheus.GaugeValue, s.Silence.Seconds(), s.Service)
		ch <- prometheus.MustNewConstMetric(c.live, prometheus.GaugeValue, b(s.Role == "live"), s.Service)
		ch <- prometheus.MustNewConstMetric(c.probs, prometheus.GaugeValue, float64(len(s.Problems)), s.Service)
		ch <- prometheus.MustNewConstMetric(c.takeovers, prometheus.CounterValue, float64(c.failovers(s.Service)), s.Service)
	}
}

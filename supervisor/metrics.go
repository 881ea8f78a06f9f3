package supervisor

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftrun/ftrun/supervisor/gate"
)

// metrics is what --metrics serves (Prometheus text format). Its registry is its own,
// not the process-global one, so each supervisor shows exactly its service.
type metrics struct {
	reg         *prometheus.Registry
	checkpoints *prometheus.CounterVec
	frozen      prometheus.Histogram
	ckptTime    prometheus.Histogram
	commitLat   prometheus.Histogram
	phase       *prometheus.HistogramVec
	dumped      prometheus.Counter
	written     prometheus.Counter
	shipped     prometheus.Counter
	imageBytes  prometheus.Gauge
	epoch       prometheus.Gauge
	standbyEp   prometheus.Gauge
	lag         prometheus.Gauge
	protected   prometheus.Gauge
	failing     prometheus.Gauge
	up          prometheus.Gauge
	recoveries  *prometheus.CounterVec
	heldPkts    prometheus.Gauge
	heldBytes   prometheus.Gauge
	heldAge     prometheus.Gauge
}

func newMetrics(service string) *metrics {
	c := prometheus.Labels{"service": service}
	lat := []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &metrics{
		reg: prometheus.NewRegistry(),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftrun_checkpoints_total", ConstLabels: c,
			Help: "Checkpoints attempted, by result (ok, failed, skipped)."}, []string{"result"}),
		frozen: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ftrun_checkpoint_frozen_seconds", ConstLabels: c, Buckets: lat,
			Help: "How long the program was frozen for each checkpoint."}),
		ckptTime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ftrun_checkpoint_duration_seconds", ConstLabels: c, Buckets: lat,
			Help: "Time from the start of a checkpoint to its local commit."}),
		commitLat: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ftrun_epoch_commit_latency_seconds", ConstLabels: c, Buckets: lat,
			Help: "Time from the start of a checkpoint to the standby's acknowledgement."}),
		dumped: prometheus.NewCounter(prometheus.CounterOpts{Name: "ftrun_dumped_bytes_total", ConstLabels: c,
			Help: "Bytes of image sets committed locally."}),
		written: prometheus.NewCounter(prometheus.CounterOpts{Name: "ftrun_written_bytes_total", ConstLabels: c,
			Help: "Bytes checkpoints wrote into the local store: CRIU's images, and the pages copied to make incremental sets standalone."}),
		shipped: prometheus.NewCounter(prometheus.CounterOpts{Name: "ftrun_shipped_bytes_total", ConstLabels: c,
			Help: "Bytes sent to the standby (deltas after the first epoch)."}),
		imageBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_image_bytes", ConstLabels: c,
			Help: "Size of the newest image set."}),
		epoch: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_epoch", ConstLabels: c,
			Help: "Newest committed epoch."}),
		standbyEp: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_standby_epoch", ConstLabels: c,
			Help: "Newest epoch the standby acknowledged."}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_standby_lag_epochs", ConstLabels: c,
			Help: "Epochs committed locally but not yet acknowledged by the standby."}),
		protected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_protected", ConstLabels: c,
			Help: "1 while the program is protected (by a standby, or by a local checkpoint without one)."}),
		failing: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_checkpoint_failing_since_seconds", ConstLabels: c,
			Help: "Unix time of the first of the checkpoints failing in a row now (0 while the newest succeeded): the program is unprotected since then."}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_program_up", ConstLabels: c,
			Help: "1 while the protected program runs."}),
		recoveries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftrun_recoveries_total", ConstLabels: c,
			Help: "Recovery ladder steps taken, by step (restore, fresh-start, give-up)."}, []string{"step"}),
	}
	m.phase = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ftrun_epoch_phase_seconds", ConstLabels: c,
		Buckets: []float64{.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		Help: "Time each epoch spent in each phase, from the checkpoint's start to the loop hearing the standby's ack " +
			"(they add up to ftrun_epoch_commit_latency_seconds; apply, verify and durable are the standby's own figures)."}, []string{"phase"})
	m.heldPkts = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_held_output_packets", ConstLabels: c,
		Help: "Packets the program sent that wait for the epoch explaining them to be committed."})
	m.heldBytes = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_held_output_bytes", ConstLabels: c,
		Help: "Bytes of held output."})
	m.heldAge = prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftrun_held_output_oldest_seconds", ConstLabels: c,
		Help: "Age of the oldest held packet."})
	m.reg.MustRegister(m.checkpoints, m.frozen, m.ckptTime, m.commitLat, m.phase, m.dumped, m.written, m.shipped, m.imageBytes,
		m.epoch, m.standbyEp, m.lag, m.protected, m.failing, m.up, m.recoveries, m.heldPkts, m.heldBytes, m.heldAge)
	for _, r := range []string{"ok", "failed", "skipped"} {
		m.checkpoints.WithLabelValues(r)
	}
	for _, r := range []Rung{RungRestore, RungFresh, RungGiveUp} {
		m.recoveries.WithLabelValues(r.String())
	}
	return m
}

// gate shows what the output gate holds.
func (m *metrics) gate(g gate.Stats) {
	m.heldPkts.Set(float64(g.HeldPackets))
	m.heldBytes.Set(float64(g.HeldBytes))
	m.heldAge.Set(g.OldestAge.Seconds())
}

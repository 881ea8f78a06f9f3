package bench

import (
	"fmt"
	"time"
)

// Writes is what a writer saw: per request, when it was sent, how long the answer
// took, and whether it came.
type Writes struct {
	Sent []time.Time
	Lat  []time.Duration
	OK   []bool
	Err  error // what ended the writer, if not stop
}

// AckedBefore is how many requests were answered before t (answers come in order).
func (w *Writes) AckedBefore(t time.Time) int {
	n := 0
	for i := range w.Sent {
		if w.OK[i] && w.Sent[i].Add(w.Lat[i]).Before(t) {
			n++
		}
	}
	return n
}

// LatencyMs are the latencies of the answered requests sent before t, in ms.
func (w *Writes) LatencyMs(before time.Time) []float64 {
	var out []float64
	for i := range w.Sent {
		if w.OK[i] && w.Sent[i].Before(before) {
			out = append(out, Ms(w.Lat[i]))
		}
	}
	return out
}

// KeyName and KeyValue are what the writers write: key i of a run with prefix.
func KeyName(prefix string, i int) string  { return fmt.Sprintf("%sk%d", prefix, i) }
func KeyValue(prefix string, i int) string { return fmt.Sprintf("%sv%d", prefix, i) }

// Keys are the first n keys of prefix.
func Keys(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = KeyName(prefix, i)
	}
	return out
}

// StartWriter writes KeyName(prefix, i) = KeyValue(prefix, i) for i = 0, 1, ... on one
// connection to redis at addr (dialled from ns), rate requests a second, until stop
// is closed or a request fails. The returned channel yields what it saw, once, when it
// has ended: the caller owns the goroutine and must receive from it.
func StartWriter(ns, addr, prefix string, rate int, stop <-chan struct{}) <-chan *Writes {
	out := make(chan *Writes, 1)
	go func() {
		w := &Writes{}
		defer func() { out <- w }()
		c, err := DialRedis(ns, addr, 5*time.Second)
		if err != nil {
			w.Err = err
			return
		}
		defer c.Close()
		period := time.Second / time.Duration(rate)
		next := time.Now()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			t := time.Now()
			// Catch up after scheduling jitter, not after a long stall (a burst
			// would then measure the burst).
			next = next.Add(period)
			if next.Before(t.Add(-50 * time.Millisecond)) {
				next = t
			}
			got, err := c.Do(2*time.Second, "SET", KeyName(prefix, i), KeyValue(prefix, i))
			w.Sent, w.Lat, w.OK = append(w.Sent, t), append(w.Lat, time.Since(t)), append(w.OK, err == nil && got == "OK")
			if err != nil {
				w.Err = err
				return
			}
		}
	}()
	return out
}

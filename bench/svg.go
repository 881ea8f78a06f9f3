package bench

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
)

// Style says how a series is drawn.
type Style int

const (
	// Line joins the points with straight lines and marks each point.
	Line Style = iota
	// Scatter marks the points only (timelines, many samples).
	Scatter
	// Step draws a staircase through the points: across to the next x, then up to its
	// y (distribution functions).
	Step
	// Dashed joins the points with a dashed line and no marks (baselines, targets).
	Dashed
)

// Point is one (x, y) value in the plot's units.
type Point struct{ X, Y float64 }

// Series is one named set of points, drawn in one colour.
type Series struct {
	Name   string
	Style  Style
	Points []Point
}

// Mark is a labelled vertical line at X (an event on a timeline).
type Mark struct {
	X     float64
	Label string
}

// Plot is an x/y chart: axes with labels and units, a legend, and optional marks.
// SVG renders it; nothing here touches the file system.
type Plot struct {
	Title  string
	XLabel string // with its unit, e.g. "image size (MiB)"
	YLabel string
	XLog   bool
	YLog   bool
	Series []Series
	Marks  []Mark
}

// Size of every plot, in pixels, and of the area the data is drawn in.
const (
	plotW, plotH                       = 900, 440
	areaL, areaR, areaT, areaB float64 = 80, 560, 48, 380
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"}

// ErrNoData is returned for a plot with nothing to draw.
var ErrNoData = errors.New("plot has no data")

// axis maps values to pixels along one direction.
type axis struct {
	lo, hi   float64 // value range
	log      bool
	pLo, pHi float64 // pixel range (pLo is where lo goes)
	ticks    []float64
}

func (a axis) pos(v float64) float64 {
	if a.log {
		return a.pLo + (math.Log10(v)-math.Log10(a.lo))/(math.Log10(a.hi)-math.Log10(a.lo))*(a.pHi-a.pLo)
	}
	return a.pLo + (v-a.lo)/(a.hi-a.lo)*(a.pHi-a.pLo)
}

// usable reports whether v can be placed on the axis (log axes take positive values).
func (a axis) usable(v float64) bool {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return false
	}
	return !a.log || v > 0
}

// niceStep is the 1-2-5 step that cuts span into about n intervals.
func niceStep(span float64, n int) float64 {
	if span <= 0 {
		return 1
	}
	raw := span / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if raw <= m*mag {
			return m * mag
		}
	}
	return 10 * mag
}

// linearAxis spans [min, max] with nice ticks; zero is included when asked and the
// data are all on one side of it.
func linearAxis(min, max float64, withZero bool) axis {
	if withZero && min > 0 {
		min = 0
	}
	if withZero && max < 0 {
		max = 0
	}
	if min == max {
		d := math.Abs(min) * 0.1
		if d == 0 {
			d = 1
		}
		min, max = min-d, max+d
	}
	step := niceStep(max-min, 5)
	lo, hi := math.Floor(min/step)*step, math.Ceil(max/step)*step
	a := axis{lo: lo, hi: hi}
	for v := lo; v <= hi+step/2; v += step {
		a.ticks = append(a.ticks, math.Round(v/step)*step)
	}
	return a
}

// logAxis spans whole decades around [min, max] (both > 0).
func logAxis(min, max float64) axis {
	lo := math.Pow(10, math.Floor(math.Log10(min)))
	hi := math.Pow(10, math.Ceil(math.Log10(max)))
	if hi <= lo {
		hi = lo * 10
	}
	a := axis{lo: lo, hi: hi, log: true}
	decades := int(math.Round(math.Log10(hi / lo)))
	for d := 0; d <= decades; d++ {
		base := lo * math.Pow(10, float64(d))
		a.ticks = append(a.ticks, base)
		if decades <= 2 && d < decades {
			a.ticks = append(a.ticks, 2*base, 5*base)
		}
	}
	return a
}

// formatTick writes a tick value briefly: 0.5, 20, 1500, 25k, 3M.
func formatTick(v float64) string {
	av := math.Abs(v)
	switch {
	case av >= 1e6 && math.Mod(av, 1e5) == 0:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case av >= 1e4 && math.Mod(av, 100) == 0:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	s := strconv.FormatFloat(v, 'f', 6, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	if s == "-0" {
		s = "0"
	}
	return s
}

// ranges finds what the axes must show: every usable point and mark.
func (p Plot) ranges() (xmin, xmax, ymin, ymax float64, ok bool) {
	xmin, ymin = math.Inf(1), math.Inf(1)
	xmax, ymax = math.Inf(-1), math.Inf(-1)
	probeX, probeY := axis{log: p.XLog}, axis{log: p.YLog}
	for _, s := range p.Series {
		for _, pt := range s.Points {
			if !probeX.usable(pt.X) || !probeY.usable(pt.Y) {
				continue
			}
			ok = true
			xmin, xmax = math.Min(xmin, pt.X), math.Max(xmax, pt.X)
			ymin, ymax = math.Min(ymin, pt.Y), math.Max(ymax, pt.Y)
		}
	}
	if !ok {
		return 0, 0, 0, 0, false
	}
	for _, m := range p.Marks {
		if probeX.usable(m.X) {
			xmin, xmax = math.Min(xmin, m.X), math.Max(xmax, m.X)
		}
	}
	return xmin, xmax, ymin, ymax, true
}

// SVG renders the plot as a standalone SVG document. Every drawn datum carries
// class="data" (one polyline or path per line, one circle per marked point).
func (p Plot) SVG() ([]byte, error) {
	xmin, xmax, ymin, ymax, ok := p.ranges()
	if !ok {
		return nil, fmt.Errorf("%q: %w", p.Title, ErrNoData)
	}
	var xa, ya axis
	if p.XLog {
		xa = logAxis(xmin, xmax)
	} else {
		xa = linearAxis(xmin, xmax, false)
	}
	if p.YLog {
		ya = logAxis(ymin, ymax)
	} else {
		ya = linearAxis(ymin, ymax, true)
	}
	xa.pLo, xa.pHi = areaL, areaR
	ya.pLo, ya.pHi = areaB, areaT

	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`+"\n",
		plotW, plotH, plotW, plotH)
	w(`<title>%s</title>`+"\n", esc(p.Title))
	w(`<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`+"\n", plotW, plotH)
	w(`<text x="%.1f" y="26" text-anchor="middle" font-size="15" font-weight="bold">%s</text>`+"\n", (areaL+areaR)/2, esc(p.Title))
	w(`<defs><clipPath id="area"><rect x="%.1f" y="%.1f" width="%.1f" height="%.1f"/></clipPath></defs>`+"\n",
		areaL-4, areaT-4, areaR-areaL+8, areaB-areaT+8)

	// Grid and tick labels.
	w(`<g class="grid" stroke="#e3e3e3" stroke-width="1">` + "\n")
	for _, t := range xa.ticks {
		x := xa.pos(t)
		w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`+"\n", x, areaT, x, areaB)
	}
	for _, t := range ya.ticks {
		y := ya.pos(t)
		w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`+"\n", areaL, y, areaR, y)
	}
	w("</g>\n")
	w(`<g class="ticks" fill="#333333">` + "\n")
	for _, t := range xa.ticks {
		w(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", xa.pos(t), areaB+17, esc(formatTick(t)))
	}
	for _, t := range ya.ticks {
		w(`<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", areaL-7, ya.pos(t)+4, esc(formatTick(t)))
	}
	w("</g>\n")
	w(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#555555"/>`+"\n", areaL, areaT, areaR-areaL, areaB-areaT)
	w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="13">%s</text>`+"\n", (areaL+areaR)/2, areaB+40, esc(p.XLabel))
	w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="13" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n",
		22.0, (areaT+areaB)/2, 22.0, (areaT+areaB)/2, esc(p.YLabel))

	// Marks under the data, labels staggered so they do not overlap.
	for i, m := range p.Marks {
		if !xa.usable(m.X) {
			continue
		}
		x := xa.pos(m.X)
		w(`<g class="mark"><line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#000000" stroke-width="1.2" stroke-dasharray="5 3"/>`,
			x, areaT, x, areaB)
		anchor, dx := "start", 4.0
		if x > areaR-170 {
			anchor, dx = "end", -4
		}
		w(`<text x="%.1f" y="%.1f" text-anchor="%s" font-size="11">%s</text></g>`+"\n", x+dx, areaT+14+float64(i%4)*14, anchor, esc(m.Label))
	}

	// Data.
	w(`<g clip-path="url(#area)">` + "\n")
	for i, s := range p.Series {
		color := palette[i%len(palette)]
		var pts []Point
		for _, pt := range s.Points {
			if xa.usable(pt.X) && ya.usable(pt.Y) {
				pts = append(pts, Point{xa.pos(pt.X), ya.pos(pt.Y)})
			}
		}
		if len(pts) == 0 {
			continue
		}
		w(`<g class="series" data-name="%s">`, esc(s.Name))
		switch s.Style {
		case Line, Dashed:
			dash := ""
			if s.Style == Dashed {
				dash = ` stroke-dasharray="7 4"`
			}
			w(`<polyline class="data" fill="none" stroke="%s" stroke-width="2"%s points="`, color, dash)
			for j, pt := range pts {
				if j > 0 {
					w(" ")
				}
				w("%.1f,%.1f", pt.X, pt.Y)
			}
			w(`"/>`)
			if s.Style == Line {
				for _, pt := range pts {
					w(`<circle class="data" cx="%.1f" cy="%.1f" r="3.5" fill="%s"/>`, pt.X, pt.Y, color)
				}
			}
		case Step:
			w(`<path class="data" fill="none" stroke="%s" stroke-width="2" d="M%.1f %.1f`, color, pts[0].X, pts[0].Y)
			for _, pt := range pts[1:] {
				w(" H%.1f V%.1f", pt.X, pt.Y)
			}
			w(`"/>`)
		case Scatter:
			for _, pt := range pts {
				w(`<circle class="data" cx="%.1f" cy="%.1f" r="2.2" fill="%s" fill-opacity="0.75"/>`, pt.X, pt.Y, color)
			}
		}
		w("</g>\n")
	}
	w("</g>\n")

	// Legend, right of the data area.
	lx, ly := areaR+18, areaT+6
	w(`<g class="legend">` + "\n")
	for i, s := range p.Series {
		color := palette[i%len(palette)]
		y := ly + float64(i)*20
		switch s.Style {
		case Scatter:
			w(`<circle cx="%.1f" cy="%.1f" r="4" fill="%s"/>`, lx+11, y, color)
		case Dashed:
			w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2" stroke-dasharray="7 4"/>`, lx, y, lx+22, y, color)
		default:
			w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`, lx, y, lx+22, y, color)
		}
		w(`<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+30, y+4, esc(clip(s.Name, 42)))
	}
	w("</g>\n</svg>\n")
	return []byte(b.String()), nil
}

func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func esc(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;")
	return r.Replace(s)
}

// CDF is the empirical distribution of samples as a Step series: y is the percentage
// of samples at or below x. Long sample lists are thinned to at most 400 steps, always
// keeping the smallest and the largest sample.
func CDF(name string, samples []float64) Series {
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	n := len(s)
	out := Series{Name: name, Style: Step}
	if n == 0 {
		return out
	}
	out.Points = append(out.Points, Point{s[0], 0})
	const maxSteps = 400
	stride := 1
	if n > maxSteps {
		stride = (n + maxSteps - 1) / maxSteps
	}
	for i := 0; i < n; i += stride {
		j := min(i+stride-1, n-1)
		out.Points = append(out.Points, Point{s[j], 100 * float64(j+1) / float64(n)})
	}
	if last := out.Points[len(out.Points)-1]; last.Y < 100 {
		out.Points = append(out.Points, Point{s[n-1], 100})
	}
	return out
}

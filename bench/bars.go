package bench

import (
	"fmt"
	"strings"
)

// Bars is a stacked bar chart: one bar per category, each cut into the same named
// segments (an epoch's phases at each interval, say). SVG renders it; nothing here
// touches the file system.
type Bars struct {
	Title  string
	XLabel string
	YLabel string // with its unit
	// Categories name the bars, left to right.
	Categories []string
	// Segments are stacked bottom up in this order; Values[i] is the segment's height
	// in bar i (missing or negative values count as 0).
	Segments []Segment
}

// Segment is one named part of every bar.
type Segment struct {
	Name   string
	Values []float64
}

// barPalette has more colours than palette: a breakdown has many parts.
var barPalette = []string{"#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896", "#9467bd",
	"#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22", "#dbdb8d", "#17becf", "#9edae5"}

func (b Bars) value(seg, bar int) float64 {
	if v := b.Segments[seg].Values; bar < len(v) && v[bar] > 0 {
		return v[bar]
	}
	return 0
}

// shown are the segments with a height somewhere: the others would only crowd the legend.
func (b Bars) shown() []int {
	var out []int
	for s := range b.Segments {
		for c := range b.Categories {
			if b.value(s, c) > 0 {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// SVG draws the bars with a linear y axis from 0 and a legend, top segment first.
func (b Bars) SVG() ([]byte, error) {
	segs := b.shown()
	if len(b.Categories) == 0 || len(segs) == 0 {
		return nil, fmt.Errorf("%q: %w", b.Title, ErrNoData)
	}
	top := 0.0
	for c := range b.Categories {
		sum := 0.0
		for _, s := range segs {
			sum += b.value(s, c)
		}
		top = max(top, sum)
	}
	ya := linearAxis(0, top, true)
	ya.pLo, ya.pHi = areaB, areaT
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format, a...) }
	w(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	w(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`+"\n",
		plotW, plotH, plotW, plotH)
	w(`<title>%s</title>`+"\n", esc(b.Title))
	w(`<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>`+"\n", plotW, plotH)
	w(`<text x="%.1f" y="26" text-anchor="middle" font-size="15" font-weight="bold">%s</text>`+"\n", (areaL+areaR)/2, esc(b.Title))
	w(`<g class="grid" stroke="#e3e3e3" stroke-width="1">` + "\n")
	for _, t := range ya.ticks {
		w(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`+"\n", areaL, ya.pos(t), areaR, ya.pos(t))
	}
	w("</g>\n")
	w(`<g class="ticks" fill="#333333">` + "\n")
	for _, t := range ya.ticks {
		w(`<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", areaL-7, ya.pos(t)+4, esc(formatTick(t)))
	}
	slot := (areaR - areaL) / float64(len(b.Categories))
	for c, name := range b.Categories {
		w(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", areaL+slot*(float64(c)+0.5), areaB+17, esc(clip(name, 16)))
	}
	w("</g>\n")
	w(`<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="none" stroke="#555555"/>`+"\n", areaL, areaT, areaR-areaL, areaB-areaT)
	w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="13">%s</text>`+"\n", (areaL+areaR)/2, areaB+40, esc(b.XLabel))
	w(`<text x="%.1f" y="%.1f" text-anchor="middle" font-size="13" transform="rotate(-90 %.1f %.1f)">%s</text>`+"\n",
		22.0, (areaT+areaB)/2, 22.0, (areaT+areaB)/2, esc(b.YLabel))
	bw := min(slot*0.6, 90)
	for c := range b.Categories {
		x, base := areaL+slot*(float64(c)+0.5)-bw/2, 0.0
		for _, s := range segs {
			v := b.value(s, c)
			if v == 0 {
				continue
			}
			y0, y1 := ya.pos(base), ya.pos(base+v)
			w(`<rect class="data" data-name="%s" x="%.1f" y="%.1f" width="%.1f" height="%.2f" fill="%s"><title>%s: %s</title></rect>`+"\n",
				esc(b.Segments[s].Name), x, y1, bw, y0-y1, barPalette[s%len(barPalette)], esc(b.Segments[s].Name), esc(formatTick(v)))
			base += v
		}
	}
	// Legend, top segment first, as the bars read.
	lx, step := areaR+18, min(20.0, (areaB-areaT)/float64(len(segs)))
	w(`<g class="legend">` + "\n")
	for i := range segs {
		s := segs[len(segs)-1-i]
		y := areaT + 6 + float64(i)*step
		w(`<rect x="%.1f" y="%.1f" width="14" height="10" fill="%s"/>`, lx, y-5, barPalette[s%len(barPalette)])
		w(`<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+22, y+4, esc(clip(b.Segments[s].Name, 42)))
	}
	w("</g>\n</svg>\n")
	return []byte(sb.String()), nil
}

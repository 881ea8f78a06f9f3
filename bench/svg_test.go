package bench

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strings"
	"testing"
)

// svgShape counts an SVG document's elements and its data elements (class="data").
func svgShape(t *testing.T, doc []byte) (elements map[string]int, data int) {
	t.Helper()
	elements = map[string]int{}
	dec := xml.NewDecoder(bytes.NewReader(doc))
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			return elements, data
		}
		if err != nil {
			t.Fatalf("not XML: %v\n%s", err, doc)
		}
		if se, ok := tok.(xml.StartElement); ok {
			elements[se.Name.Local]++
			for _, a := range se.Attr {
				if a.Name.Local == "class" && a.Value == "data" {
					data++
				}
			}
		}
	}
}

func TestPlotSVGLineAndScatter(t *testing.T) {
	p := Plot{Title: "a < b & c", XLabel: "size (MiB)", YLabel: "time (ms)",
		Series: []Series{
			{Name: "ftrun", Style: Line, Points: []Point{{16, 10}, {64, 30}, {256, 90}}},
			{Name: "baseline", Style: Dashed, Points: []Point{{16, 9}, {256, 80}}},
			{Name: "samples", Style: Scatter, Points: []Point{{20, 11}, {30, 12}}},
		},
		Marks: []Mark{{X: 100, Label: "event"}}}
	doc, err := p.SVG()
	if err != nil {
		t.Fatal(err)
	}
	el, data := svgShape(t, doc)
	// ftrun: a polyline and 3 circles; baseline: a polyline; samples: 2 circles.
	if data != 7 {
		t.Errorf("%d data elements, want 7", data)
	}
	if el["svg"] != 1 || el["polyline"] != 2 {
		t.Errorf("elements %v", el)
	}
	s := string(doc)
	for _, want := range []string{"a &lt; b &amp; c", "size (MiB)", "time (ms)", "ftrun", "baseline", "samples", "event", `stroke-dasharray="7 4"`} {
		if !strings.Contains(s, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
}

func TestPlotSVGLogAxesDropUnusablePoints(t *testing.T) {
	p := Plot{Title: "log", XLog: true, YLog: true, Series: []Series{
		{Name: "s", Style: Line, Points: []Point{{0, 5}, {64, 300}, {4096, 16000}, {100, -1}, {math.NaN(), 3}}},
	}}
	doc, err := p.SVG()
	if err != nil {
		t.Fatal(err)
	}
	_, data := svgShape(t, doc)
	if data != 3 { // one polyline, two usable points
		t.Errorf("%d data elements, want 3", data)
	}
	for _, tick := range []string{">10<", ">100<", ">1000<", ">10k<", ">100k<"} {
		if !strings.Contains(string(doc), tick) {
			t.Errorf("log axis lacks tick %s", tick)
		}
	}
}

func TestPlotSVGNoData(t *testing.T) {
	_, err := Plot{Title: "empty", YLog: true, Series: []Series{{Name: "s", Points: []Point{{1, 0}}}}}.SVG()
	if !errors.Is(err, ErrNoData) {
		t.Fatalf("err %v, want ErrNoData", err)
	}
}

func TestCDF(t *testing.T) {
	s := CDF("x", []float64{3, 1, 2, 4})
	if s.Style != Step {
		t.Fatal("a CDF is a step series")
	}
	want := []Point{{1, 0}, {1, 25}, {2, 50}, {3, 75}, {4, 100}}
	if len(s.Points) != len(want) {
		t.Fatalf("points %v", s.Points)
	}
	for i := range want {
		if s.Points[i] != want[i] {
			t.Errorf("point %d: %v, want %v", i, s.Points[i], want[i])
		}
	}
	many := make([]float64, 10000)
	for i := range many {
		many[i] = float64(i)
	}
	thin := CDF("many", many)
	if len(thin.Points) > 402 {
		t.Errorf("%d points for 10000 samples: not thinned", len(thin.Points))
	}
	if last := thin.Points[len(thin.Points)-1]; last != (Point{9999, 100}) {
		t.Errorf("last point %v, want the largest sample at 100%%", last)
	}
	doc, err := Plot{Title: "cdf", XLog: true, Series: []Series{s}}.SVG()
	if err != nil {
		t.Fatal(err)
	}
	if el, data := svgShape(t, doc); el["path"] != 1 || data != 1 {
		t.Errorf("a step series is one path: %v, %d data", el, data)
	}
}

func TestTicks(t *testing.T) {
	a := linearAxis(3, 97, true)
	if a.lo != 0 || a.hi != 100 || len(a.ticks) != 6 {
		t.Errorf("linear axis 3..97: %+v", a)
	}
	b := linearAxis(-1.9, 3.1, false)
	if b.lo > -1.9 || b.hi < 3.1 {
		t.Errorf("linear axis does not cover its data: %+v", b)
	}
	for v, want := range map[float64]string{0: "0", 0.5: "0.5", 20: "20", 1500: "1500", 25000: "25k", 3e6: "3M", 0.30000000000000004: "0.3"} {
		if got := formatTick(v); got != want {
			t.Errorf("formatTick(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestBarsSVG(t *testing.T) {
	b := Bars{Title: "phases", XLabel: "--interval", YLabel: "ms", Categories: []string{"50ms", "100ms"},
		Segments: []Segment{{Name: "dump", Values: []float64{10, 12}}, {Name: "unused", Values: []float64{0, 0}},
			{Name: "send", Values: []float64{3}}, {Name: "ack <1>", Values: []float64{5, -1}}}}
	doc, err := b.SVG()
	if err != nil {
		t.Fatal(err)
	}
	_, data := svgShape(t, doc)
	// dump twice, send once (missing in the second bar), ack once (negative in the second).
	if data != 4 {
		t.Errorf("%d bar segments, want 4", data)
	}
	s := string(doc)
	for _, want := range []string{"phases", "50ms", "100ms", "dump", "send", "ack &lt;1&gt;"} {
		if !strings.Contains(s, want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	if strings.Contains(s, "unused") {
		t.Error("a segment with no height is in the legend")
	}
	if _, err := (Bars{Title: "x", Categories: []string{"a"}}).SVG(); !errors.Is(err, ErrNoData) {
		t.Fatalf("empty bars: %v", err)
	}
}

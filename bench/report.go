package bench

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Figure is one measured number next to its baseline from the same run.
type Figure struct {
	Name     string  `json:"name"` // what was measured
	Value    float64 `json:"value"`
	Baseline float64 `json:"baseline"`
	Unit     string  `json:"unit"`
	// BaselineName says what the baseline is ("criu dump CLI", "plain restart").
	BaselineName string `json:"baseline_name"`
	// ValueText and BaselineText replace the formatted numbers when set.
	ValueText    string `json:"value_text,omitempty"`
	BaselineText string `json:"baseline_text,omitempty"`
	// NoRatio leaves the ratio column empty (when dividing means nothing).
	NoRatio bool `json:"-"`
	// Verdict is a target and whether it was met, e.g. "target <= 1.1: met".
	Verdict string `json:"verdict,omitempty"`
}

// Ratio is Value/Baseline, NaN when it means nothing.
func (f Figure) Ratio() float64 {
	if f.NoRatio {
		return math.NaN()
	}
	return Ratio(f.Value, f.Baseline)
}

// Table is a Markdown table.
type Table struct {
	Title  string     `json:"title"`
	Header []string   `json:"header"`
	Rows   [][]string `json:"rows"`
}

// NamedPlot is a plot and the file it is written to, relative to the report folder:
// an x/y Plot, or Bars where those are set.
type NamedPlot struct {
	File string `json:"file"`
	Plot Plot   `json:"-"`
	Bars *Bars  `json:"-"`
}

// Title is the plot's title.
func (p NamedPlot) Title() string {
	if p.Bars != nil {
		return p.Bars.Title
	}
	return p.Plot.Title
}

// SVG draws the plot.
func (p NamedPlot) SVG() ([]byte, error) {
	if p.Bars != nil {
		return p.Bars.SVG()
	}
	return p.Plot.SVG()
}

// Section is what one scenario reports.
type Section struct {
	Name    string      `json:"name"`
	Title   string      `json:"title"`
	About   string      `json:"about"`
	Figures []Figure    `json:"figures"`
	Tables  []Table     `json:"tables"`
	Plots   []NamedPlot `json:"plots"`
	// Targets are the section's figures held to their targets; the README shows them
	// in the section and all of them under the summary.
	Targets []TargetResult `json:"targets,omitempty"`
	Notes   []string       `json:"notes,omitempty"`
	Raw     any            `json:"raw,omitempty"`
	Err     string         `json:"error,omitempty"`
	Elapsed time.Duration  `json:"elapsed_ns"`
}

// Report is a whole `ftrun bench` run.
type Report struct {
	Started  time.Time     `json:"started"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	Quick    bool          `json:"quick"`
	Machine  string        `json:"machine"`
	Command  string        `json:"command"`
	Sections []Section     `json:"sections"`
}

// Failed lists the sections that did not complete.
func (r Report) Failed() []string {
	var out []string
	for _, s := range r.Sections {
		if s.Err != "" {
			out = append(out, s.Name)
		}
	}
	return out
}

// FormatValue writes v in unit with a precision fit for reading.
func FormatValue(v float64, unit string) string {
	if math.IsNaN(v) {
		return "-"
	}
	var num string
	switch av := math.Abs(v); {
	case av == 0:
		num = "0"
	case av >= 100:
		num = fmt.Sprintf("%.0f", v)
	case av >= 10:
		num = fmt.Sprintf("%.1f", v)
	case av >= 1:
		num = fmt.Sprintf("%.2f", v)
	default:
		num = fmt.Sprintf("%.3f", v)
	}
	if unit == "" {
		return num
	}
	return num + " " + unit
}

func (f Figure) valueText() string {
	if f.ValueText != "" {
		return f.ValueText
	}
	return FormatValue(f.Value, f.Unit)
}

func (f Figure) baselineText() string {
	b := f.BaselineText
	if b == "" {
		b = FormatValue(f.Baseline, f.Unit)
	}
	if f.BaselineName != "" {
		b = f.BaselineName + ": " + b
	}
	return b
}

func (f Figure) ratioText() string {
	r := f.Ratio()
	s := ""
	switch {
	case math.IsNaN(r) || math.IsInf(r, 0):
	case r < 0.1:
		s = fmt.Sprintf("%.2g", r)
	default:
		s = fmt.Sprintf("%.2f", r)
	}
	if f.Verdict != "" {
		if s != "" {
			s += " "
		}
		s += "(" + f.Verdict + ")"
	}
	return s
}

func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	return strings.ReplaceAll(s, "\n", " ")
}

// Markdown renders t; an empty table renders as nothing.
func (t Table) Markdown() string {
	if len(t.Header) == 0 {
		return ""
	}
	var b strings.Builder
	if t.Title != "" {
		fmt.Fprintf(&b, "**%s**\n\n", t.Title)
	}
	row := func(cells []string) {
		b.WriteString("|")
		for i := range t.Header {
			c := ""
			if i < len(cells) {
				c = cells[i]
			}
			b.WriteString(" " + cell(c) + " |")
		}
		b.WriteString("\n")
	}
	row(t.Header)
	b.WriteString("|")
	for range t.Header {
		b.WriteString(" --- |")
	}
	b.WriteString("\n")
	for _, r := range t.Rows {
		row(r)
	}
	return b.String()
}

// SummaryTable is every figure of every section, each next to its baseline.
func (r Report) SummaryTable() Table {
	t := Table{Header: []string{"scenario", "figure", "ftrun", "baseline (same run)", "ratio"}}
	for _, s := range r.Sections {
		if s.Err != "" && len(s.Figures) == 0 {
			t.Rows = append(t.Rows, []string{s.Title, "FAILED: " + firstLine(s.Err), "", "", ""})
			continue
		}
		for _, f := range s.Figures {
			t.Rows = append(t.Rows, []string{s.Title, f.Name, f.valueText(), f.baselineText(), f.ratioText()})
		}
	}
	return t
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// Markdown renders the report's README.md: the summary, then one part per section.
func (r Report) Markdown() string {
	var b strings.Builder
	b.WriteString("# ftrun bench\n\n")
	mode := "full run"
	if r.Quick {
		mode = "quick run (`--quick`)"
	}
	fmt.Fprintf(&b, "%s, started %s, took %s, on %s.\n\n", mode, r.Started.Format("2006-01-02 15:04:05 MST"), r.Elapsed.Round(time.Second), r.Machine)
	if r.Command != "" {
		fmt.Fprintf(&b, "Command: `%s`\n\n", r.Command)
	}
	b.WriteString("Every figure sits next to its baseline, measured in the same run on the same machine. ")
	b.WriteString("Raw numbers: [results.json](results.json).\n\n")
	if failed := r.Failed(); len(failed) > 0 {
		fmt.Fprintf(&b, "**Failed scenarios: %s** (their sections say why; figures shown are what ran before the failure).\n\n", strings.Join(failed, ", "))
	}
	b.WriteString("## Summary\n\n")
	b.WriteString(r.SummaryTable().Markdown())
	if t := r.TargetsTable(); len(t.Rows) > 0 {
		b.WriteString("\n" + t.Markdown())
	}
	for i, s := range r.Sections {
		fmt.Fprintf(&b, "\n## %d. %s\n\n", i+1, s.Title)
		if s.About != "" {
			b.WriteString(s.About + "\n\n")
		}
		if s.Err != "" {
			fmt.Fprintf(&b, "**FAILED** after %s:\n\n```\n%s\n```\n\n", s.Elapsed.Round(100*time.Millisecond), s.Err)
		} else {
			fmt.Fprintf(&b, "Took %s.\n\n", s.Elapsed.Round(100*time.Millisecond))
		}
		for _, t := range s.Tables {
			b.WriteString(t.Markdown())
			b.WriteString("\n")
		}
		if len(s.Targets) > 0 {
			b.WriteString(targetsTable(s.Targets).Markdown())
			b.WriteString("\n")
		}
		for _, p := range s.Plots {
			fmt.Fprintf(&b, "![%s](%s)\n\n[%s](%s)\n\n", p.Title(), p.File, p.File, p.File)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
		if len(s.Notes) > 0 {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// JSON is results.json: the report's numbers, tables and raw measurements.
func (r Report) JSON() ([]byte, error) {
	return json.MarshalIndent(r, "", "  ")
}

// Write puts the report in dir: README.md, one SVG per plot and results.json. A plot
// that cannot be drawn (no data, from a failed scenario) is left out and said so.
func Write(dir string, r Report) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("report folder: %w", err)
	}
	for si := range r.Sections {
		s := &r.Sections[si]
		var kept []NamedPlot
		for _, p := range s.Plots {
			data, err := p.SVG()
			if err != nil {
				s.Notes = append(s.Notes, fmt.Sprintf("plot %s not drawn: %v", p.File, err))
				continue
			}
			if err := os.WriteFile(filepath.Join(dir, p.File), data, 0o644); err != nil {
				return fmt.Errorf("write %s: %w", p.File, err)
			}
			kept = append(kept, p)
		}
		s.Plots = kept
	}
	js, err := r.JSON()
	if err != nil {
		return fmt.Errorf("encode results.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "results.json"), js, 0o644); err != nil {
		return fmt.Errorf("write results.json: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte(r.Markdown()), 0o644); err != nil {
		return fmt.Errorf("write README.md: %w", err)
	}
	return nil
}

// MarshalJSON writes a figure with its ratio; numbers that are not numbers become null.
func (f Figure) MarshalJSON() ([]byte, error) {
	type plain Figure
	num := func(v float64) *float64 {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return nil
		}
		return &v
	}
	return json.Marshal(struct {
		plain
		Value    *float64 `json:"value"`
		Baseline *float64 `json:"baseline"`
		Ratio    *float64 `json:"ratio"`
	}{plain(f), num(f.Value), num(f.Baseline), num(f.Ratio())})
}

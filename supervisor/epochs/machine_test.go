package epochs

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var rewrite = flag.Bool("rewrite", false, "rewrite testdata/*.txt with the output the machine gives now")

// TestScenarios runs the scripts in testdata. Each block is a list of commands, a
// line "----" and the expected output, ended by a blank line: for every command the
// Ready it returned (or its error), then the machine's state. Lines starting with #
// between blocks are comments. Commands:
//
//	new mode=standby|local|off [standby]
//	cut E | committed E | durable E | acked E | nacked E [full]
//	up | down WHY... | incarnation after=E [takeover]
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.txt"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios in testdata: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) { runScenario(t, f) })
	}
}

type block struct {
	lead  []string // comments and blank lines before it
	input []string
	want  []string
}

func runScenario(t *testing.T, path string) {
	blocks, err := parseScenario(path)
	if err != nil {
		t.Fatal(err)
	}
	var m *Machine
	var out strings.Builder
	for i, b := range blocks {
		var got []string
		for _, line := range b.input {
			got = append(got, run(&m, line))
		}
		if m != nil {
			got = append(got, m.String())
		}
		if !*rewrite && strings.Join(got, "\n") != strings.Join(b.want, "\n") {
			t.Errorf("%s, block %d:\n%s\ngot:\n%s\nwant:\n%s", path, i+1, strings.Join(b.input, "\n"),
				strings.Join(got, "\n"), strings.Join(b.want, "\n"))
		}
		for _, l := range b.lead {
			fmt.Fprintln(&out, l)
		}
		fmt.Fprintf(&out, "%s\n----\n%s\n", strings.Join(b.input, "\n"), strings.Join(got, "\n"))
	}
	if *rewrite {
		if err := os.WriteFile(path, []byte(strings.TrimSuffix(out.String(), "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func parseScenario(path string) ([]block, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var (
		blocks []block
		cur    block
		state  = 0 // 0: between blocks, 1: input, 2: expected output
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case state == 0 && (line == "" || strings.HasPrefix(line, "#")):
			cur.lead = append(cur.lead, line)
		case state == 0:
			cur.input, state = []string{line}, 1
		case state == 1 && line == "----":
			state = 2
		case state == 1:
			cur.input = append(cur.input, line)
		case line == "":
			blocks, cur, state = append(blocks, cur), block{lead: []string{""}}, 0
		default:
			cur.want = append(cur.want, line)
		}
	}
	if state == 1 {
		return nil, fmt.Errorf("%s: a block without ----", path)
	}
	if state == 2 {
		blocks = append(blocks, cur)
	}
	return blocks, sc.Err()
}

// run carries out one command and says what came of it.
func run(m **Machine, line string) string {
	f := strings.Fields(line)
	if f[0] == "new" {
		cfg := Config{}
		for _, a := range f[1:] {
			switch {
			case strings.HasPrefix(a, "mode="):
				cfg.Mode = Mode(strings.TrimPrefix(a, "mode="))
			case a == "standby":
				cfg.Standby = true
			default:
				return "bad argument " + a
			}
		}
		*m = New(cfg)
		return line + " -> " + (*m).Protection().String()
	}
	if *m == nil {
		return "no machine: start with new"
	}
	ev, err := parseEvent(f)
	if err != nil {
		return line + " -> " + err.Error()
	}
	rd, err := (*m).Step(ev)
	s := line + " -> " + rd.String()
	if err != nil {
		s += "; error: " + err.Error()
	}
	return s
}

func parseEvent(f []string) (Event, error) {
	num := func(i int, prefix string) (uint64, error) {
		if len(f) <= i {
			return 0, fmt.Errorf("%s: missing epoch", f[0])
		}
		return strconv.ParseUint(strings.TrimPrefix(f[i], prefix), 10, 64)
	}
	has := func(word string) bool {
		for _, a := range f[1:] {
			if a == word {
				return true
			}
		}
		return false
	}
	switch f[0] {
	case "up":
		return LinkUp{}, nil
	case "down":
		return LinkDown{Why: strings.Join(f[1:], " ")}, nil
	case "incarnation":
		e, err := num(1, "after=")
		return Incarnation{After: e, Takeover: has("takeover")}, err
	}
	e, err := num(1, "")
	if err != nil {
		return nil, err
	}
	switch f[0] {
	case "cut":
		return Cut{Epoch: e}, nil
	case "committed":
		return Committed{Epoch: e}, nil
	case "abandoned":
		return Abandoned{Epoch: e}, nil
	case "durable":
		return Durable{Epoch: e}, nil
	case "acked":
		return Acked{Epoch: e}, nil
	case "nacked":
		return Nacked{Epoch: e, Full: has("full")}, nil
	}
	return nil, fmt.Errorf("unknown command %q", f[0])
}

// Drained: every cut epoch's output is out; a cut makes it false until its release.
func TestDrained(t *testing.T) {
	m := New(Config{Mode: Local})
	step := func(ev Event) {
		t.Helper()
		if _, err := m.Step(ev); err != nil {
			t.Fatal(err)
		}
	}
	step(Incarnation{})
	if !m.Drained() {
		t.Fatal("a new incarnation has output in flight")
	}
	step(Cut{Epoch: 1})
	step(Committed{Epoch: 1})
	if m.Drained() {
		t.Fatal("drained with epoch 1 cut and not yet durable")
	}
	step(Durable{Epoch: 1})
	if !m.Drained() {
		t.Fatal("not drained once epoch 1's output is out")
	}
}

package bench

import "testing"

// Every size is held to the ratio target, and sizes from 4 GiB up also to the
// absolute one.
func TestIncrementalReportTargets(t *testing.T) {
	var sec Section
	incrementalReport(&sec, []FrozenRow{
		{DataMB: 512, ImageMiB: 556, FtrunFrozen: []float64{44}, CLIFrozen: []float64{1000}, FtrunTotal: []float64{700}, CLITotal: []float64{1000}},
		{DataMB: 4096, ImageMiB: 4400, FtrunFrozen: []float64{150}, CLIFrozen: []float64{8000}, FtrunTotal: []float64{5000}, CLITotal: []float64{8000}},
		{DataMB: 8192}, // failed before a sample: left out
	})
	if len(sec.Tables) != 1 || len(sec.Tables[0].Rows) != 2 {
		t.Fatalf("tables %+v", sec.Tables)
	}
	if len(sec.Targets) != 3 {
		t.Fatalf("targets %+v", sec.Targets)
	}
	if !sec.Targets[0].Met || !sec.Targets[1].Met || sec.Targets[2].Met || sec.Targets[2].Limit != 60 {
		t.Errorf("verdicts: %+v", sec.Targets)
	}
}

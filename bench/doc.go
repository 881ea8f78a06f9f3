// Package bench is `ftrun bench`: it runs ftrun's benchmarks on this machine, each
// figure next to a baseline measured in the same run, and writes a report folder
// (README.md with a summary table, the targets met and missed, and one section per
// scenario, one SVG per plot, results.json with the raw numbers).
//
// A Scenario is a function of an Env: the ftrun binary to measure, a scratch
// directory, whether the run is --quick, a progress logger, and helpers that start
// `ftrun run` and `ftrun standby` as subprocesses, make network-namespace hosts on a
// bridge, speak redis's protocol and run the criu command line. Everything a scenario
// starts through its Env is undone when it returns, also on failure or interruption.
// Adding a benchmark is adding one Scenario to Scenarios.
//
// The rest is pure and tested without root: Report and Section render Markdown, Plot
// renders SVG by hand (line, scatter, step/CDF and timeline plots with labelled axes,
// legend and marks), each scenario's ...Report function turns its measurements
// into a Section, and the targets (pure data, held to the measurements by Evaluate)
// say which figures meet what ftrun aims for and, for those that do not, which phase
// of the epoch commit holds them.
package bench

//go:build race

package integration

// Under `go test -race` the ftrun binary the tests drive is built with the race
// detector too, so the supervisor's own goroutines are checked in real runs.
func init() { buildFlags = append(buildFlags, "-race") }

//go:build race

package integration

// The race detector's shadow memory multiplies what the standby takes: the memory
// bounds of TestHostilePeers scale with it.
func init() { hostileMemScale = 3 }

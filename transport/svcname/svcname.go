// Package svcname is the one rule for what may name a service. A service name
// becomes a directory on the standby, a cgroup (/ftrun/NAME), a state directory, a
// network namespace's name and a name in a certificate, and on the standby it
// arrives from the network: so it is checked here, once, and every one of those
// uses calls Check rather than trusting its caller.
package svcname

import (
	"errors"
	"fmt"
)

// MaxLen bounds a name: it must fit a path component and a cgroup name with room.
const MaxLen = 128

// ErrInvalid means a name cannot name a service safely.
var ErrInvalid = errors.New("invalid service name")

// Check accepts 1 to MaxLen characters of A-Z a-z 0-9 . _ -, starting with a letter,
// digit or '_': a single path component that cannot climb ("..", "../x"), hide
// (".x") or pass for a flag ("-x").
func Check(name string) error {
	if name == "" || len(name) > MaxLen {
		return fmt.Errorf("%w: %q must be 1 to %d characters", ErrInvalid, name, MaxLen)
	}
	if c := name[0]; c == '.' || c == '-' {
		return fmt.Errorf("%w: %q starts with %q (start with a letter, digit or '_')", ErrInvalid, name, c)
	}
	for _, c := range name {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w: %q has %q (allowed: A-Z a-z 0-9 . _ -)", ErrInvalid, name, c)
		}
	}
	return nil
}

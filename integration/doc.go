// Package integration holds ftrun's end-to-end tests: the real ftrun binary, real CRIU,
// real cgroups and namespaces, real servers (redis-server, ruby). They need root and
// the tools scripts/setup installs, and skip with the reason when those are absent.
package integration

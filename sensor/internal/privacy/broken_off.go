//go:build !dnssensor_broken_ecs

package privacy

// brokenECS is true only in a test build (-tags dnssensor_broken_ecs) that leaves EDNS Client
// Subnet data in stored packets, to prove that sensord's privacy self-test catches a scrubber
// that leaks. A production build cannot reach it: the constant is false and the branch compiled
// away.
const brokenECS = false

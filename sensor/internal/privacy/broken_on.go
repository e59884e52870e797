//go:build dnssensor_broken_ecs

package privacy

// brokenECS: this is a TEST BUILD whose scrubber leaves EDNS Client Subnet data in stored packets
// on purpose (see broken_off.go). Never ship it; sensord's privacy self-test refuses to.
const brokenECS = true

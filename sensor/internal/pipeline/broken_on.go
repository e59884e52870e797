//go:build dnssensor_broken_client

package pipeline

// brokenClientRule: this is a TEST BUILD that keeps client traffic on purpose (see
// broken_off.go). Never ship it; sensord's privacy self-test refuses to.
const brokenClientRule = true

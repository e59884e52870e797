//go:build !race

package nmsg

const raceEnabled = false

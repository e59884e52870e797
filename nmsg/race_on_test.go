//go:build race

package nmsg

// raceEnabled: under the race detector sync.Pool drops a quarter of what is put back, on purpose,
// so code that borrows from a pool allocates now and then.
const raceEnabled = true

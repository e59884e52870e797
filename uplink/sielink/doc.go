// Package sielink speaks SIE's sensor→submission protocol: protobuf
// messages (sielink.proto, farsightsec/sielink) carried in binary
// WebSocket messages on wss://host/session/<name>.
//
// The protocol has no acknowledgements. A payload written to a
// connection that then drops may never have reached the peer, so this
// package adds one thing the wire format allows without extending it: a
// WebSocket ping after a run of payloads. RFC 6455 peers answer a ping
// in stream order, so a pong proves the peer's reader consumed every
// message written before the ping (Conn.Sync). Everything written after
// the last such confirmation is reported as possibly lost when a
// connection drops; a supervisor that keeps data until Sync succeeds
// delivers at least once.
//
// The Server makes the pong mean "stored": it reads the next message
// only after its Handler returned for the one before, and pongs are sent
// only while reading. A Handler that cannot store a payload ends the
// session before anything later is read, or (Stall) keeps the session
// and stops reading until the payload is stored, so no ping after an
// unstored payload is ever answered. A Handler that stores asynchronously
// (Pipeliner) lets the session read on, and the server then answers a
// ping only once the Pipeline reports every payload before it stored.
//
// Message encoding is hand-written on protowire rather than generated:
// the messages are small, and hand-written decoding lets the decoder
// alias Payload.Data into the received buffer (no copy of a 1 MiB
// container) and treat every field as hostile.
//
// Everything received from the network is checked: message sizes are
// capped before buffering, malformed messages are counted and logged at
// most once per interval, and nothing on the network path panics.
package sielink

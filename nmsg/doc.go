// Package nmsg reads and writes Farsight NMSG containers, byte-compatible
// with the C reference implementation (nmsg 1.3.3).
//
// The protobuf messages (Nmsg, NmsgPayload, NmsgFragment) are encoded and
// decoded by hand rather than through a generated protobuf runtime: the
// sensor writes one container per few hundred packets on a hot path, and
// hand-written encoding lets FileWriter.Write run without allocating. The
// encoding follows protobuf-c exactly (fields in number order, repeated
// scalars unpacked, all payloads before all CRCs), which is what makes the
// output byte-identical to files written by the C library.
//
// Writers:
//   - FileWriter writes a stream of containers (files, TCP) without
//     sequence numbers, each at most FileOptions.MaxSize octets.
//   - DatagramWriter produces one UDP datagram per container, with
//     sequence numbers, splitting containers that exceed the MTU into
//     NmsgFragment datagrams.
//
// Readers:
//   - Reader consumes a stream of containers.
//   - Reassembler consumes datagrams from any number of senders and
//     reassembles fragmented containers.
//
// Both readers treat their input as hostile: every length is checked
// against a cap (MaxContainerSize by default) before anything is
// allocated, and everything that is dropped is counted in Counters.
// None of the types in this package is safe for concurrent use.
package nmsg

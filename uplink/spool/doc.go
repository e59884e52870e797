// Package spool hands sealed NMSG segments from the sensor (producer) to
// the uplink (consumer), two processes that start, crash and restart
// independently.
//
// # Layout
//
// A segment is a file of whole NMSG containers (optionally zlib) behind a
// 64-octet header carrying its sequence number, record and container
// counts, record time range, seal time and CRC32C checksums of header and
// body (format.go). It is named by its sequence number, zero-padded, so
// FIFO order is name order. Two tiers hold segments:
//
//   - Dir, the RAM tier (tmpfs, e.g. /run/spool): every segment is
//     published here first.
//   - DiskDir, the disk tier (/perm/spool): a segment is copied here only
//     when the consumer has not taken it within SpillAge, when the RAM
//     tier is over RAMQuota, or when the producer closes. A consumer that
//     keeps up therefore causes no flash writes at all.
//
// Each tier has a quarantine/ directory for damaged segments. The disk
// tier (or the RAM tier without one) holds loss.json, the loss ledger, and
// seq, the sequence reservation.
//
// # Guarantees
//
//   - Publication is atomic: temp file, fsync, rename (and a directory
//     fsync on the disk tier). A segment file is complete or absent.
//   - Sequence numbers strictly increase across restarts of either
//     process (not densely: a restart skips ahead). The producer reserves
//     blocks of numbers in a durable file, so numbers are not reused even
//     when the consumer has emptied the spool; without a disk tier the
//     reservation lives in tmpfs and restarts after a reboot.
//   - Durability: a segment is safe from a producer kill -9 once sealed
//     (at most SegmentAge of records, held in the producer's memory, is
//     lost), and from a power cut once it reaches the disk tier: a power
//     cut loses at most SegmentAge + SpillAge (4 s by default) plus the
//     spill period. Close seals and moves the RAM tier to disk.
//   - Delivery is at-least-once, in sequence order. Next hands out a
//     verified segment under a shared flock; Ack deletes it from both
//     tiers. A consumer that crashes before Ack gets the segment again
//     after restart, and a power cut right after Ack may resurrect it
//     once: duplicates carry the same Seq, so a downstream that remembers
//     the highest Seq it accepted per sensor can discard them.
//   - Nothing is lost silently. At a quota the oldest segments not held by
//     the consumer are deleted first; damaged segments (bad length,
//     checksum or framing) are moved to quarantine, never delivered; temp
//     files of a crashed writer are removed at producer start-up; records
//     the producer could not spool are rejected. Each is counted
//     (segments, records, bytes) in the durable Ledger, written under an
//     flock by either process; the consumer reads it with Loss and
//     reports it upstream. The ledger is cumulative.
//
// # Ownership
//
// The producer owns the current segment, the sequence, spilling and
// quotas; it never deletes or moves a segment the consumer holds (flock).
// The consumer owns the segments from Next until Ack or Release; Ack is
// the only way a delivered segment leaves the spool. One producer and
// one consumer per spool, enforced with lock files.
package spool

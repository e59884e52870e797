// Package timesync is the box's time daemon (timed): it asks NTP servers for the time (an SNTP
// client, RFC 5905 client mode), steps or slews the kernel's clock, and tells the kernel the clock
// is synchronised, with its error bound. The kernel then grows that bound by itself between
// updates (500 ppm) and flags the clock unsynchronised when it passes 16 s, so the status page
// reads the truth from adjtimex alone. gokrazy's ntp program sets the clock with settimeofday and
// leaves the kernel believing it unsynchronised; this replaces it.
//
// Servers come from netconfd's ntp.json (DHCP or the box configuration), else from -servers.
package timesync

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"
)

// Sample is one server's answer.
type Sample struct {
	Server  string
	Offset  time.Duration // add to the local clock to get the server's
	Delay   time.Duration // round trip, less the server's own processing
	Stratum uint8
	// RootDelay and RootDispersion are the server's own distance from its reference: part of
	// the error bound the kernel is told.
	RootDelay, RootDispersion time.Duration
}

// ntpEpoch is 1900-01-01, where NTP timestamps count from.
var ntpEpoch = time.Date(1900, 1, 1, 0, 0, 0, 0, time.UTC)

func fromNTP(v uint64) time.Time {
	sec, frac := v>>32, v&0xffffffff
	return ntpEpoch.Add(time.Duration(sec)*time.Second + time.Duration((frac*1e9)>>32))
}

func shortDur(v uint32) time.Duration { // NTP short format: 16.16 seconds
	return time.Duration((uint64(v) * 1e9) >> 16)
}

// ErrKissOfDeath is a server telling the client to go away (stratum 0): not asked again this
// round.
var ErrKissOfDeath = errors.New("kiss-o'-death")

// Query asks server (host:port) once. now is the local clock (a seam for tests). The request's
// transmit timestamp is a random cookie, not the local time: the box's clock is not told to
// anyone on the path, and an answer must echo the cookie to count (RFC 5905 §8, as RFC 9109
// advises for clients).
func Query(ctx context.Context, server string, now func() time.Time) (Sample, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", server)
	if err != nil {
		return Sample{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var req [48]byte
	req[0] = 0<<6 | 4<<3 | 3 // no leap warning, version 4, client
	if _, err := rand.Read(req[40:48]); err != nil {
		return Sample{}, err
	}
	t1 := now()
	if _, err := c.Write(req[:]); err != nil {
		return Sample{}, err
	}
	buf := make([]byte, 512)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return Sample{}, err
		}
		t4 := now()
		resp := buf[:n]
		if n < 48 || string(resp[24:32]) != string(req[40:48]) {
			continue // not the answer to this request (late, forged or garbled): keep waiting
		}
		return parse(server, resp, t1, t4)
	}
}

// parse reads an answer whose origin timestamp matched; t1 and t4 are the local send and receive
// times.
func parse(server string, b []byte, t1, t4 time.Time) (Sample, error) {
	leap, mode, stratum := b[0]>>6, b[0]&7, b[1]
	switch {
	case mode != 4:
		return Sample{}, fmt.Errorf("%s: answer in mode %d, not a server's", server, mode)
	case stratum == 0:
		return Sample{}, fmt.Errorf("%s: %w (%q)", server, ErrKissOfDeath, b[12:16])
	case stratum > 15:
		return Sample{}, fmt.Errorf("%s: stratum %d: the server is not synchronised", server, stratum)
	case leap == 3:
		return Sample{}, fmt.Errorf("%s: the server says its clock is not synchronised", server)
	}
	t2 := fromNTP(binary.BigEndian.Uint64(b[32:40])) // server received
	t3 := fromNTP(binary.BigEndian.Uint64(b[40:48])) // server sent
	if binary.BigEndian.Uint64(b[40:48]) == 0 || t3.Before(t2) {
		return Sample{}, fmt.Errorf("%s: answer with impossible timestamps", server)
	}
	s := Sample{
		Server:         server,
		Offset:         (t2.Sub(t1) + t3.Sub(t4)) / 2,
		Delay:          t4.Sub(t1) - t3.Sub(t2),
		Stratum:        stratum,
		RootDelay:      shortDur(binary.BigEndian.Uint32(b[4:8])),
		RootDispersion: shortDur(binary.BigEndian.Uint32(b[8:12])),
	}
	if s.Delay < 0 {
		s.Delay = 0 // the server's processing time exceeded our measured round trip: clock noise
	}
	return s, nil
}

// ErrorBound is what the kernel is told the clock's maximum error is after setting it from s:
// half the round trip (the answer may have spent all of it on either leg), the server's distance
// from its reference, and a millisecond for the setting itself.
func (s Sample) ErrorBound() time.Duration {
	return s.Delay/2 + s.RootDelay/2 + s.RootDispersion + time.Millisecond
}

package app

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/sie-europe/dnssensor/internal/testenv"
)

// The fixtures under sensor/testdata/real were made by ci/make-fixtures: a real unbound recursing
// against real nsd and knot servers in network namespaces, captured with tcpdump. Their ground truth
// (NAME.pairs.tsv) is tshark's own pairing (dns.response_to), made by ci/tshark-pairs.
const (
	realResolvers = "198.51.100.2,2001:db8:1::2"
	// The resolver's client-facing addresses: listing them too must still never yield a record
	// of client traffic, because clients initiate those transactions.
	realClientSide = "10.53.0.1,fd53::1"
)

type txKey struct {
	proto, qip, qport, rip, rport, id, qname, qtype string
}

type tx struct {
	kind  string // answered, unanswered, unsolicited
	rcode string
}

func readPairs(t *testing.T, path string) map[txKey][]tx {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[txKey][]tx{}
	for _, l := range strings.Split(string(data), "\n") {
		if strings.TrimSpace(l) == "" {
			continue
		}
		f := strings.Split(l, "\t")
		if len(f) == 9 {
			f = append(f, "") // unanswered: no rcode
		}
		if len(f) < 10 {
			t.Fatalf("%s: bad line %q", path, l)
		}
		k := txKey{f[1], f[2], f[3], f[4], f[5], f[6], strings.ToLower(f[7]), f[8]}
		out[k] = append(out[k], tx{f[0], f[9]})
	}
	return out
}

var rcodeNum = map[string]string{"NOERROR": "0", "FORMERR": "1", "SERVFAIL": "2", "NXDOMAIN": "3", "NOTIMP": "4", "REFUSED": "5"}
var qtypeNum = map[string]string{"A": "1", "NS": "2", "CNAME": "5", "SOA": "6", "PTR": "12", "MX": "15", "TXT": "16",
	"AAAA": "28", "SRV": "33", "DS": "43", "RRSIG": "46", "NSEC": "47", "DNSKEY": "48", "NSEC3": "50", "ANY": "255", "HTTPS": "65", "SVCB": "64"}

func sensorPairs(t *testing.T, recs []map[string]any) map[txKey][]tx {
	out := map[txKey][]tx{}
	for _, r := range recs {
		m := r["message"].(map[string]any)
		proto := strings.ToLower(fmt.Sprint(m["proto"]))
		qtype := fmt.Sprint(m["qtype"])
		if n, ok := qtypeNum[qtype]; ok {
			qtype = n
		} else {
			qtype = strings.TrimPrefix(qtype, "TYPE")
		}
		num := func(k string) string { return strconv.FormatFloat(m[k].(float64), 'f', 0, 64) }
		k := txKey{proto, fmt.Sprint(m["query_ip"]), num("query_port"), fmt.Sprint(m["response_ip"]), num("response_port"),
			num("id"), strings.ToLower(fmt.Sprint(m["qname"])), qtype}
		var x tx
		switch m["type"] {
		case "UDP_QUERY_RESPONSE":
			x = tx{"answered", rcodeNum[fmt.Sprint(m["rcode"])]}
		case "UDP_UNANSWERED_QUERY", "ICMP":
			// An ICMP error is no DNS response: tshark leaves the query unanswered.
			k.proto = "udp"
			x = tx{"unanswered", ""}
		case "UDP_UNSOLICITED_RESPONSE":
			x = tx{"unsolicited", rcodeNum[fmt.Sprint(m["rcode"])]}
		case "TCP":
			if len(m["response_packet"].([]any)) == 0 {
				x = tx{"unanswered", ""}
			} else if len(m["query_packet"].([]any)) == 0 {
				x = tx{"unsolicited", rcodeNum[fmt.Sprint(m["rcode"])]}
			} else {
				x = tx{"answered", rcodeNum[fmt.Sprint(m["rcode"])]}
			}
		default:
			t.Errorf("unexpected record type %v", m["type"])
		}
		out[k] = append(out[k], x)
	}
	return out
}

// TestRealTrafficAgreesWithTshark replays every real capture through the sensor and compares its
// transactions with tshark's pairing on 5-tuple, id, qname, qtype and rcode.
func TestRealTrafficAgreesWithTshark(t *testing.T) {
	pcaps, _ := filepath.Glob("../../testdata/real/*.pcap")
	if len(pcaps) == 0 {
		testenv.Need(t, false, "no real-traffic fixtures in sensor/testdata/real (make them with ci/make-fixtures)")
	}
	var total, agree, refused int
	for _, p := range pcaps {
		name := strings.TrimSuffix(filepath.Base(p), ".pcap")
		tsv := strings.TrimSuffix(p, ".pcap") + ".pairs.tsv"
		if _, err := os.Stat(tsv); err != nil {
			t.Errorf("%s: no ground truth %s", name, tsv)
			continue
		}
		t.Run(name, func(t *testing.T) {
			_, js := runSensor(t, "-r", p, "-resolver", realResolvers+","+realClientSide, "-rd", "any")
			got := sensorPairs(t, readLines(t, js))
			// Sharded over several pipelines, pairing must not change.
			_, js3 := runSensor(t, "-r", p, "-resolver", realResolvers+","+realClientSide, "-rd", "any", "-workers", "3")
			if got3 := sensorPairs(t, readLines(t, js3)); !reflect.DeepEqual(normalize(got), normalize(got3)) {
				t.Errorf("-workers 3 pairs differently from one pipeline")
			}
			want := readPairs(t, tsv)
			if strings.HasPrefix(name, "client") {
				if len(got) != 0 {
					t.Errorf("client traffic produced %d transactions", len(got))
				}
				return
			}
			for k := range got {
				for _, a := range []string{k.qip, k.rip} {
					if isClientSide(a) {
						t.Errorf("record with a client-side address %s: %v", a, k)
					}
				}
			}
			var missing, extra []string
			for k, ws := range want {
				if isClientSide(k.qip) {
					// Client↔resolver transactions tshark sees must never become records.
					if len(got[k]) != 0 {
						t.Errorf("client transaction recorded: %v", k)
					}
					refused += len(ws)
					continue
				}
				gs := append([]tx(nil), got[k]...)
				for _, w := range ws {
					total++
					found := -1
					for i, g := range gs {
						if g == w {
							found = i
							break
						}
					}
					if found < 0 {
						missing = append(missing, fmt.Sprintf("%v %v (sensor: %v)", k, w, got[k]))
						continue
					}
					agree++
					gs = append(gs[:found], gs[found+1:]...)
				}
			}
			for k, gs := range got {
				if len(want[k]) == 0 {
					for _, g := range gs {
						extra = append(extra, fmt.Sprintf("%v %v", k, g))
					}
				}
			}
			sort.Strings(missing)
			sort.Strings(extra)
			for _, m := range missing {
				t.Errorf("tshark transaction not in the sensor's records: %s", m)
			}
			for _, e := range extra {
				t.Errorf("sensor record tshark does not have: %s", e)
			}
		})
	}
	if total > 0 {
		t.Logf("agreement with tshark: %d of %d resolver transactions (%.3f%%); %d client transactions refused",
			agree, total, 100*float64(agree)/float64(total), refused)
	}
}

// normalize sorts each key's transactions, since shards emit in their own order.
func normalize(m map[txKey][]tx) map[txKey][]tx {
	out := map[txKey][]tx{}
	for k, v := range m {
		v = append([]tx(nil), v...)
		sort.Slice(v, func(i, j int) bool { return v[i].kind+v[i].rcode < v[j].kind+v[j].rcode })
		out[k] = v
	}
	return out
}

func isClientSide(a string) bool {
	return strings.HasPrefix(a, "10.53.0.") || strings.HasPrefix(a, "fd53:")
}

// TestRealTrafficPrivacy runs every real capture with -zero-resolver and checks, on the bytes that
// would leave the box, that neither the resolver's upstream addresses nor any client-side address
// nor any ECS client subnet survives.
func TestRealTrafficPrivacy(t *testing.T) {
	pcaps, _ := filepath.Glob("../../testdata/real/*.pcap")
	if len(pcaps) == 0 {
		testenv.Need(t, false, "no real-traffic fixtures in sensor/testdata/real (make them with ci/make-fixtures)")
	}
	secrets := map[string][]byte{
		"resolver v4":       {198, 51, 100, 2},
		"resolver v6":       {0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
		"client v4":         {10, 53, 0, 2},
		"client v6":         {0xfd, 0x53, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2},
		"ECS v6 subnet /56": {0xfd, 0x53, 0, 0, 0, 0, 0},
	}
	for _, p := range pcaps {
		name := strings.TrimSuffix(filepath.Base(p), ".pcap")
		nm, js := runSensor(t, "-r", p, "-resolver", realResolvers+","+realClientSide, "-rd", "any", "-zero-resolver")
		for what, b := range secrets {
			if bytes.Contains(nm, b) {
				t.Errorf("%s: %s (% x) found in the NMSG output", name, what, b)
			}
		}
		for _, r := range readLines(t, js) {
			m := r["message"].(map[string]any)
			if ip := fmt.Sprint(m["query_ip"]); ip != "0.0.0.0" && ip != "::" {
				t.Errorf("%s: query_ip %s not zeroed", name, ip)
			}
		}
	}
	// ecs.pcap: every ECS option the resolver sent or an authority echoed is scrubbed, and counted.
	o, err := ParseFlags([]string{"-r", "../../testdata/real/ecs.pcap", "-resolver", realResolvers, "-rd", "any", "-J", os.DevNull}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if err := Run(context.Background(), o, io.Discard, &stderr); err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`ecs_scrubbed=([1-9][0-9]+|[6-9])\b`).MatchString(stderr.String()) {
		t.Errorf("ecs.pcap: expected at least 6 ECS options scrubbed: %s", stderr.String())
	}
}

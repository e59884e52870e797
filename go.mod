module github.com/sie-europe/dnssensor

go 1.26.8

require (
	github.com/farsightsec/go-nmsg v0.2.0 // indirect
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/gopacket/gopacket v1.7.7 // indirect
	github.com/miekg/dns v1.1.73 // indirect
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	google.golang.org/protobuf v1.25.0 // indirect
)

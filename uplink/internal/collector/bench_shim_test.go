package collector

import "github.com/nats-io/nats.go/jetstream"

// benchConsumerConfig is the consumer configuration the stream consumers use.
func benchConsumerConfig(durable, desc string) jetstream.ConsumerConfig {
	return streamConsumerConfig(durable, desc)
}

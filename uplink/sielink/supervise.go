package sielink

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"time"
)

// State is where a Client is in its connection life cycle.
type State int

const (
	StateConnecting State = iota // dialing or in the handshake
	StateUp                      // a connection is up
	StateBackoff                 // waiting before the next attempt
	StateStopped                 // Run has returned
)

var stateNames = [...]string{"connecting", "up", "backing off", "stopped"}

func (s State) String() string { return stateNames[s] }

// MarshalText makes State readable in JSON status output.
func (s State) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Status is a Client's state for a supervisor's status page.
type Status struct {
	State     State     `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error,omitempty"`
	// PeerHeartbeat is what the current peer announced (0 when down).
	PeerHeartbeat time.Duration `json:"peer_heartbeat_ns"`
	Stats         Stats         `json:"stats"`
}

// Client keeps one connection to a sielink server up: it dials, and
// after every failure or drop waits a jittered, exponentially growing
// time, never above MaxBackoff, before dialling again. It does not queue or resend data: a
// supervisor takes the current connection with Conn, sends on it, and
// resends what the connection did not confirm (Conn.Sync) once it is
// gone, so that the data's owner (the spool) stays the only buffer.
type Client struct {
	cfg Config
	cnt counters

	mu      sync.Mutex
	state   State
	since   time.Time
	lastErr error
	conn    *Conn
	changed chan struct{} // closed and replaced on every state change

	jitter func() float64 // in [0,1); a seam for tests
}

// NewClient checks cfg, including the API key file's permissions, and
// returns a Client; Run connects it.
func NewClient(cfg Config) (*Client, error) {
	c, _, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if _, err := ReadAPIKey(c.APIKeyFile); err != nil {
		return nil, err
	}
	return &Client{
		cfg:     cfg,
		state:   StateConnecting,
		since:   time.Now(),
		changed: make(chan struct{}),
		jitter:  rand.Float64,
	}, nil
}

func (c *Client) set(s State, conn *Conn, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.state, c.conn, c.since = s, conn, time.Now()
	if err != nil {
		c.lastErr = err
	}
	close(c.changed)
	c.changed = make(chan struct{})
}

// Run keeps the client connected until ctx is done, then closes the
// connection cleanly (Sync, Finished) and returns nil. Dial errors,
// drops, Shutdowns and FatalErrors all lead to a back-off and a new
// attempt; their last one is in Status.
func (c *Client) Run(ctx context.Context) error {
	defer c.set(StateStopped, nil, nil)
	cfg, _, _ := c.cfg.withDefaults()
	backoff := cfg.MinBackoff
	for {
		c.set(StateConnecting, nil, nil)
		// Run closes the connection itself, cleanly, when ctx ends.
		conn, err := dial(ctx, context.Background(), c.cfg, &c.cnt)
		if err == nil {
			if c.cnt.connects.Load() > 1 {
				c.cnt.reconnects.Add(1)
			}
			c.set(StateUp, conn, nil)
			start := time.Now()
			select {
			case <-conn.Done():
			case <-ctx.Done():
				conn.Close()
				return nil
			}
			err = conn.Err()
			// A connection that stayed up for a while proves the
			// path works; start the back-off from the bottom again.
			if time.Since(start) > cfg.MaxBackoff {
				backoff = cfg.MinBackoff
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := backoff
		var alert *Alert
		if errors.As(err, &alert) || errors.Is(err, ErrRejected) {
			wait = max(wait, cfg.FatalBackoff)
		}
		wait = jittered(wait, c.jitter())
		c.set(StateBackoff, nil, err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, cfg.MaxBackoff)
	}
}

// jittered spreads clients that failed together over [d/2, d]: only
// downwards, so that MaxBackoff stays a bound. j is in [0,1).
func jittered(d time.Duration, j float64) time.Duration {
	return time.Duration(float64(d) * (1 - j/2))
}

// Conn waits until a connection is up and returns it. Send and Sync on
// it; when it fails, call Conn again for the next one.
func (c *Client) Conn(ctx context.Context) (*Conn, error) {
	for {
		c.mu.Lock()
		conn, state, ch := c.conn, c.state, c.changed
		c.mu.Unlock()
		if conn != nil && conn.Err() == nil {
			return conn, nil
		}
		if state == StateStopped {
			return nil, ErrClosed
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ch:
		}
	}
}

// Status returns the client's state and counters.
func (c *Client) Status() Status {
	c.mu.Lock()
	st := Status{State: c.state, Since: c.since}
	if c.lastErr != nil {
		st.LastError = c.lastErr.Error()
	}
	if c.conn != nil {
		st.PeerHeartbeat = c.conn.PeerHeartbeat()
	}
	c.mu.Unlock()
	st.Stats = c.cnt.snapshot()
	return st
}

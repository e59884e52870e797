package status

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/sie-europe/dnssensor/internal/health"
)

//go:embed assets
var assets embed.FS

var pageTmpl = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return ""
		}
		return now.Sub(t).Round(time.Second).String() + " ago"
	},
}).Funcs(viewFuncs).ParseFS(assets, "assets/*.html"))

// Server is the status page.
type Server struct {
	Daemons []Daemon
	// Known are the daemons the page reports as "not configured" when they are not in Daemons.
	Known []string
	// Password is the device password (gokrazy's); any user name is accepted, as gokrazy's page
	// does.
	Password []byte
	// Timeout bounds the questions to the daemons (default 2s): a hung daemon must not hang the
	// page.
	Timeout time.Duration
	Now     func() time.Time
	Logf    func(format string, args ...any)
	// Limiter refuses logins from an address after repeated failures; nil: NewLimiter(s.Now).
	Limiter *Limiter
	// Services tells daemons stopped on purpose (not configured) from failing ones; nil: every
	// daemon whose socket does not answer is "not running".
	Services *GokrazyServices
	// Config is the configuration page (config.go); nil: none.
	Config *Config
	// Sampler, Ident and LogLines add the counters, identity and log sections (view.go); nil
	// leaves a section out.
	Sampler  *Sampler
	Ident    *IdentitySource
	LogLines int
	// Clock reads the kernel's clock state for the "clock synchronised" link (KernelClock); nil:
	// unknown.
	Clock func() (ClockState, error)
	// UpdatedSocket is updated's health socket: the page's update section and its buttons
	// (updates.go); "" leaves them out.
	UpdatedSocket string

	once    sync.Once
	xsrfKey []byte
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) logf(format string, args ...any) {
	if s.Logf != nil {
		s.Logf(format, args...)
		return
	}
	log.Printf(format, args...)
}

func (s *Server) init() {
	s.once.Do(func() {
		s.xsrfKey = make([]byte, 32)
		rand.Read(s.xsrfKey)
		if s.Limiter == nil {
			s.Limiter = NewLimiter(s.now)
		}
	})
}

// Handler serves the page (GET /, HTML or JSON by Accept), its stylesheet and the actions
// (POST, with the XSRF token), all behind the device password.
func (s *Server) Handler() http.Handler {
	s.init()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.servePage)
	mux.HandleFunc("GET /status.json", s.servePage)
	mux.Handle("GET /assets/", http.FileServerFS(assets))
	mux.Handle("POST /refresh", s.xsrf(http.HandlerFunc(s.refresh)))
	mux.Handle("POST /updates/now", s.xsrf(s.updateAction("/update-now")))
	mux.Handle("POST /updates/pause", s.xsrf(s.updateAction("/pause")))
	mux.Handle("POST /updates/resume", s.xsrf(s.updateAction("/resume")))
	s.configRoutes(mux)
	return s.auth(securityHeaders(mux))
}

func securityHeaders(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Frame-Options", "DENY")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

// auth asks for the device password by HTTP basic authentication. An address with too many
// failures is refused (429) before its password is even compared, so guessing costs time.
func (s *Server) auth(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		src := sourceKey(r.RemoteAddr)
		if wait := s.Limiter.Blocked(src); wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int((wait+time.Second-1)/time.Second)))
			http.Error(w, "too many failed logins from your address; try again later", http.StatusTooManyRequests)
			return
		}
		_, pw, ok := r.BasicAuth()
		if !ok || len(s.Password) == 0 || subtle.ConstantTimeCompare([]byte(pw), s.Password) != 1 {
			if ok {
				// The attempted password is never logged: a typo of the real one is nearly it.
				s.Limiter.Fail(src)
				s.logf("statusd: failed login from %s", src)
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="dnssensor", charset="UTF-8"`)
			http.Error(w, "the device password is required", http.StatusUnauthorized)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// sourceKey is the address a login failure is counted against: the host, and for IPv6 its /64,
// since one host can take any address of its prefix.
func sourceKey(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		host = remote
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.WithZone("").Prefix(64)
		return p.String()
	}
	return a.String()
}

// xsrfToken is the token every form carries. Basic authentication is sent by the browser on a
// cross-site POST too, so the password alone does not show that the page itself made the request;
// the token does, as another site cannot read it.
func (s *Server) xsrfToken() string {
	m := hmac.New(sha256.New, s.xsrfKey)
	m.Write([]byte("statusd xsrf v1"))
	return hex.EncodeToString(m.Sum(nil))
}

func (s *Server) xsrf(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		tok := r.PostFormValue("xsrftoken")
		if tok == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.xsrfToken())) != 1 {
			http.Error(w, "missing or wrong XSRF token: reload the page and try again", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// refresh asks every daemon again: the page is evaluated on every request anyway, so this is a
// harmless action that proves the form path (token, POST-only, redirect after POST).
func (s *Server) refresh(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// Page asks the daemons and composes the page.
func (s *Server) Page(ctx context.Context) *Page {
	to := s.Timeout
	if to == 0 {
		to = 2 * time.Second
	}
	// updated is asked beside the others, with its own time limit: asked after them, it got what
	// they left of one, and a loaded box showed it "not running" while it answered.
	var updates chan *Updates
	if s.UpdatedSocket != "" {
		updates = make(chan *Updates, 1)
		// The parent is passed, not captured: ctx is reassigned below while this runs.
		go func(parent context.Context) {
			uctx, cancel := context.WithTimeout(parent, to)
			defer cancel()
			updates <- readUpdates(uctx, s.UpdatedSocket)
		}(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, to)
	defer cancel()
	ds := Collect(ctx, s.Daemons, s.Known)
	stopped := s.Services.Stopped(ctx)
	markStopped(ds, stopped)
	p := compose(s.now(), ds, s.Clock)
	s.addViews(ctx, p)
	if updates != nil {
		p.Updates = <-updates
		markUpdatesStopped(p.Updates, stopped)
	}
	return p
}

// servePage renders into a buffer before writing, so a template error never leaves half a page
// behind a 200.
func (s *Server) servePage(w http.ResponseWriter, r *http.Request) {
	p := s.Page(r.Context())
	var buf bytes.Buffer
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Add("Vary", "Accept")
	if health.WantsJSON(r, "/status.json") {
		enc := json.NewEncoder(&buf)
		enc.SetIndent("", "  ")
		if err := enc.Encode(p); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
	} else {
		if err := pageTmpl.Execute(&buf, struct {
			*Page
			XSRF string
		}{p, s.xsrfToken()}); err != nil {
			s.logf("statusd: rendering the page: %v", err)
			http.Error(w, "rendering the page failed; see statusd's log", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
	}
	w.Write(buf.Bytes())
}

// Limiter counts failed logins per source and refuses a source that failed Max times within
// Window until Window has passed since its last failure.
type Limiter struct {
	Max    int
	Window time.Duration
	// Cap bounds the sources remembered; when full, the stalest is forgotten.
	Cap int
	now func() time.Time

	mu  sync.Mutex
	src map[string]*failures
}

type failures struct {
	n    int
	last time.Time
}

// NewLimiter allows 5 failures per source per 5 minutes.
func NewLimiter(now func() time.Time) *Limiter {
	return &Limiter{Max: 5, Window: 5 * time.Minute, Cap: 4096, now: now, src: map[string]*failures{}}
}

// Blocked returns how long src must still wait, or 0.
func (l *Limiter) Blocked(src string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.src[src]
	if f == nil {
		return 0
	}
	left := l.Window - l.now().Sub(f.last)
	if left <= 0 {
		delete(l.src, src)
		return 0
	}
	if f.n < l.Max {
		return 0
	}
	return left
}

// Fail counts one failed login of src.
func (l *Limiter) Fail(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	f := l.src[src]
	if f == nil {
		if len(l.src) >= l.Cap {
			l.evict(now)
		}
		f = &failures{}
		l.src[src] = f
	} else if now.Sub(f.last) >= l.Window {
		f.n = 0
	}
	f.n++
	f.last = now
}

func (l *Limiter) evict(now time.Time) {
	var stalest string
	var at time.Time
	for k, f := range l.src {
		if now.Sub(f.last) >= l.Window {
			delete(l.src, k)
			continue
		}
		if stalest == "" || f.last.Before(at) {
			stalest, at = k, f.last
		}
	}
	if len(l.src) >= l.Cap {
		delete(l.src, stalest)
	}
}

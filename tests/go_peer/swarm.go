// The swarm mode: many agents in one process, a load generator for bench/agents.py.
//
//	go-peer swarm -server 127.0.0.1:4242 -root-ca ca.pem -count 5000 -ramp 500 \
//	    -status swarm.json -prefix bench-
//
// Each agent is its own QUIC connection on its own UDP socket (8-byte connection IDs,
// see dial), with the agent's keep-alive (10 s) and idle timeout (30 s), a noauth id
// prefix+index, and the reverse-http agent's reconnect policy: exponential backoff
// from 0.5 s doubling to 30 s, jittered to 50-100 % of the step, reset once a
// connection lived 10 s. With -source-ips they bind to distinct loopback
// addresses, as a fleet's agents come from distinct hosts (the proxy limits
// handshakes in progress per source address). It serves
// tunnel streams as the single agent does (CONNECT, dial, relay). Every 250 ms the
// swarm's state goes to the -status JSON file (written to a temporary file, renamed);
// SIGUSR1 takes a mark (the storm counts reconnects after it), SIGTERM ends the swarm.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/signal"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"
)

// swarmAgent is one agent's state; the reporter reads it while the agent runs.
type swarmAgent struct {
	id        string
	connects  atomic.Int64 // authentications so far
	connected atomic.Bool  // authenticated on the current connection
	quicOpen  atomic.Bool  // a QUIC connection is up (authenticated or not)
	authAt    atomic.Int64 // unix nanoseconds of the last authentication
	mark      int64        // connects when the last mark was taken (reporter only)
	local     *net.UDPAddr // source address to bind, nil: the kernel's choice
}

// tally counts error kinds from many goroutines.
type tally struct {
	mu     sync.Mutex
	counts map[string]int
}

func (t *tally) add(kind string) {
	t.mu.Lock()
	t.counts[kind]++
	t.mu.Unlock()
}

// top returns the n most frequent kinds.
func (t *tally) top(n int) map[string]int {
	t.mu.Lock()
	defer t.mu.Unlock()
	kinds := make([]string, 0, len(t.counts))
	for k := range t.counts {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return t.counts[kinds[i]] > t.counts[kinds[j]] })
	out := map[string]int{}
	for _, k := range kinds[:min(n, len(kinds))] {
		out[k] = t.counts[k]
	}
	return out
}

// errorKind names an error by its QUIC class, so a tally stays a handful of rows.
func errorKind(err error) string {
	var (
		app       *quic.ApplicationError
		transport *quic.TransportError
		idle      *quic.IdleTimeoutError
		handshake *quic.HandshakeTimeoutError
		reset     *quic.StatelessResetError
		netErr    net.Error
	)
	switch {
	case errors.As(err, &app):
		return fmt.Sprintf("application close %d %q", uint64(app.ErrorCode), app.ErrorMessage)
	case errors.As(err, &idle):
		return "idle timeout"
	case errors.As(err, &handshake):
		return "handshake timeout"
	case errors.As(err, &reset):
		return "stateless reset"
	case errors.As(err, &transport):
		return fmt.Sprintf("transport error %s", transport.ErrorCode)
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	}
	msg := err.Error()
	return msg[:min(len(msg), 120)]
}

type swarm struct {
	server       string
	serverAddr   *net.UDPAddr
	connIDLen    int
	tlsConf      *tls.Config
	initial      time.Duration
	maximum      time.Duration
	healthyAfter time.Duration
	dialTimeout  time.Duration

	started    atomic.Int64
	dialErrors tally // a connection attempt that did not authenticate
	closes     tally // how authenticated connections ended
}

func (s *swarm) backoff(attempt int) time.Duration {
	step := s.initial << min(attempt, 30)
	if step > s.maximum || step <= 0 {
		step = s.maximum
	}
	return time.Duration(float64(step) * (0.5 + 0.5*rand.Float64()))
}

// run keeps one agent connected until ctx ends.
func (s *swarm) run(ctx context.Context, a *swarmAgent) {
	attempt := 0
	for ctx.Err() == nil {
		began := time.Now()
		s.connectOnce(ctx, a)
		if time.Since(began) >= s.healthyAfter {
			attempt = 0
		}
		select {
		case <-ctx.Done():
		case <-time.After(s.backoff(attempt)):
		}
		attempt++
	}
}

// dial opens the agent's QUIC connection on a UDP socket of its own. quic.DialAddr
// uses zero-length connection IDs, and quic-go then hands every datagram, a stateless
// reset too, to the connection, which drops it: such an agent learns of a restarted
// proxy only at its idle timeout. With connection IDs (as our agent has) it notices
// the reset at its next packet.
func (s *swarm) dial(ctx context.Context, local *net.UDPAddr) (quic.Connection, error) {
	if s.connIDLen == 0 && local == nil {
		return quic.DialAddr(ctx, s.server, s.tlsConf, quicConfig())
	}
	udp, err := net.ListenUDP("udp", local)
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp, ConnectionIDLength: s.connIDLen}
	conn, err := tr.Dial(ctx, s.serverAddr, s.tlsConf, quicConfig())
	if err != nil {
		_ = tr.Close()
		_ = udp.Close()
		return nil, err
	}
	context.AfterFunc(conn.Context(), func() {
		_ = tr.Close()
		_ = udp.Close()
	})
	return conn, nil
}

func (s *swarm) connectOnce(ctx context.Context, a *swarmAgent) {
	conn, err := s.dial(ctx, a.local)
	if err != nil {
		if ctx.Err() == nil {
			s.dialErrors.add("dial: " + errorKind(err))
		}
		return
	}
	a.quicOpen.Store(true)
	defer a.quicOpen.Store(false)
	if err := authenticate(ctx, conn, a.id); err != nil {
		if ctx.Err() == nil {
			s.dialErrors.add("auth: " + errorKind(err))
		}
		_ = conn.CloseWithError(codeOK, "client connection closed")
		return
	}
	a.authAt.Store(time.Now().UnixNano())
	a.connects.Add(1)
	a.connected.Store(true)
	defer a.connected.Store(false)
	stop := context.AfterFunc(ctx, func() {
		_ = conn.CloseWithError(codeOK, "client connection closed")
	})
	defer stop()
	for {
		stream, err := conn.AcceptStream(context.Background())
		if err != nil {
			if ctx.Err() == nil {
				s.closes.add(errorKind(err))
			}
			return
		}
		go serveTunnel(stream, nil, s.dialTimeout)
	}
}

// swarmStatus is the JSON bench/agents.py reads (the same keys as its Python swarm).
type swarmStatus struct {
	Pid                  int            `json:"pid"`
	Generator            string         `json:"generator"`
	Started              int64          `json:"started"`
	Connected            int            `json:"connected"`
	QuicOpen             int            `json:"quic_open"`
	EverConnected        int            `json:"ever_connected"`
	ConnectsTotal        int64          `json:"connects_total"`
	Exited               int            `json:"exited"`
	Errors               map[string]int `json:"errors"`
	ConnectErrors        map[string]int `json:"connect_errors"`
	Disconnects          map[string]int `json:"disconnects"`
	MarkSeq              int            `json:"mark_seq"`
	ReconnectedSinceMark int            `json:"reconnected_since_mark"`
	EverSinceMark        int            `json:"ever_since_mark"`
	FirstSinceMark       *string        `json:"first_since_mark"`
	RampS                *float64       `json:"ramp_s"`
	CPUS                 float64        `json:"cpu_s"`
	UptimeS              float64        `json:"uptime_s"`
}

func processCPU() float64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

func writeStatus(path string, st *swarmStatus) error {
	data, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func runSwarm(args []string) error {
	fs := flag.NewFlagSet("swarm", flag.ExitOnError)
	server := fs.String("server", "127.0.0.1:4242", "proxy agent server address (UDP)")
	rootCA := fs.String("root-ca", "", "CA file for the proxy certificate (required)")
	count := fs.Int("count", 100, "agents to run")
	ramp := fs.Float64("ramp", 100, "agents started per second (0: all at once)")
	status := fs.String("status", "", "JSON status file, rewritten every 250 ms (required)")
	prefix := fs.String("prefix", "swarm-", "agent ids are prefix+index (noauth)")
	initial := fs.Duration("initial-backoff", 500*time.Millisecond, "first reconnect delay")
	maximum := fs.Duration("max-backoff", 30*time.Second, "largest reconnect delay")
	healthy := fs.Duration("healthy-after", 10*time.Second, "a connection this old resets the backoff")
	dialTimeout := fs.Duration("dial-timeout", 10*time.Second, "TCP dial timeout for tunnels")
	connIDLen := fs.Int("conn-id-len", 8, "agents' connection ID length, 4-20 (0: quic.DialAddr's none)")
	sources := fs.Int("source-ips", 0, "spread the agents over this many source addresses from 127.16.0.1 (0: the kernel's choice)")
	_ = fs.Parse(args)
	if *sources < 0 || *sources > 1<<20 {
		return fmt.Errorf("-source-ips must be 0 to %d, got %d", 1<<20, *sources)
	}
	if *connIDLen != 0 && (*connIDLen < 4 || *connIDLen > 20) {
		return fmt.Errorf("-conn-id-len must be 0 or 4 to 20, got %d", *connIDLen)
	}
	if *status == "" || *rootCA == "" {
		return errors.New("swarm needs -status and -root-ca")
	}
	if *count < 1 {
		return fmt.Errorf("-count must be at least 1, got %d", *count)
	}
	pool, err := readCertPool(*rootCA)
	if err != nil {
		return err
	}
	host, _, err := net.SplitHostPort(*server)
	if err != nil {
		return fmt.Errorf("-server %q: %w", *server, err)
	}
	serverAddr, err := net.ResolveUDPAddr("udp", *server)
	if err != nil {
		return fmt.Errorf("-server %q: %w", *server, err)
	}
	s := &swarm{
		server:       *server,
		serverAddr:   serverAddr,
		connIDLen:    *connIDLen,
		tlsConf:      &tls.Config{ServerName: host, RootCAs: pool, NextProtos: []string{alpn}},
		initial:      *initial,
		maximum:      *maximum,
		healthyAfter: *healthy,
		dialTimeout:  *dialTimeout,
		dialErrors:   tally{counts: map[string]int{}},
		closes:       tally{counts: map[string]int{}},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	agents := make([]*swarmAgent, *count)
	for i := range agents {
		agents[i] = &swarmAgent{id: fmt.Sprintf("%s%d", *prefix, i)}
		if *sources > 0 {
			n := 1 + i%*sources // 127.16.0.1 onwards; the loopback takes all of 127/8
			ip := net.IPv4(127, byte(16+n>>16), byte(n>>8), byte(n))
			agents[i].local = &net.UDPAddr{IP: ip}
		}
	}
	t0 := time.Now()
	var rampDone atomic.Int64 // nanoseconds after t0, 0 while ramping
	var wg sync.WaitGroup
	go func() {
		perTick, tick := 1, 10*time.Millisecond
		if *ramp > 0 {
			perTick = max(1, int(*ramp*tick.Seconds()+0.5))
		} else {
			perTick = len(agents)
		}
		next := time.Now()
		for i, a := range agents {
			if ctx.Err() != nil {
				return
			}
			wg.Add(1)
			go func(a *swarmAgent) { defer wg.Done(); s.run(ctx, a) }(a)
			s.started.Add(1)
			if (i+1)%perTick == 0 {
				next = next.Add(tick)
				time.Sleep(time.Until(next))
			}
		}
		rampDone.Store(int64(max(time.Since(t0), 1)))
	}()

	markSeq := 0
	report := func() error {
		st := &swarmStatus{
			Pid: os.Getpid(), Generator: "go", Started: s.started.Load(), MarkSeq: markSeq,
			Errors: map[string]int{}, ConnectErrors: s.dialErrors.top(5), Disconnects: s.closes.top(5),
			CPUS: processCPU(), UptimeS: time.Since(t0).Seconds(),
		}
		var first *swarmAgent
		for _, a := range agents[:st.Started] {
			n := a.connects.Load()
			up := a.connected.Load()
			st.ConnectsTotal += n
			if n > 0 {
				st.EverConnected++
			}
			if up {
				st.Connected++
			}
			if a.quicOpen.Load() {
				st.QuicOpen++
			}
			if markSeq > 0 && n > a.mark {
				st.EverSinceMark++
				if up {
					st.ReconnectedSinceMark++
					if first == nil || a.authAt.Load() < first.authAt.Load() {
						first = a
					}
				}
			}
		}
		if first != nil {
			st.FirstSinceMark = &first.id
		}
		if d := rampDone.Load(); d > 0 {
			secs := time.Duration(d).Seconds()
			st.RampS = &secs
		}
		return writeStatus(*status, st)
	}

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1)
	ticker := time.NewTicker(250 * time.Millisecond)
	defer ticker.Stop()
	logEvent("swarm-ready", "server", *server, "count", *count, "ramp", *ramp)
	for {
		select {
		case sig := <-sigs:
			if sig != syscall.SIGUSR1 {
				cancel()
				wg.Wait()
				err := report()
				logEvent("swarm-stopped")
				return err
			}
			// agents whose start is still to come have 0 connects: mark them at 0
			for _, a := range agents {
				a.mark = a.connects.Load()
			}
			markSeq++
		case <-ticker.C:
		}
		if err := report(); err != nil {
			return err
		}
	}
}

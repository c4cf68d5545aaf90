// Command go-peer is a small clean-room peer for interop tests of reverse-http.
//
// It was written from the project's wire protocol notes (shared/spec/protocol.md), not
// from the Go reference's source, with the QUIC and JWT libraries the reference uses
// (quic-go v0.46.0, golang-jwt v5.3.0) and the same QUIC settings: ALPN
// "reverse-http-proto", a keep-alive every 10 s, a 30 s idle timeout.
//
//	go-peer agent -server 127.0.0.1:4242 -root-ca ca.pem -agent-id 4711
//	go-peer agent -server 127.0.0.1:4242 -root-ca ca.pem -token-file agent.jwt
//	go-peer proxy -cert server.pem -key server-key.pem [-auth jwt -public-key pub.pem]
//	go-peer swarm -server 127.0.0.1:4242 -root-ca ca.pem -count 5000 -status s.json
//
// The agent makes one connection and exits when it ends (no reconnecting); the proxy
// runs until SIGTERM; the swarm (swarm.go) runs many reconnecting agents in one
// process for bench/agents.py. All write "event=NAME key=\"value\" ..." lines on
// stderr that tests wait for; the proxy's "event=ready" line names its addresses.
package main

import (
	"bufio"
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/quic-go/quic-go"
)

const (
	alpn            = "reverse-http-proto"
	keepAlivePeriod = 10 * time.Second
	idleTimeout     = 30 * time.Second
	authTimeout     = 3 * time.Second
	maxAuthMessage  = 1 << 20
	authenticated   = "authenticated"
	jwtLeeway       = 5 * time.Second

	codeOK          = 0
	codeEmptyID     = 400
	codeReplaced    = 409
	codeAuthFailure = 500
)

var errAuthRefused = errors.New("authentication refused")

func main() {
	log.SetFlags(log.Lmicroseconds)
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: go-peer agent|proxy|swarm [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "agent":
		err = runAgent(os.Args[2:])
	case "proxy":
		err = runProxy(os.Args[2:])
	case "swarm":
		err = runSwarm(os.Args[2:])
	default:
		err = fmt.Errorf("unknown mode %q (agent, proxy or swarm)", os.Args[1])
	}
	switch {
	case errors.Is(err, errAuthRefused):
		os.Exit(3)
	case err != nil:
		logEvent("fatal", "error", err.Error())
		os.Exit(1)
	}
}

// logEvent writes one machine-readable line: event=NAME key="value" ...
func logEvent(event string, kv ...any) {
	var b strings.Builder
	b.WriteString("event=" + event)
	for i := 0; i+1 < len(kv); i += 2 {
		fmt.Fprintf(&b, " %v=%s", kv[i], strconv.Quote(fmt.Sprint(kv[i+1])))
	}
	log.Print(b.String())
}

func quicConfig() *quic.Config {
	return &quic.Config{KeepAlivePeriod: keepAlivePeriod, MaxIdleTimeout: idleTimeout}
}

// closeEvent logs how a connection ended, with the application close code if any.
func closeEvent(event string, err error, kv ...any) {
	var app *quic.ApplicationError
	if errors.As(err, &app) {
		kv = append(kv, "code", uint64(app.ErrorCode), "remote", app.Remote, "reason", app.ErrorMessage)
	} else {
		kv = append(kv, "error", fmt.Sprint(err))
	}
	logEvent(event, kv...)
}

// ---- the authentication message: 4-byte big-endian length, then the payload ----

func writeMessage(w io.Writer, payload []byte) error {
	if len(payload) > maxAuthMessage {
		return fmt.Errorf("auth message of %d bytes exceeds %d", len(payload), maxAuthMessage)
	}
	frame := binary.BigEndian.AppendUint32(nil, uint32(len(payload)))
	_, err := w.Write(append(frame, payload...))
	return err
}

func readMessage(r io.Reader) ([]byte, error) {
	var head [4]byte
	if _, err := io.ReadFull(r, head[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(head[:])
	if n > maxAuthMessage {
		return nil, fmt.Errorf("auth message of %d bytes exceeds %d", n, maxAuthMessage)
	}
	payload := make([]byte, n)
	_, err := io.ReadFull(r, payload)
	return payload, err
}

// ---- relaying: copy both ways, half-close on EOF, abort both ends on an error ----

type end struct {
	r          io.Reader
	w          io.Writer
	closeWrite func() error
	abort      func()
}

func streamEnd(s quic.Stream, r io.Reader) end {
	return end{r: r, w: s, closeWrite: s.Close, abort: func() {
		s.CancelRead(0)
		s.CancelWrite(0)
	}}
}

func tcpEnd(c *net.TCPConn, r io.Reader) end {
	return end{r: r, w: c, closeWrite: c.CloseWrite, abort: func() {
		_ = c.SetLinger(0)
		_ = c.Close()
	}}
}

// pipe relays until both directions ended; it returns the bytes copied a->b and b->a.
func pipe(a, b end) (ab, ba int64) {
	type result struct {
		forward bool
		n       int64
		err     error
	}
	results := make(chan result, 2)
	half := func(dst, src end, forward bool) {
		n, err := io.Copy(dst.w, src.r)
		if err == nil {
			err = dst.closeWrite()
		}
		results <- result{forward, n, err}
	}
	go half(b, a, true)
	go half(a, b, false)
	for i := 0; i < 2; i++ {
		r := <-results
		if r.forward {
			ab = r.n
		} else {
			ba = r.n
		}
		if r.err != nil {
			a.abort()
			b.abort()
		}
	}
	return ab, ba
}

func writeResponse(w io.Writer, code int, status string, header http.Header) error {
	if header == nil {
		header = http.Header{}
	}
	resp := &http.Response{StatusCode: code, ProtoMajor: 1, ProtoMinor: 1, Header: header}
	if status != "" {
		resp.Status = fmt.Sprintf("%d %s", code, status)
	}
	return resp.Write(w)
}

func withDefaultPort(authority string) string {
	if _, port, err := net.SplitHostPort(authority); err == nil && port != "" {
		return authority
	}
	return net.JoinHostPort(strings.Trim(authority, "[]"), "80")
}

func readCertPool(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return pool, nil
}

// ---- agent ----

// allowList is a deliberately small destination allow-list: "host" (any port) or
// "host:port" entries, compared case-insensitively. Empty allows everything.
type allowList []string

func (l allowList) permits(authority string) bool {
	if len(l) == 0 {
		return true
	}
	host, port, _ := net.SplitHostPort(authority)
	for _, entry := range l {
		if h, p, err := net.SplitHostPort(entry); err == nil {
			if strings.EqualFold(h, host) && p == port {
				return true
			}
		} else if strings.EqualFold(strings.Trim(entry, "[]"), host) {
			return true
		}
	}
	return false
}

func runAgent(args []string) error {
	fs := flag.NewFlagSet("agent", flag.ExitOnError)
	server := fs.String("server", "127.0.0.1:4242", "proxy agent server address (UDP)")
	serverName := fs.String("server-name", "", "TLS server name (default: the host of -server)")
	rootCA := fs.String("root-ca", "", "CA file for the proxy certificate (default: system roots)")
	insecure := fs.Bool("insecure-skip-verify", false, "do not verify the proxy certificate")
	certFile := fs.String("cert", "", "client certificate (mutual TLS)")
	keyFile := fs.String("key", "", "client key (mutual TLS)")
	agentID := fs.String("agent-id", "", "noauth: the agent id, sent as the token (may be empty)")
	token := fs.String("token", "", "jwt: the token")
	tokenFile := fs.String("token-file", "", "jwt: file holding the token, sent as is (newline included)")
	allow := fs.String("allow", "", "comma-separated host or host:port destinations; empty allows all")
	dialTimeout := fs.Duration("dial-timeout", 10*time.Second, "TCP dial timeout for tunnels")
	_ = fs.Parse(args)

	secret := *agentID
	switch {
	case *tokenFile != "":
		data, err := os.ReadFile(*tokenFile)
		if err != nil {
			return err
		}
		secret = string(data)
	case *token != "":
		secret = *token
	}
	var allowed allowList
	for _, entry := range strings.Split(*allow, ",") {
		if entry = strings.TrimSpace(entry); entry != "" {
			allowed = append(allowed, entry)
		}
	}
	tlsConf := &tls.Config{ServerName: *serverName, InsecureSkipVerify: *insecure, NextProtos: []string{alpn}}
	if *rootCA != "" {
		pool, err := readCertPool(*rootCA)
		if err != nil {
			return err
		}
		tlsConf.RootCAs = pool
	}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			return err
		}
		tlsConf.Certificates = []tls.Certificate{cert}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	conn, err := quic.DialAddr(ctx, *server, tlsConf, quicConfig())
	if err != nil {
		return fmt.Errorf("dial %s: %w", *server, err)
	}
	logEvent("connected", "server", *server, "local", conn.LocalAddr())
	if err := authenticate(ctx, conn, secret); err != nil {
		closeEvent("auth-refused", err)
		_ = conn.CloseWithError(codeOK, "client connection closed")
		return errAuthRefused
	}
	logEvent("authenticated", "server", *server)
	go func() {
		<-ctx.Done()
		_ = conn.CloseWithError(codeOK, "client connection closed")
	}()
	for {
		stream, err := conn.AcceptStream(context.Background())
		if err != nil {
			closeEvent("closed", err)
			return nil
		}
		go serveTunnel(stream, allowed, *dialTimeout)
	}
}

func authenticate(ctx context.Context, conn quic.Connection, secret string) error {
	ctx, cancel := context.WithTimeout(ctx, authTimeout)
	defer cancel()
	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	defer stream.Close()
	_ = stream.SetDeadline(time.Now().Add(authTimeout))
	if err := writeMessage(stream, []byte(secret)); err != nil {
		return err
	}
	answer, err := readMessage(stream)
	if err != nil {
		return err
	}
	if string(answer) != authenticated {
		return fmt.Errorf("unexpected auth answer %q", answer)
	}
	return nil
}

// serveTunnel answers one CONNECT from the proxy and relays it to a TCP destination.
func serveTunnel(stream quic.Stream, allowed allowList, dialTimeout time.Duration) {
	id := stream.StreamID()
	reader := bufio.NewReader(stream)
	req, err := http.ReadRequest(reader)
	if err != nil {
		logEvent("tunnel-bad-request", "stream", id, "error", err)
		stream.CancelRead(0)
		stream.CancelWrite(0)
		return
	}
	defer stream.Close()
	target := withDefaultPort(req.Host)
	switch {
	case req.Method != http.MethodConnect:
		logEvent("tunnel-refused", "stream", id, "method", req.Method, "status", 400)
		_ = writeResponse(stream, http.StatusBadRequest, "", nil)
		return
	case !allowed.permits(target):
		logEvent("tunnel-refused", "stream", id, "target", target, "status", 403)
		_ = writeResponse(stream, http.StatusForbidden, "", nil)
		return
	}
	conn, err := net.DialTimeout("tcp", target, dialTimeout)
	if err != nil {
		logEvent("tunnel-refused", "stream", id, "target", target, "status", 503, "error", err)
		_ = writeResponse(stream, http.StatusServiceUnavailable, "", nil)
		return
	}
	tcp := conn.(*net.TCPConn)
	defer tcp.Close()
	if err := writeResponse(stream, http.StatusOK, "Connection established", nil); err != nil {
		return
	}
	logEvent("tunnel", "stream", id, "target", target)
	up, down := pipe(streamEnd(stream, reader), tcpEnd(tcp, tcp))
	logEvent("tunnel-done", "stream", id, "target", target, "up", up, "down", down)
}

// ---- proxy ----

type tokenClaims struct {
	AgentID string `json:"agent_id"`
	Role    string `json:"role"`
	jwt.RegisteredClaims
}

type verifier struct {
	key      crypto.PublicKey
	audience string
}

// verify checks a token's signature (ES256 or RS256 only), exp/nbf with 5 s leeway,
// the audience when one is configured and the role; it returns the agent_id claim.
func (v *verifier) verify(token, role string) (string, error) {
	opts := []jwt.ParserOption{
		jwt.WithValidMethods([]string{"ES256", "RS256"}),
		jwt.WithLeeway(jwtLeeway),
	}
	if v.audience != "" {
		opts = append(opts, jwt.WithAudience(v.audience))
	}
	claims := &tokenClaims{}
	keyFunc := func(*jwt.Token) (any, error) { return v.key, nil }
	if _, err := jwt.ParseWithClaims(token, claims, keyFunc, opts...); err != nil {
		return "", err
	}
	if claims.Role != role {
		return "", fmt.Errorf("role mismatch: expected %s, token has %q", role, claims.Role)
	}
	return claims.AgentID, nil
}

// loadPublicKey reads a PEM public key: SubjectPublicKeyInfo under "PUBLIC KEY" or
// "EC PUBLIC KEY", or PKCS#1 under "RSA PUBLIC KEY".
func loadPublicKey(path string) (crypto.PublicKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	switch block.Type {
	case "PUBLIC KEY", "EC PUBLIC KEY":
		return x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		return x509.ParsePKCS1PublicKey(block.Bytes)
	}
	return nil, fmt.Errorf("%s: unsupported PEM block %q", path, block.Type)
}

type proxy struct {
	verifier    *verifier // nil: noauth
	dialTimeout time.Duration

	mu     sync.Mutex
	agents map[string]quic.Connection
}

func runProxy(args []string) error {
	fs := flag.NewFlagSet("proxy", flag.ExitOnError)
	agentListen := fs.String("agent-listen", "127.0.0.1:0", "UDP address for agents")
	httpListen := fs.String("http-listen", "127.0.0.1:0", "TCP address for CONNECT clients")
	certFile := fs.String("cert", "", "server certificate (required)")
	keyFile := fs.String("key", "", "server key (required)")
	clientCA := fs.String("client-ca", "", "CA for agent client certificates (mutual TLS)")
	authType := fs.String("auth", "noauth", "noauth or jwt")
	publicKey := fs.String("public-key", "", "jwt: public key file")
	audience := fs.String("audience", "", "jwt: required audience")
	dialTimeout := fs.Duration("dial-timeout", 10*time.Second, "time to open a tunnel stream to an agent")
	_ = fs.Parse(args)

	p := &proxy{dialTimeout: *dialTimeout, agents: map[string]quic.Connection{}}
	switch *authType {
	case "noauth":
	case "jwt":
		key, err := loadPublicKey(*publicKey)
		if err != nil {
			return err
		}
		p.verifier = &verifier{key: key, audience: *audience}
	default:
		return fmt.Errorf("unknown -auth %q", *authType)
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{alpn},
	}
	if *clientCA != "" {
		pool, err := readCertPool(*clientCA)
		if err != nil {
			return err
		}
		tlsConf.ClientCAs = pool
		tlsConf.ClientAuth = tls.RequireAndVerifyClientCert
	}
	agents, err := quic.ListenAddr(*agentListen, tlsConf, quicConfig())
	if err != nil {
		return err
	}
	defer agents.Close()
	clients, err := net.Listen("tcp", *httpListen)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go p.acceptAgents(agents)
	go p.acceptClients(clients)
	logEvent("ready", "agent", agents.Addr(), "http", clients.Addr(), "auth", *authType)
	<-ctx.Done()
	_ = clients.Close()
	p.shutdown()
	logEvent("stopped")
	return nil
}

func (p *proxy) acceptAgents(ln *quic.Listener) {
	for {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		go p.serveAgent(conn)
	}
}

func (p *proxy) serveAgent(conn quic.Connection) {
	peer := conn.RemoteAddr().String()
	agentID, err := p.authenticateAgent(conn)
	switch {
	case err != nil:
		logEvent("agent-refused", "peer", peer, "code", codeAuthFailure, "reason", err)
		_ = conn.CloseWithError(codeAuthFailure, err.Error())
		return
	case agentID == "":
		logEvent("agent-refused", "peer", peer, "code", codeEmptyID, "reason", "empty agent id")
		_ = conn.CloseWithError(codeEmptyID, "empty agent id")
		return
	}
	p.mu.Lock()
	old := p.agents[agentID]
	p.agents[agentID] = conn
	p.mu.Unlock()
	logEvent("agent-connected", "agent", agentID, "peer", peer)
	if old != nil {
		logEvent("agent-replaced", "agent", agentID, "old", old.RemoteAddr())
		_ = old.CloseWithError(codeReplaced, "closing old connection")
	}
	<-conn.Context().Done()
	p.mu.Lock()
	if p.agents[agentID] == conn {
		delete(p.agents, agentID)
	}
	p.mu.Unlock()
	closeEvent("agent-disconnected", context.Cause(conn.Context()), "agent", agentID, "peer", peer)
}

// authenticateAgent reads the token on the agent's first stream, verifies it and answers
// "authenticated". Like the reference, it answers before the caller refuses an empty
// agent id (400): such an agent sees "authenticated", then the close.
func (p *proxy) authenticateAgent(conn quic.Connection) (string, error) {
	ctx, cancel := context.WithTimeout(conn.Context(), authTimeout)
	defer cancel()
	stream, err := conn.AcceptStream(ctx)
	if err != nil {
		return "", fmt.Errorf("auth stream: %w", err)
	}
	defer stream.Close()
	_ = stream.SetDeadline(time.Now().Add(authTimeout))
	token, err := readMessage(stream)
	if err != nil {
		return "", fmt.Errorf("auth read: %w", err)
	}
	agentID := string(token)
	if p.verifier != nil {
		if agentID, err = p.verifier.verify(string(token), "agent"); err != nil {
			return "", err
		}
	}
	if err := writeMessage(stream, []byte(authenticated)); err != nil {
		return "", fmt.Errorf("auth write: %w", err)
	}
	return agentID, nil
}

func (p *proxy) shutdown() {
	p.mu.Lock()
	conns := make([]quic.Connection, 0, len(p.agents))
	for _, conn := range p.agents {
		conns = append(conns, conn)
	}
	p.mu.Unlock()
	for _, conn := range conns {
		_ = conn.CloseWithError(codeOK, "proxy server shutdown")
	}
}

func (p *proxy) acceptClients(ln net.Listener) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		go p.serveClient(conn.(*net.TCPConn))
	}
}

// proxyAuthorization returns user and password of "Proxy-Authorization: Basic ...".
func proxyAuthorization(req *http.Request) (user, password string) {
	scheme, credentials, _ := strings.Cut(req.Header.Get("Proxy-Authorization"), " ")
	if !strings.EqualFold(scheme, "Basic") {
		return "", ""
	}
	decoded, err := base64.StdEncoding.DecodeString(strings.TrimSpace(credentials))
	if err != nil {
		return "", ""
	}
	user, password, _ = strings.Cut(string(decoded), ":")
	return user, password
}

func (p *proxy) authorizeClient(req *http.Request) (string, error) {
	user, password := proxyAuthorization(req)
	if user == "" {
		return "", errors.New("no agent id in Proxy-Authorization")
	}
	if p.verifier == nil {
		return user, nil
	}
	agentID, err := p.verifier.verify(password, "client")
	if err != nil {
		return "", err
	}
	if agentID != user {
		return "", fmt.Errorf("agent_id mismatch: user %q, token %q", user, agentID)
	}
	return user, nil
}

func (p *proxy) serveClient(client *net.TCPConn) {
	defer client.Close()
	_ = client.SetReadDeadline(time.Now().Add(30 * time.Second))
	reader := bufio.NewReader(client)
	req, err := http.ReadRequest(reader)
	if err != nil {
		return
	}
	_ = client.SetReadDeadline(time.Time{})
	if req.Method != http.MethodConnect {
		_ = writeResponse(client, http.StatusMethodNotAllowed, "", nil)
		return
	}
	target := withDefaultPort(req.Host)
	agentID, err := p.authorizeClient(req)
	if err != nil {
		logEvent("client-refused", "target", target, "status", 407, "reason", err)
		header := http.Header{"Proxy-Authenticate": {`Basic realm="reverse-http"`}}
		_ = writeResponse(client, http.StatusProxyAuthRequired, "", header)
		return
	}
	p.mu.Lock()
	conn := p.agents[agentID]
	p.mu.Unlock()
	if conn == nil {
		logEvent("client-refused", "agent", agentID, "status", 503, "reason", "agent not connected")
		_ = writeResponse(client, http.StatusServiceUnavailable, "", nil)
		return
	}
	stream, agentReader, err := p.openTunnel(conn, target)
	if err != nil {
		logEvent("client-refused", "agent", agentID, "target", target, "status", 503, "reason", err)
		_ = writeResponse(client, http.StatusServiceUnavailable, "", nil)
		return
	}
	if err := writeResponse(client, http.StatusOK, "Connection established", nil); err != nil {
		stream.CancelRead(0)
		stream.CancelWrite(0)
		return
	}
	logEvent("tunnel", "agent", agentID, "target", target, "stream", stream.StreamID())
	upHead, downHead := &headReader{r: reader}, &headReader{r: agentReader}
	up, down := pipe(tcpEnd(client, upHead), streamEnd(stream, downHead))
	logEvent("tunnel-done", "agent", agentID, "target", target, "stream", stream.StreamID(),
		"up", up, "down", down, "up_head", string(upHead.head), "down_head", string(downHead.head))
}

// headBytes is how much of each tunnel direction the proxy's tunnel-done event shows.
const headBytes = 48

// headReader passes reads through and keeps their first headBytes: a test whose client
// got a garbled answer then sees which way the tunnel began (the agent's first bytes
// after its 200, and the client's request) and so which hop garbled it.
type headReader struct {
	r    io.Reader
	head []byte
}

func (h *headReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if room := headBytes - len(h.head); room > 0 && n > 0 {
		h.head = append(h.head, p[:min(n, room)]...)
	}
	return n, err
}

// openTunnel opens a stream to the agent, sends the CONNECT and waits for a 200.
func (p *proxy) openTunnel(conn quic.Connection, target string) (quic.Stream, *bufio.Reader, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.dialTimeout)
	defer cancel()
	stream, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, err
	}
	_ = stream.SetDeadline(time.Now().Add(p.dialTimeout))
	req := &http.Request{
		Method:     http.MethodConnect,
		URL:        &url.URL{Host: target},
		Host:       target,
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     http.Header{"Proxy-Connection": {"keep-alive"}},
	}
	reader := bufio.NewReader(stream)
	resp, err := func() (*http.Response, error) {
		if err := req.Write(stream); err != nil {
			return nil, err
		}
		return http.ReadResponse(reader, req)
	}()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("agent answered %s", resp.Status)
	}
	if err != nil {
		stream.CancelRead(0)
		stream.CancelWrite(0)
		return nil, nil, err
	}
	_ = stream.SetDeadline(time.Time{})
	return stream, reader, nil
}

package lab

import (
	"context"
	"crypto/sha256"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// testServer runs a Server on loopback address host and returns its
// control address and the notes it takes.
type testServer struct {
	addr  netip.AddrPort
	file  []byte
	mu    sync.Mutex
	notes []Note
}

func (ts *testServer) lastNote() Note {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.notes) == 0 {
		return Note{}
	}
	return ts.notes[len(ts.notes)-1]
}

func startTestServer(t *testing.T, host string) *testServer {
	t.Helper()
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		roottest.Unavailable(t, "no loopback %s: %v", host, err)
	}
	ts := &testServer{addr: addrPortOf(ln.Addr()), file: labData(300 << 10)}
	srv := &Server{
		Files:       map[string][]byte{labFile: ts.file},
		User:        labUser,
		Pass:        labPass,
		DataTimeout: 2 * time.Second,
		OnNote: func(n Note) {
			ts.mu.Lock()
			ts.notes = append(ts.notes, n)
			ts.mu.Unlock()
		},
	}
	stop := srv.Start(ln)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ts
}

func login(t *testing.T, ts *testServer) *Client {
	t.Helper()
	c := &Client{Timeout: 3 * time.Second}
	ctx := context.Background()
	if _, err := c.Connect(ctx, nil, ts.addr.String()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Login(ctx, labUser, labPass); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFTPEveryMode(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		for _, verb := range []string{"PASV", "EPSV", "PORT", "EPRT"} {
			if host == "::1" && (verb == "PASV" || verb == "PORT") {
				continue // IPv4 only
			}
			t.Run(host+"/"+verb, func(t *testing.T) {
				ts := startTestServer(t, host)
				c := login(t, ts)
				ctx := context.Background()
				x := transfer{verb: verb}
				var d Download
				var err error
				if x.passive() {
					ap, r, err := c.Passive(ctx, x.extended())
					if err != nil {
						t.Fatal(err)
					}
					if ap.Addr() != ts.addr.Addr() || ap.Port() == 0 {
						t.Fatalf("announced %v, want the server's address %v", ap, ts.addr.Addr())
					}
					if n := ts.lastNote(); !n.Sent || n.Line != replyLine(r) {
						t.Errorf("server noted %+v, want the reply %q", n, replyLine(r))
					}
					d, err = c.RetrPassive(ctx, labFile, ap)
				} else {
					ln, lerr := net.Listen("tcp", net.JoinHostPort(host, "0"))
					if lerr != nil {
						t.Fatal(lerr)
					}
					defer ln.Close()
					line, _, aerr := c.Active(ctx, x.extended(), ln)
					if aerr != nil {
						t.Fatal(aerr)
					}
					if !strings.HasPrefix(line, verb+" ") {
						t.Errorf("sent %q", line)
					}
					if n := ts.lastNote(); n.Sent || n.Line != line || n.Peer.Addr() != ts.addr.Addr() {
						t.Errorf("server noted %+v, want the command %q", n, line)
					}
					d, err = c.RetrActive(ctx, labFile, ln)
				}
				if err != nil {
					t.Fatal(err)
				}
				if d.Bytes != int64(len(ts.file)) || d.SHA256 != sha256.Sum256(ts.file) {
					t.Errorf("downloaded %d bytes, sha256 %x; want %d bytes, the server's file", d.Bytes, d.SHA256[:4], len(ts.file))
				}
				if d.Final.Code != 226 || d.Duration <= 0 {
					t.Errorf("final reply %q, duration %v", replyLine(d.Final), d.Duration)
				}
				// The session goes on: a second command works.
				if _, err := c.Expect(ctx, "NOOP", 200); err != nil {
					t.Error(err)
				}
			})
		}
	}
}

// expectCode sends line and checks the reply code.
func expectCode(t *testing.T, c *Client, line string, code int) ftp.Reply {
	t.Helper()
	r, err := c.Cmd(context.Background(), line)
	if err != nil {
		t.Fatal(err)
	}
	if r.Code != code {
		t.Fatalf("%s: got %q, want code %d", line, replyLine(r), code)
	}
	return r
}

// The server, like vsftpd, insists on one peer for both channels.
func TestServerRefusesThirdParties(t *testing.T) {
	ts := startTestServer(t, "127.0.0.1")
	c := login(t, ts)
	expectCode(t, c, "PORT 127,0,0,2,156,64", 500)
	expectCode(t, c, "EPRT |1|127.0.0.2|40000|", 500)
	expectCode(t, c, "PORT 127,0,0,1,0,80", 500) // privileged port
	expectCode(t, c, "PORT 127,0,0,1,300,1", 501)
	expectCode(t, c, "EPRT |3|x|1|", 501)

	// A passive data connection from another address is turned away.
	ap, _, err := c.Passive(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	dc, err := d.Dial("tcp", ap.String())
	if err != nil {
		roottest.Unavailable(t, "cannot dial from 127.0.0.2: %v", err)
	}
	defer dc.Close()
	r := expectCode(t, c, "RETR "+labFile, 425)
	if !strings.Contains(r.Text(), "Bad IP") {
		t.Errorf("425 text %q", r.Text())
	}
}

func TestServerSession(t *testing.T) {
	ts := startTestServer(t, "127.0.0.1")
	c := &Client{Timeout: 3 * time.Second}
	ctx := context.Background()
	if _, err := c.Connect(ctx, nil, ts.addr.String()); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectCode(t, c, "PASV", 530) // not logged in
	expectCode(t, c, "USER "+labUser, 331)
	expectCode(t, c, "PASS wrong", 530)
	if err := c.Login(ctx, labUser, labPass); err != nil {
		t.Fatal(err)
	}
	r := expectCode(t, c, "FEAT", 211)
	if !r.Multiline() || !strings.Contains(string(r.Bytes()), " EPSV\r\n") {
		t.Errorf("FEAT reply %q", r.Bytes())
	}
	expectCode(t, c, "SIZE "+labFile, 213)
	expectCode(t, c, "SIZE /nonexistent", 550)
	expectCode(t, c, "RETR /nonexistent", 550)
	expectCode(t, c, "RETR "+labFile, 425) // no PASV or PORT first
	expectCode(t, c, "XYZ", 502)
	expectCode(t, c, "PASV extra", 227)
	expectCode(t, c, "EPSV 3", 522)
	expectCode(t, c, "QUIT", 221)
}

func TestClientReplyError(t *testing.T) {
	ts := startTestServer(t, "127.0.0.1")
	c := &Client{Timeout: 3 * time.Second}
	ctx := context.Background()
	if _, err := c.Connect(ctx, nil, ts.addr.String()); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err := c.Login(ctx, labUser, "wrong")
	var re *ReplyError
	if !errors.As(err, &re) || re.Reply.Code != 530 || re.Command != "PASS ****" {
		t.Fatalf("Login with a wrong password: %v", err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Errorf("error shows the password: %v", err)
	}
}

func TestIsTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var d net.Dialer
	_, refused := d.Dial("tcp", addr)
	if refused == nil || isTimeout(refused) {
		t.Errorf("dialling a closed port: %v; isTimeout must be false", refused)
	}
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, timedOut := d.DialContext(ctx, "tcp", addr)
	if !isTimeout(timedOut) {
		t.Errorf("dialling past the deadline: %v; isTimeout must be true", timedOut)
	}
}

package lab

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// The lab's server speaks explicit FTPS when Server.TLS is set: AUTH TLS,
// PBSZ, PROT P, and TLS data connections in both modes.
func TestServerFTPS(t *testing.T) {
	cfg, roots, err := selfSignedTLS("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	file := labData(100 << 10)
	srv := &Server{Files: map[string][]byte{labFile: file}, User: labUser, Pass: labPass, DataTimeout: 2 * time.Second, TLS: cfg}
	stop := srv.Start(ln)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	ctx := context.Background()
	c := &Client{Timeout: 3 * time.Second}
	if _, err := c.Connect(ctx, nil, ln.Addr().String()); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectCode(t, c, "PROT P", 503) // not before AUTH
	cs, err := c.StartTLS(ctx, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1", ClientSessionCache: tls.NewLRUClientSessionCache(2)})
	if err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	if !cs.HandshakeComplete {
		t.Fatal("no TLS on the control connection")
	}
	expectCode(t, c, "AUTH TLS", 503) // already
	expectCode(t, c, "PROT E", 536)
	if err := c.Login(ctx, labUser, labPass); err != nil {
		t.Fatal(err)
	}
	ap, _, err := c.Passive(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	d, err := c.RetrPassive(ctx, labFile, ap)
	if err != nil {
		t.Fatalf("passive FTPS download: %v", err)
	}
	if d.SHA256 != sha256.Sum256(file) {
		t.Error("passive FTPS download differs from the file")
	}
	dl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer dl.Close()
	if _, _, err := c.Active(ctx, false, dl); err != nil {
		t.Fatal(err)
	}
	d, err = c.RetrActive(ctx, labFile, dl)
	if err != nil {
		t.Fatalf("active FTPS download: %v", err)
	}
	if d.SHA256 != sha256.Sum256(file) {
		t.Error("active FTPS download differs from the file")
	}
	// PROT C: the data in clear again, which a TLS client cannot read as
	// TLS: the download fails.
	expectCode(t, c, "PROT C", 200)
	ap, _, err = c.Passive(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.RetrPassive(ctx, labFile, ap); err == nil {
		t.Error("a TLS data connection against PROT C worked")
	}
}

// Without TLS the server knows nothing of AUTH.
func TestServerPlainRefusesAUTH(t *testing.T) {
	ts := startTestServer(t, "127.0.0.1")
	c := &Client{Timeout: 3 * time.Second}
	if _, err := c.Connect(context.Background(), nil, ts.addr.String()); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectCode(t, c, "AUTH TLS", 530)
	if err := c.Login(context.Background(), labUser, labPass); err != nil {
		t.Fatal(err)
	}
	expectCode(t, c, "AUTH TLS", 502)
}

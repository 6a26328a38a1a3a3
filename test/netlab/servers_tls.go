package netlab

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ftpalg/ftpalg/alg/ftps"
)

// TLSFiles are a PEM certificate and key and the CA that signed them,
// generated for a test (documentation addresses as SANs).
type TLSFiles struct {
	CA, Cert, Key string
}

// NewTLSFiles writes a fresh CA and a server certificate for names (IP
// addresses or DNS names) into a directory removed with t.
func NewTLSFiles(t testing.TB, names ...string) *TLSFiles {
	t.Helper()
	caPEM, certPEM, keyPEM, err := ftps.SelfSigned(names...)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := &TLSFiles{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "cert.pem"), Key: filepath.Join(dir, "key.pem")}
	for p, b := range map[string][]byte{f.CA: caPEM, f.Cert: certPEM, f.Key: keyPEM} {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// vsftpdTLSConf is vsftpd's TLS configuration: off, or FTPS required for
// login and data with require_ssl_reuse (a data connection must resume the
// control connection's TLS session).
func vsftpdTLSConf(opts ServerOptions) string {
	if opts.TLS == nil {
		return "ssl_enable=NO"
	}
	return "ssl_enable=YES\n" +
		"rsa_cert_file=" + opts.TLS.Cert + "\n" +
		"rsa_private_key_file=" + opts.TLS.Key + "\n" +
		"allow_anon_ssl=YES\n" +
		"force_anon_logins_ssl=YES\n" +
		"force_anon_data_ssl=YES\n" +
		"require_ssl_reuse=YES\n" +
		"ssl_sslv2=NO\nssl_sslv3=NO\nssl_tlsv1=YES\n" +
		"ssl_ciphers=HIGH\n" +
		"debug_ssl=YES"
}

// pureFTPdTLSArgs are pure-ftpd's TLS options: none ("-Y 0"), or TLS
// required on the control and data channels with the given certificate.
func pureFTPdTLSArgs(opts ServerOptions) []string {
	if opts.TLS == nil {
		return []string{"-Y", "0"}
	}
	return []string{"-Y", strconv.Itoa(3), "-2", fmt.Sprintf("%s,%s", opts.TLS.Cert, opts.TLS.Key)}
}

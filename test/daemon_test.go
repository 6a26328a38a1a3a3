package test

// Running ftpalg as a daemon: configuration reload, metrics, readiness and
// status, end to end in the gateway topology.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/ftpalg/ftpalg/test/netlab"
)

// writeConfig writes a gateway configuration file with extra lines.
func writeConfig(t *testing.T, path string, extra ...string) {
	t.Helper()
	body := fmt.Sprintf("mode = \"gateway\"\nintercept = [%q]\npinhole-ttl = \"10s\"\n%s\n", netlab.GWInside, strings.Join(extra, "\n"))
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// hup sends SIGHUP and waits for the n-th log line msg.
func (a *ALG) hup(t *testing.T, msg string, n int) map[string]any {
	t.Helper()
	if err := a.Proc.Cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if ls := a.Logs(msg); len(ls) >= n {
			return ls[n-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q line %d after SIGHUP:\n%s", msg, n, tailLines(a.Proc.Output(), 20))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestReloadLimits: a SIGHUP that lowers max-sessions-per-client applies to
// the next session while the running ones go on; a broken file, or one
// that changes what needs a restart, keeps the daemon serving with the old
// limits and says why in one line.
func TestReloadLimits(t *testing.T) {
	topo, _ := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
	conf := filepath.Join(t.TempDir(), "ftpalg.toml")
	writeConfig(t, conf, "max-sessions-per-client = 3")
	a := startALG(t, topo.GW, "--config", conf)
	server := srv.Addr(netlab.IPv4)

	refused := func(x *ctrl) bool {
		t.Helper()
		r := x.reply()
		if r.Code == 421 && strings.Contains(string(r.Bytes()), "too many connections") {
			return true
		}
		if r.Code != 220 {
			t.Fatalf("unexpected greeting %q", r.Bytes())
		}
		return false
	}
	dial := func() *ctrl {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := topo.Client.DialContext(ctx, "tcp", server.String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return newCtrl(t, c)
	}

	s1, s2 := dial(), dial()
	if refused(s1) || refused(s2) {
		t.Fatal("a session under the limit of 3 was refused")
	}
	s1.login(srv.User, srv.Pass)

	// Lower the limit to 2: the third session is refused, the two running
	// ones are not touched.
	writeConfig(t, conf, "max-sessions-per-client = 2")
	l := a.hup(t, "configuration reloaded: new sessions use it, running sessions keep theirs", 1)
	if l["changed"] != "max-sessions-per-client" {
		t.Errorf("reload line names %v as changed, want max-sessions-per-client", l["changed"])
	}
	if !refused(dial()) {
		t.Fatal("after lowering the limit to 2 a third session was accepted")
	}
	s1.expectCode(s1.cmd("NOOP"), 200)

	// A broken file: the old configuration stays, one line says why.
	if err := os.WriteFile(conf, []byte("mode = \"gateway\"\nintercept = [\""+netlab.GWInside+"\"]\nmax-sessions-per-client = \"two\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	l = a.hup(t, "reload failed: keeping the running configuration", 1)
	if e, _ := l["err"].(string); !strings.Contains(e, conf+":3: max-sessions-per-client:") {
		t.Errorf("reload failure does not name the file, line and key: %v", l["err"])
	}
	if !refused(dial()) {
		t.Fatal("after a failed reload the limit 2 no longer holds")
	}
	// Still serving: a session ends, a new one takes its place.
	s2.c.Close()
	waitSessions(t, a, 1)
	s3 := dial()
	if refused(s3) {
		t.Fatal("after a failed reload ftpalg refused a session under the old limit")
	}
	s3.login(srv.User, srv.Pass)

	// A change only a restart can make is refused as a whole.
	writeConfig(t, conf, "max-sessions-per-client = 5", "data-ports = \"41000-41099\"")
	l = a.hup(t, "reload refused: these settings need a restart; keeping the running configuration", 1)
	if l["keys"] != "data-ports" {
		t.Errorf("refused reload names %v, want data-ports", l["keys"])
	}
	if !refused(dial()) {
		t.Fatal("a refused reload applied its limit")
	}
	if exited, err := a.Proc.Exited(); exited {
		t.Fatalf("ftpalg exited: %v", err)
	}
	a.StopClean()
}

// waitSessions waits until n "session end" lines were logged.
func waitSessions(t *testing.T, a *ALG, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(a.Logs("session end")) < n {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than %d sessions ended", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newCtrl wraps a dialled control connection without reading the greeting.
func newCtrl(t *testing.T, c net.Conn) *ctrl {
	x := dialCtrlConn(t, c)
	return x
}

const metricsAddr = "127.0.0.1:9121"

// httpIn is an HTTP client whose connections start in ns.
func httpIn(ns *netlab.NS) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}}
}

func scrape(t *testing.T, hc *http.Client) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := hc.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing the metrics: %v", err)
	}
	return mfs
}

// value is the value of the sample of family name whose labels include
// labels (name=value pairs); 0 if absent.
func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	mf := mfs[name]
	if mf == nil {
		return 0
	}
	var sum float64
next:
	for _, m := range mf.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Histogram != nil:
			sum += float64(m.Histogram.GetSampleCount())
		}
	}
	return sum
}

// TestMetricsReadyStatus: /readyz is not ready before the listeners are up;
// after one passive and one active transfer the scraped metrics moved by
// exactly what happened; `ftpalg status` lists a pinhole while it is open
// and not after.
func TestMetricsReadyStatus(t *testing.T) {
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Server, netlab.Vsftpd, netlab.ServerOptions{})
	hc := httpIn(topo.GW)
	// The strict firewall drops loopback too: let the scrapes in.
	for _, f := range netlab.Families {
		if err := topo.GW.IPTables(ctx, f, "-I", "INPUT", "-i", "lo", "-j", "ACCEPT"); err != nil {
			t.Fatal(err)
		}
	}

	args := append([]string{"run"}, gatewayArgs()...)
	args = append(args, "--metrics-listen", metricsAddr, "--log-format", "json", "--log-level", "debug")
	a := &ALG{t: t, Proc: topo.GW.Start(t, ftpalgBin(t), args...), NS: topo.GW}

	// Poll /readyz from the start: every answer before the first "ready"
	// is 503, and once it says ready the proxy listener accepts.
	var notReady int
	var lastErr error
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("/readyz never became ready (%v):\n%s", lastErr, tailLines(a.Proc.Output(), 20))
		}
		resp, err := hc.Get("http://" + metricsAddr + "/readyz")
		if err != nil {
			lastErr = err
			time.Sleep(2 * time.Millisecond)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			notReady++
			continue
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/readyz answered %s", resp.Status)
		}
		break
	}
	if notReady == 0 {
		t.Error("/readyz was ready at its first answer: it must say 503 while the firewall and listeners are set up")
	}
	if len(a.Logs("ftpalg running")) == 0 {
		t.Error("/readyz said ready before ftpalg logged that it runs")
	}
	if c, err := topo.GW.DialContext(ctx, "tcp", "[::1]:2121"); err != nil {
		t.Errorf("/readyz said ready, but the proxy listener does not accept: %v", err)
	} else {
		c.Close()
	}
	if resp, err := hc.Get("http://" + metricsAddr + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("/healthz: %v %v", resp, err)
	}
	// The probe dialled the listener itself: refused, not proxied.
	for deadline := time.Now().Add(10 * time.Second); len(a.Logs("refused")) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the direct connection to the listener was not refused")
		}
	}

	before := scrape(t, hc)
	if v := value(before, "ftpalg_build_info"); v != 1 {
		t.Errorf("ftpalg_build_info = %v", v)
	}

	// One passive download and one active upload.
	xs := []netlab.Transfer{
		srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.Retr, netlab.IPv4),
		srv.Transfer(t, netlab.Curl, netlab.PORT, netlab.Stor, netlab.IPv4),
	}
	for _, x := range xs {
		if err := srv.Verify(netlab.RunTransfer(ctx, topo.Client, x)); err != nil {
			t.Fatalf("%v: %v", x, err)
		}
	}
	checkTransferLines(t, a, 2)
	waitSessions(t, a, 2)
	waitNoPinholes(t, topo.GW, 15*time.Second)
	after := scrape(t, hc)

	bytesLogged := map[string]float64{}
	for _, l := range a.Logs("transfer") {
		d, _ := l["direction"].(string)
		n, _ := l["bytes"].(float64)
		bytesLogged[d] += n
	}
	delta := func(name string, labels ...string) float64 {
		return value(after, name, labels...) - value(before, name, labels...)
	}
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"ftpalg_sessions_total", nil, 2},
		{"ftpalg_sessions_active", nil, 0},
		{"ftpalg_sessions_refused_total", nil, 0},
		{"ftpalg_refusals_total", nil, 0},
		{"ftpalg_pinholes_opened_total", nil, 2},
		{"ftpalg_pinholes_closed_total", nil, 2},
		{"ftpalg_pinholes_live", nil, 0},
		{"ftpalg_backend_operation_duration_seconds", []string{"op", "open", "result", "ok"}, 2},
		{"ftpalg_backend_operation_duration_seconds", []string{"op", "close", "result", "ok"}, 2},
		{"ftpalg_transfers_total", []string{"direction", "server->client"}, 1},
		{"ftpalg_transfers_total", []string{"direction", "client->server"}, 1},
		{"ftpalg_transfer_bytes_total", []string{"direction", "server->client"}, bytesLogged["server->client"]},
		{"ftpalg_transfer_bytes_total", []string{"direction", "client->server"}, bytesLogged["client->server"]},
		{"ftpalg_firewall_repairs_total", nil, 0},
		{"ftpalg_conntrack_event_overflows_total", nil, 0},
	} {
		if got := delta(c.name, c.labels...); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// conntrack counts IP bytes: at least the payload.
	if b := bytesLogged["server->client"]; b < netlab.BigSize {
		t.Errorf("download counted %v bytes, the file has %d", b, netlab.BigSize)
	}
	if b := bytesLogged["client->server"]; b < 1<<20+777 {
		t.Errorf("upload counted %v bytes, the file has %d", b, 1<<20+777)
	}

	// status: a pinhole while it is open, none after.
	x := dialCtrl(t, topo.Client, srv.Addr(netlab.IPv4))
	x.login(srv.User, srv.Pass)
	port := x.epsv()
	st := ftpalgStatus(t, topo.GW)
	want := netip4(srv.Addr(netlab.IPv4).Addr().String(), port)
	var found bool
	for _, p := range st.Pinholes {
		if p.Dst == want && p.Src == netlab.ClientAddr4.String() && p.Remaining > 0 && p.Remaining <= 10 {
			found = true
		}
	}
	if !found {
		t.Errorf("status does not list the open pinhole to %s: %+v", want, st.Pinholes)
	}
	if len(st.Sessions) != 1 || st.Sessions[0].State != "logged in" || st.Mode != "gateway" || !st.Ready {
		t.Errorf("status: %+v", st)
	}
	text, err := topo.GW.Run(ctx, ftpalgBin(t), "status")
	if err != nil || !strings.Contains(text, want) || !strings.Contains(text, "pinholes: 1") {
		t.Errorf("status text does not show the pinhole (%v):\n%s", err, text)
	}
	x.expectCode(x.cmd("QUIT"), 221)
	waitSessions(t, a, 3)
	if st := ftpalgStatus(t, topo.GW); len(st.Pinholes) != 0 || len(st.Sessions) != 0 {
		t.Errorf("status after the session ended: %+v", st)
	}
	a.StopClean()
}

type statusJSON struct {
	Mode     string
	Ready    bool
	Sessions []struct{ State string }
	Pinholes []struct {
		Src, Dst  string
		Remaining float64 `json:"remaining_seconds"`
	}
}

func ftpalgStatus(t *testing.T, ns *netlab.NS) statusJSON {
	t.Helper()
	out, err := ns.Run(context.Background(), ftpalgBin(t), "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}

func netip4(addr string, port uint16) string { return fmt.Sprintf("%s:%d", addr, port) }

// TestReloadCert: with --tls terminate, a SIGHUP re-reads the certificate
// files: a session started after it is presented the new certificate (a
// client trusting only the old CA now fails, one trusting the new CA
// passes). A broken file on SIGHUP keeps the certificate in use and says
// so in one line.
func TestReloadCert(t *testing.T) {
	topo, ctx := gatewayTopo(t)
	srv := netlab.StartServer(t, topo.Client, netlab.Vsftpd, netlab.ServerOptions{})
	names := []string{gwOutside(netlab.IPv4).String(), gwOutside(netlab.IPv6).String()}
	old, next := netlab.NewTLSFiles(t, names...), netlab.NewTLSFiles(t, names...)
	a := startALG(t, topo.GW, ftpsArgs("iptables", old)...)

	list := func(ca string) netlab.Result {
		t.Helper()
		x := srv.Transfer(t, netlab.Curl, netlab.EPSV, netlab.List, netlab.IPv4)
		x.TLS, x.CAFile, x.Server = netlab.TLSExplicit, ca, publicAddr(netlab.IPv4)
		x.Timeout = 30 * time.Second
		return netlab.RunTransfer(ctx, topo.Server, x)
	}
	if err := srv.Verify(list(old.CA)); err != nil {
		t.Fatalf("before the reload, trusting the first CA: %v", err)
	}
	// Renewed in place, as certbot's deploy hook would, then SIGHUP.
	for dst, src := range map[string]string{old.Cert: next.Cert, old.Key: next.Key} {
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a.hup(t, "TLS certificate reloaded", 1)
	if err := srv.Verify(list(next.CA)); err != nil {
		t.Errorf("after the reload, trusting the new CA: %v", err)
	}
	if r := list(old.CA); r.Err == nil {
		t.Errorf("after the reload the old certificate is still presented:\n%s", r.Summary())
	}

	// A broken certificate file: the one in use stays.
	if err := os.WriteFile(old.Cert, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.hup(t, "TLS certificate reload failed: keeping the running one", 1)
	if err := srv.Verify(list(next.CA)); err != nil {
		t.Errorf("after a failed reload, trusting the new CA: %v", err)
	}
	a.StopClean()
}

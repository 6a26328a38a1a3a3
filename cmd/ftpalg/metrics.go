package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/rules"
)

// metrics are ftpalg's Prometheus collectors. They live here, not in alg:
// the proxy reports through its callbacks, counters and log lines, and
// knows nothing of Prometheus.
//
// Refusals, firewall repairs and conntrack overflows are counted from the
// log line each of them is (one structured line per event is a rule of the
// code base), so the metric and the log cannot disagree.
type metrics struct {
	reg            *prometheus.Registry
	refusals       *prometheus.CounterVec
	sessionsLimit  prometheus.Counter
	pinholesOpened prometheus.Counter
	pinholesClosed *prometheus.CounterVec
	backendOps     *prometheus.HistogramVec
	transfers      *prometheus.CounterVec
	transferBytes  *prometheus.CounterVec
	repairs        prometheus.Counter
	ctOverflows    prometheus.Counter
	reloads        *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	f := func(c prometheus.Collector) { m.reg.MustRegister(c) }
	m.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftpalg_refusals_total",
		Help: "Lines or connections refused (an FTP reply to the peer and a \"refused\" log line), by reason."}, []string{"reason"})
	m.sessionsLimit = prometheus.NewCounter(prometheus.CounterOpts{Name: "ftpalg_sessions_refused_total",
		Help: "Control connections refused because a session limit was reached."})
	m.pinholesOpened = prometheus.NewCounter(prometheus.CounterOpts{Name: "ftpalg_pinholes_opened_total",
		Help: "Pinholes opened (attempts; a failed one is closed with reason \"failed\")."})
	m.pinholesClosed = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftpalg_pinholes_closed_total",
		Help: "Pinholes closed, by reason (used, ttl, replaced, failed, refused, session_end, ...)."}, []string{"reason"})
	m.backendOps = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "ftpalg_backend_operation_duration_seconds",
		Help:    "Time the pinhole backend took per operation, by operation and result.",
		Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10)}, []string{"op", "result"})
	m.transfers = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftpalg_transfers_total",
		Help: "Data connections that ended, by direction (from conntrack; not counted without it)."}, []string{"direction"})
	m.transferBytes = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftpalg_transfer_bytes_total",
		Help: "Bytes carried by ended data connections in their direction (from conntrack accounting)."}, []string{"direction"})
	m.repairs = prometheus.NewCounter(prometheus.CounterOpts{Name: "ftpalg_firewall_repairs_total",
		Help: "Times ftpalg found its firewall rules removed by someone else and re-installed them."})
	m.ctOverflows = prometheus.NewCounter(prometheus.CounterOpts{Name: "ftpalg_conntrack_event_overflows_total",
		Help: "Times the conntrack event socket overflowed: events were lost and the table was re-read."})
	m.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftpalg_config_reloads_total",
		Help: "SIGHUP reloads, by result (applied, failed, refused)."}, []string{"result"})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ftpalg_build_info",
		Help: "Build information (always 1)."}, []string{"version", "goversion"})
	build.WithLabelValues(version(), runtime.Version()).Set(1)
	for _, c := range []prometheus.Collector{m.refusals, m.sessionsLimit, m.pinholesOpened, m.pinholesClosed,
		m.backendOps, m.transfers, m.transferBytes, m.repairs, m.ctOverflows, m.reloads, build,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{})} {
		f(c)
	}
	for _, r := range []string{"applied", "failed", "refused"} {
		m.reloads.WithLabelValues(r)
	}
	for _, d := range []string{"client->server", "server->client"} {
		m.transfers.WithLabelValues(d)
		m.transferBytes.WithLabelValues(d)
	}
	return m
}

// watchProxy adds the gauges read from the proxy and the pinhole table.
func (m *metrics) watchProxy(p *alg.Proxy, live func() int) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ftpalg_sessions_active",
			Help: "Control sessions running now."}, func() float64 { return float64(p.Sessions()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "ftpalg_sessions_total",
			Help: "Control sessions accepted since the start."}, func() float64 { return float64(p.Accepted()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ftpalg_pinholes_live",
			Help: "Pinholes open now."}, func() float64 { return float64(live()) }),
	)
}

func (m *metrics) pinholeOpened() { m.pinholesOpened.Inc() }
func (m *metrics) pinholeClosed(reason string) {
	// The log's "session end" is the label value session_end, as a
	// refusal's "line too long" is line_too_long.
	m.pinholesClosed.WithLabelValues(strings.ReplaceAll(reason, " ", "_")).Inc()
}

// transfer counts one ended data connection.
func (m *metrics) transfer(f conntrack.FlowEnd, passive bool) {
	if !f.Counted {
		return
	}
	dir := "server->client"
	if (f.OrigBytes > f.ReplyBytes) == passive {
		dir = "client->server"
	}
	m.transfers.WithLabelValues(dir).Inc()
	m.transferBytes.WithLabelValues(dir).Add(float64(max(f.OrigBytes, f.ReplyBytes)))
}

// refusalReasons bounds the reason label: "what" may name a client's verb.
var refusalReasons = map[string]bool{
	"limit": true, "upstream": true, "syntax": true, "garbage": true, "line too long": true, "NUL": true,
	"too many refusals": true, "server reply": true, "login timeout": true, "idle timeout": true,
	"PORT": true, "EPRT": true, "LPRT": true, "LPSV": true, "AUTH": true, "PASV": true, "EPSV": true,
	"PASV reply": true, "EPSV reply": true,
}

// tap counts the log lines that are events; every record still goes to h.
func (m *metrics) tap(h slog.Handler) slog.Handler { return &tapHandler{h, m} }

type tapHandler struct {
	h slog.Handler
	m *metrics
}

func (t *tapHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || t.h.Enabled(ctx, l)
}

func (t *tapHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		t.m.count(r)
	}
	if !t.h.Enabled(ctx, r.Level) {
		return nil
	}
	return t.h.Handle(ctx, r)
}

func (t *tapHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &tapHandler{t.h.WithAttrs(as), t.m}
}
func (t *tapHandler) WithGroup(g string) slog.Handler { return &tapHandler{t.h.WithGroup(g), t.m} }

func (m *metrics) count(r slog.Record) {
	switch {
	case r.Message == "refused":
		reason := "other"
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "what" {
				if v := a.Value.String(); refusalReasons[v] {
					reason = strings.ReplaceAll(strings.ToLower(v), " ", "_")
				}
				return false
			}
			return true
		})
		m.refusals.WithLabelValues(reason).Inc()
		if reason == "limit" {
			m.sessionsLimit.Inc()
		}
	case r.Message == "iptables rules repaired", r.Message == "firewall state repaired after a foreign change":
		m.repairs.Inc()
	case strings.HasPrefix(r.Message, "conntrack: event socket overflowed"):
		m.ctOverflows.Inc()
	}
}

// timed wraps a backend to measure each operation. A backend that is a
// rules.Connector stays one.
func (m *metrics) timed(b rules.Backend) rules.Backend {
	t := timedBackend{b, m.backendOps}
	if c, ok := b.(rules.Connector); ok {
		return timedConnector{t, c}
	}
	return t
}

type timedBackend struct {
	b rules.Backend
	h *prometheus.HistogramVec
}

func (t timedBackend) observe(op string, start time.Time, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	t.h.WithLabelValues(op, res).Observe(time.Since(start).Seconds())
}

func (t timedBackend) Open(ctx context.Context, p rules.Pinhole) error {
	start := time.Now()
	err := t.b.Open(ctx, p)
	t.observe("open", start, err)
	return err
}

func (t timedBackend) Close(ctx context.Context, p rules.Pinhole) error {
	start := time.Now()
	err := t.b.Close(ctx, p)
	t.observe("close", start, err)
	return err
}

type timedConnector struct {
	timedBackend
	c rules.Connector
}

func (t timedConnector) Connected(ctx context.Context, p rules.Pinhole) error {
	return t.c.Connected(ctx, p)
}

// serveMetrics serves /metrics, /healthz and /readyz on --metrics-listen.
// Ready means the firewall pieces are installed and every listener is up,
// and not yet draining.
func (d *daemon) serveMetrics(ctx context.Context) error {
	addr := d.cfg.MetricsListen
	if addr == "" {
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.met.reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelError)}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !d.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return d.serveHTTP(ctx, "tcp", addr, mux, "metrics")
}

// serveHTTP serves h on a new listener until run returns.
func (d *daemon) serveHTTP(ctx context.Context, network, addr string, h http.Handler, what string) error {
	ln, err := listen(network, addr)
	if err != nil {
		return fmt.Errorf("listening on %s for %s: %w", addr, what, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(d.log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("serving "+what, "addr", addr, "err", err)
		}
	}()
	d.log.Info("serving "+what, "addr", ln.Addr().String())
	d.cleanups = append(d.cleanups, func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-done
	})
	return nil
}

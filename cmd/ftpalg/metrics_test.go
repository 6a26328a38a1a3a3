package main

import (
	"context"
	"log/slog"
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/rules"
)

// TestMetricsLint runs promlint (the rules of `promtool check metrics`)
// over every metric ftpalg registers, each series made to exist, and checks
// that label values are bounded, lower-case words: a refusal naming a
// client's verb or a close reason with a space must not leak into a label.
func TestMetricsLint(t *testing.T) {
	m := newMetrics()
	m.watchProxy(&alg.Proxy{}, func() int { return 0 })
	log := slog.New(m.tap(slog.DiscardHandler))
	log.Warn("refused", "what", "line too long")
	log.Warn("refused", "what", "XMKD /etc/passwd") // not a known reason: "other"
	log.Warn("refused", "what", "limit")
	log.Warn("iptables rules repaired")
	for _, r := range []string{"used", "ttl", "replaced", "failed", "refused", "session end", "reinitialised", "blind"} {
		m.pinholeClosed(r)
	}
	m.pinholeOpened()
	m.transfer(conntrack.FlowEnd{Counted: true, OrigBytes: 10, ReplyBytes: 1000}, true)
	b := m.timed(&rules.Fake{})
	b.Open(context.Background(), rules.Pinhole{})
	b.Close(context.Background(), rules.Pinhole{})

	problems, err := promlint.NewWithMetricFamilies(mustGather(t, m)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	word := regexp.MustCompile(`^[a-z0-9_.+-]+$|^client->server$|^server->client$`)
	for _, mf := range mustGather(t, m) {
		if mf.GetName() == "ftpalg_build_info" {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, l := range s.GetLabel() {
				if !word.MatchString(l.GetValue()) {
					t.Errorf("%s{%s=%q}: label value is not one lower-case word", mf.GetName(), l.GetName(), l.GetValue())
				}
			}
		}
	}
}

func mustGather(t *testing.T, m *metrics) []*dto.MetricFamily {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// TestMetricsFromLogLines: the counters read from log lines count the
// lines of every backend, and nothing else; the listener is off by default.
func TestMetricsFromLogLines(t *testing.T) {
	m := newMetrics()
	log := slog.New(m.tap(slog.DiscardHandler))
	log.Warn("iptables rules repaired", "missing", "jump")
	log.Warn("firewall state repaired after a foreign change", "table_recreated", true)
	log.Warn("pinhole open failed")
	log.Warn("refused", "what", "limit")
	log.Warn("conntrack: event socket overflowed, events lost; resynchronizing from the table")
	for _, c := range []struct {
		name string
		got  float64
		want float64
	}{
		{"ftpalg_firewall_repairs_total", counterValue(t, m.repairs), 2},
		{"ftpalg_sessions_refused_total", counterValue(t, m.sessionsLimit), 1},
		{"ftpalg_refusals_total{reason=limit}", counterValue(t, m.refusals.WithLabelValues("limit")), 1},
		{"ftpalg_conntrack_event_overflows_total", counterValue(t, m.ctOverflows), 1},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if d := DefaultConfig(); d.MetricsListen != "" {
		t.Errorf("metrics-listen defaults to %q: the listener must be off by default", d.MetricsListen)
	}
}

// counterValue reads one counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		t.Fatal(err)
	}
	return d.GetCounter().GetValue()
}

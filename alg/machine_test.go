package alg_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/nat"
	"github.com/ftpalg/ftpalg/rules"
)

// machineRig drives an alg.Machine the way the Session does, with a fake
// time: plans with the gateway planner, opens at once (or fails when
// failOpen), releases closed pinholes' ports.
type machineRig struct {
	m        *alg.Machine
	ep       alg.Endpoints
	pool     *nat.Pool
	planner  alg.Planner
	now      time.Time
	failOpen bool
	live     map[rules.PinholeID]rules.Pinhole // opened, not closed
	opened   []rules.Pinhole
}

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func newRig(tb testing.TB, ep alg.Endpoints, pol alg.Policy) *machineRig {
	pool, err := nat.NewPool(40000, 40003)
	if err != nil {
		tb.Fatal(err)
	}
	return &machineRig{
		m: alg.NewMachine(1, ep, pol, t0), ep: ep, pool: pool, planner: &nat.Gateway{Pool: pool},
		now: t0, live: map[rules.PinholeID]rules.Pinhole{},
	}
}

// event runs one event, written as in the tables:
//
//	"C <line>"     a command line (CRLF appended)
//	"S <reply>"    a reply; "\n" separates the lines of a multi-line one
//	"+<duration>"  time passes, then Tick
//	"used <n>"     pinhole s1.p<n> was seen used
//	"end"          the session ends
//
// and returns what the machine decided, one string per action.
func (r *machineRig) event(ev string) []string {
	var acts []alg.Action
	switch {
	case strings.HasPrefix(ev, "C "):
		acts = r.m.ClientLine(r.now, []byte(ev[2:]+"\r\n"))
	case strings.HasPrefix(ev, "S "):
		var b bytes.Buffer
		for _, l := range strings.Split(ev[2:], "\n") {
			b.WriteString(l + "\r\n")
		}
		rep, err := ftp.NewReplyReader(&b, 512, 100).ReadReply()
		if err != nil {
			return []string{"bad reply: " + err.Error()}
		}
		acts = r.m.ServerReply(r.now, rep)
	case strings.HasPrefix(ev, "+"):
		d, err := time.ParseDuration(ev[1:])
		if err != nil {
			return []string{"bad duration: " + err.Error()}
		}
		r.now = r.now.Add(d)
		acts = r.m.Tick(r.now)
	case strings.HasPrefix(ev, "used "):
		var n uint32
		fmt.Sscanf(ev, "used %d", &n)
		acts = r.m.PinholeUsed(rules.PinholeID{Session: 1, N: n})
	case ev == "end":
		acts = r.m.End("session end")
	default:
		return []string{"bad event " + ev}
	}
	return r.perform(acts)
}

func (r *machineRig) perform(acts []alg.Action) []string {
	var out []string
	for len(acts) > 0 {
		a := acts[0]
		acts = acts[1:]
		switch a.Kind {
		case alg.ActForward:
			out = append(out, fmt.Sprintf("%s< %s", a.To, strings.TrimRight(string(a.Line), "\r\n")))
		case alg.ActRefused:
			out = append(out, fmt.Sprintf("refused %s: %s", a.What, a.Refusal.Reply))
		case alg.ActPlan:
			out = append(out, fmt.Sprintf("plan %v %v", a.Opening.Announcement.Kind, a.Opening.Announcement.Addr))
			plan, err := r.planner.Plan(context.Background(), r.ep, a.Opening.Announcement)
			acts = append(r.m.Planned(a.Opening, plan, err), acts...)
		case alg.ActOpen:
			out = append(out, "open "+a.Pinhole.String())
			if r.failOpen {
				acts = append(r.m.OpenFailed(a.Opening, errors.New("iptables: exit status 4")), acts...)
				continue
			}
			r.live[a.Pinhole.ID] = a.Pinhole
			r.opened = append(r.opened, a.Pinhole)
			acts = append(r.m.Opened(a.Opening, r.now), acts...)
		case alg.ActClose:
			out = append(out, fmt.Sprintf("close %s %s", a.Pinhole.ID, a.Reason))
			delete(r.live, a.Pinhole.ID)
			if a.Release != nil {
				a.Release()
			}
		case alg.ActHoldClient:
			out = append(out, "hold client")
		case alg.ActTLS:
			out = append(out, fmt.Sprintf("tls blind=%v", a.Blind))
		case alg.ActEnd:
			out = append(out, fmt.Sprintf("end %s: %s", a.What, a.Refusal.Reply))
		case alg.ActError:
			out = append(out, "error "+a.Err.Error())
		default:
			out = append(out, fmt.Sprintf("unknown action %d", a.Kind))
		}
	}
	return out
}

type machineStep struct {
	ev   string
	want []string
}

var machineTests = []struct {
	name     string
	pol      func(*alg.Policy)
	failOpen bool
	steps    []machineStep
}{
	{name: "passive: open before forward, grace after 150", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C USER a", []string{"server< USER a"}},
		{"S 230 in", []string{"client< 230 in"}},
		{"C PASV", []string{"server< PASV"}},
		{"S 227 Entering Passive Mode (198,51,100,7,156,64).", []string{
			"plan PASV 198.51.100.7:40000",
			"open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
			"client< 227 Entering Passive Mode (203,0,113,2,156,64).",
		}},
		{"C RETR f", []string{"server< RETR f"}},
		{"S 150 here", []string{"client< 150 here"}},
		{"+1999ms", nil},
		{"+1ms", []string{"close s1.p1 ttl"}},
		{"S 226 done", []string{"client< 226 done"}},
	}},
	{name: "active: rewritten, closed at first use", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C PORT 192,0,2,2,195,80", []string{
			"plan PORT 192.0.2.2:50000",
			"open s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50000",
			"server< PORT 203,0,113,1,156,64",
		}},
		{"S 200 ok", []string{"client< 200 ok"}},
		{"used 1", []string{"close s1.p1 used"}},
		{"used 1", nil},
	}},
	{name: "bounce and privileged port refused", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C PORT 198,51,100,7,195,80", []string{
			"refused PORT: 500 ftpalg: PORT address must be your own (192.0.2.2); refused",
			"client< 500 ftpalg: PORT address must be your own (192.0.2.2); refused",
		}},
		{"C EPRT |1|192.0.2.2|25|", []string{
			"refused EPRT: 504 ftpalg: data port 25 is below 1024; refused",
			"client< 504 ftpalg: data port 25 is below 1024; refused",
		}},
		{"C PASV", []string{"server< PASV"}},
		{"S 227 (203,0,113,2,0,21)", []string{
			"refused PASV reply: 425 ftpalg: server offered data port 21, below 1024; refused",
			"client< 425 ftpalg: server offered data port 21, below 1024; refused",
		}},
	}},
	{name: "a refusal waits for the replies owed before it", steps: []machineStep{
		{"C PASV", []string{"server< PASV"}},
		{"C PORT 198,51,100,7,195,80", []string{
			"refused PORT: 500 ftpalg: PORT address must be your own (192.0.2.2); refused",
		}},
		{"S 220 hi", []string{"client< 220 hi"}},
		{"S 227 (203,0,113,2,156,64)", []string{
			"plan PASV 203.0.113.2:40000",
			"open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
			"client< 227 (203,0,113,2,156,64)",
			"client< 500 ftpalg: PORT address must be your own (192.0.2.2); refused",
		}},
	}},
	{name: "one pending pinhole: a new announcement replaces it; TTL; session end", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C EPSV", []string{"server< EPSV"}},
		{"S 229 (|||40000|)", []string{
			"plan EPSV 203.0.113.2:40000",
			"open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
			"client< 229 (|||40000|)",
		}},
		{"C EPSV", []string{"server< EPSV"}},
		{"S 229 (|||40001|)", []string{
			"close s1.p1 replaced",
			"plan EPSV 203.0.113.2:40001",
			"open s1.p2 tcp 192.0.2.2 -> 203.0.113.2:40001 snat 203.0.113.1",
			"client< 229 (|||40001|)",
		}},
		{"+30s", []string{"close s1.p2 ttl"}},
		{"C EPSV", []string{"server< EPSV"}},
		{"S 229 (|||40002|)", []string{
			"plan EPSV 203.0.113.2:40002",
			"open s1.p3 tcp 192.0.2.2 -> 203.0.113.2:40002 snat 203.0.113.1",
			"client< 229 (|||40002|)",
		}},
		{"end", []string{"close s1.p3 session end"}},
	}},
	{name: "425 closes; a failed PORT closes; REIN closes", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C PORT 192,0,2,2,195,80", []string{
			"plan PORT 192.0.2.2:50000",
			"open s1.p1 tcp 203.0.113.2 -> 203.0.113.1:40000 dnat 192.0.2.2:50000",
			"server< PORT 203,0,113,1,156,64",
		}},
		{"S 500 no", []string{"close s1.p1 failed", "client< 500 no"}},
		{"C EPRT |1|192.0.2.2|50001|", []string{
			"plan EPRT 192.0.2.2:50001",
			"open s1.p2 tcp 203.0.113.2 -> 203.0.113.1:40001 dnat 192.0.2.2:50001",
			"server< EPRT |1|203.0.113.1|40001|",
		}},
		{"S 200 ok", []string{"client< 200 ok"}},
		{"C LIST", []string{"server< LIST"}},
		{"S 425 cannot", []string{"close s1.p2 failed", "client< 425 cannot"}},
		{"C PORT 192,0,2,2,195,82", []string{
			"plan PORT 192.0.2.2:50002",
			"open s1.p3 tcp 203.0.113.2 -> 203.0.113.1:40002 dnat 192.0.2.2:50002",
			"server< PORT 203,0,113,1,156,66",
		}},
		{"C REIN", []string{"close s1.p3 reinitialised", "server< REIN"}},
	}},
	{name: "backend failure is a 425", failOpen: true, steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C PASV", []string{"server< PASV"}},
		{"S 227 (203,0,113,2,156,64)", []string{
			"plan PASV 203.0.113.2:40000",
			"open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
			"close s1.p1 failed",
			"refused PASV reply: 425 ftpalg: cannot open data connection: firewall error",
			"client< 425 ftpalg: cannot open data connection: firewall error",
		}},
	}},
	{name: "login timeout", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"+59s", nil},
		{"+1s", []string{"end login timeout: 421 ftpalg: not logged in after 1m0s; closing the connection"}},
		{"C NOOP", nil},
	}},
	{name: "REIN logs out: the login timeout counts again", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C USER a", []string{"server< USER a"}},
		{"S 230 in", []string{"client< 230 in"}},
		{"+5m", nil},
		{"C REIN", []string{"server< REIN"}},
		{"S 220 again", []string{"client< 220 again"}},
		{"+59s", nil},
		{"+1s", []string{"end login timeout: 421 ftpalg: not logged in after 1m0s; closing the connection"}},
	}},
	{name: "idle timeout spares a transfer", steps: []machineStep{
		{"S 230 in", []string{"client< 230 in"}},
		{"C RETR big", []string{"server< RETR big"}},
		{"S 150 here", []string{"client< 150 here"}},
		{"+20m", nil},
		{"S 226 done", []string{"client< 226 done"}},
		{"+10m", []string{"end idle timeout: 421 ftpalg: idle for 10m0s; closing the connection"}},
	}},
	{name: "TLS refused: 534, AUTH hidden in FEAT", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C AUTH TLS", []string{
			"refused AUTH: 534 ftpalg: AUTH refused by policy; continue without TLS",
			"client< 534 ftpalg: AUTH refused by policy; continue without TLS",
		}},
		{"C FEAT", []string{"server< FEAT"}},
		{"S 211-Features:\n AUTH TLS\n EPSV\n211 End", []string{"client< 211-Features:\r\n EPSV\r\n211 End"}},
		{"C LPSV", []string{
			"refused LPSV: 502 ftpalg: LPSV not supported; use EPRT/EPSV or PORT/PASV",
			"client< 502 ftpalg: LPSV not supported; use EPRT/EPSV or PORT/PASV",
		}},
	}},
	{name: "TLS passthrough: blind after 234", pol: func(p *alg.Policy) { p.TLS = alg.TLSPassthrough }, steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C EPSV", []string{"server< EPSV"}},
		{"S 229 (|||40000|)", []string{
			"plan EPSV 203.0.113.2:40000",
			"open s1.p1 tcp 192.0.2.2 -> 203.0.113.2:40000 snat 203.0.113.1",
			"client< 229 (|||40000|)",
		}},
		{"C AUTH TLS", []string{"server< AUTH TLS", "hold client"}},
		{"S 234 go", []string{"close s1.p1 blind", "client< 234 go", "tls blind=true"}},
		{"+2h", nil},
	}},
	{name: "syntax errors, then garbage ends", pol: func(p *alg.Policy) { p.MaxSyntaxErrors = 2 }, steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C 227 Entering", []string{
			"refused syntax: 500 ftpalg: syntax error, not an FTP command",
			"client< 500 ftpalg: syntax error, not an FTP command",
		}},
		{"C \x16\x03\x01", []string{"end garbage: 500 ftpalg: not an FTP command; closing the connection"}},
	}},
	{name: "too many refusals", pol: func(p *alg.Policy) { p.MaxRefusals = 1 }, steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C LPRT 4,4,1,2,3,4,2,0,25", []string{
			"refused LPRT: 502 ftpalg: LPRT not supported; use EPRT/EPSV or PORT/PASV",
			"client< 502 ftpalg: LPRT not supported; use EPRT/EPSV or PORT/PASV",
		}},
		{"C LPRT 4,4,1,2,3,4,2,0,25", []string{"end too many refusals: 421 ftpalg: too many refused commands; closing the connection"}},
	}},
	{name: "unsolicited and multi-line 227 are text", steps: []machineStep{
		{"S 220 hi", []string{"client< 220 hi"}},
		{"C STAT", []string{"server< STAT"}},
		{"S 211-x\n227 Entering Passive Mode (198,51,100,7,156,64)\n211 end", []string{
			"client< 211-x\r\n227 Entering Passive Mode (198,51,100,7,156,64)\r\n211 end"}},
		{"S 227 Entering Passive Mode (198,51,100,7,156,64)", []string{"client< 227 Entering Passive Mode (198,51,100,7,156,64)"}},
	}},
}

// TestMachine runs the decision tables with a fake time: no sleeps, every
// timer exactly at its deadline.
func TestMachine(t *testing.T) {
	for _, tc := range machineTests {
		t.Run(tc.name, func(t *testing.T) {
			pol := alg.DefaultPolicy()
			if tc.pol != nil {
				tc.pol(&pol)
			}
			r := newRig(t, ep4, pol)
			r.failOpen = tc.failOpen
			for i, st := range tc.steps {
				got := r.event(st.ev)
				if strings.Join(got, "\n") != strings.Join(st.want, "\n") {
					t.Fatalf("step %d %q:\ngot:\n%s\nwant:\n%s", i, st.ev, strings.Join(got, "\n"), strings.Join(st.want, "\n"))
				}
			}
		})
	}
}

func TestMachineDeadline(t *testing.T) {
	pol := alg.DefaultPolicy()
	r := newRig(t, ep4, pol)
	if d := r.m.Deadline(); !d.Equal(t0.Add(pol.LoginTimeout)) {
		t.Fatalf("deadline %v, want the login timeout", d)
	}
	r.event("S 230 in")
	r.event("C EPSV")
	r.event("S 229 (|||40000|)")
	if d := r.m.Deadline(); !d.Equal(t0.Add(pol.PinholeTTL)) {
		t.Fatalf("deadline %v, want the pinhole TTL", d)
	}
	r.event("used 1")
	if d := r.m.Deadline(); !d.Equal(t0.Add(pol.IdleTimeout)) {
		t.Fatalf("deadline %v, want the idle timeout", d)
	}
}

// FuzzMachine feeds the machine arbitrary events and checks the policy on
// every pinhole it opens (only the other real peer, only to the announcing
// peer, never below 1024), and that nothing stays open, and no pool port
// stays taken, after End.
func FuzzMachine(f *testing.F) {
	for _, tc := range machineTests {
		var evs []string
		for _, st := range tc.steps {
			evs = append(evs, strings.ReplaceAll(st.ev, "\n", "\\n"))
		}
		f.Add(strings.Join(evs, "\n"))
	}
	f.Fuzz(func(t *testing.T, script string) {
		pol := alg.DefaultPolicy()
		pol.MaxLine = 512
		r := newRig(t, ep4, pol)
		lines := strings.Split(script, "\n")
		if len(lines) > 200 {
			lines = lines[:200]
		}
		for _, ev := range lines {
			ev = strings.ReplaceAll(ev, "\\n", "\n")
			if strings.HasPrefix(ev, "+") {
				// Bound the time a step may pass.
				if d, err := time.ParseDuration(ev[1:]); err != nil || d < 0 || d > 24*time.Hour {
					continue
				}
			}
			r.event(ev)
		}
		r.event("end")
		for _, p := range r.opened {
			tgt := p.Target()
			passive := p.Src == ep4.Client.Addr() && tgt.Addr() == ep4.Server.Addr()
			active := p.Src == ep4.Server.Addr() && tgt.Addr() == ep4.Client.Addr()
			if !passive && !active {
				t.Fatalf("pinhole %v lets a peer reach a third party", p)
			}
			if tgt.Port() < 1024 {
				t.Fatalf("pinhole %v targets a privileged port", p)
			}
		}
		if len(r.live) != 0 {
			t.Fatalf("pinholes left open after End: %v", r.live)
		}
		if n := r.pool.InUseCount(); n != 0 {
			t.Fatalf("%d pool ports leaked", n)
		}
		if live := r.m.Live(); len(live) != 0 {
			t.Fatalf("machine still lists %v", live)
		}
	})
}

// TestMachineRewritesPassive checks the rewritten 227 and 229 when the
// planner announces another endpoint (reverse mode: the dialled address,
// a pool port): only the numbers change, the delimiter of a 229 and the
// rest of the line stay as the server wrote them.
func TestMachineRewritesPassive(t *testing.T) {
	ep := alg.Endpoints{
		Client:   ep4.Client,
		Dialled:  netip.MustParseAddrPort("198.51.100.1:21"),
		Upstream: netip.MustParseAddrPort("192.0.2.1:41000"),
		Server:   netip.MustParseAddrPort("192.0.2.20:21"),
	}
	r := newRig(t, ep, alg.DefaultPolicy())
	r.planner = &nat.Reverse{Pool: r.pool}
	r.event("S 220 hi")
	for _, st := range []struct{ cmd, reply, want string }{
		{"PASV", "227 Entering Passive Mode (192,0,2,20,117,48). Yes", "client< 227 Entering Passive Mode (198,51,100,1,156,64). Yes"},
		{"EPSV", "229 Entering Extended Passive Mode (!!!30000!) ok", "client< 229 Entering Extended Passive Mode (!!!40001!) ok"},
		{"EPSV", "229 (|||30001|)", "client< 229 (|||40002|)"},
	} {
		r.event("C " + st.cmd)
		got := r.event("S " + st.reply)
		if !slices.Contains(got, st.want) {
			t.Errorf("%s, %s:\n%s\nwant a line %q", st.cmd, st.reply, strings.Join(got, "\n"), st.want)
		}
	}
}

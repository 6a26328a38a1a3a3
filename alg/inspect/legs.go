package inspect

import "time"

// A capture taken on the gateway itself (tcpdump -i any) holds both legs of
// each proxied session: the client's connection, intercepted (client ->
// server:21 as the client dialled it), and ftpalg's own connection to the
// same server, which it opened right after. linkLegs pairs them in the
// report (Session.Linked, Session.Leg), so that one FTP session does not
// read as two unrelated ones.

// legWindow bounds how long after the client's connection the proxy's own
// one may start to count as its other leg.
const legWindow = 10 * time.Second

// legCommands is how many leading commands must match, line for line.
const legCommands = 3

// linkLegs pairs the legs of proxied sessions in sessions (sorted by
// start): same server, another client, started within legWindow after it,
// and the same leading commands (PORT and EPRT aside: the proxy rewrites
// them). Each session is linked at most once, to the earliest match.
func linkLegs(sessions []*Session) {
	for i, in := range sessions {
		if in.Linked != "" {
			continue
		}
		for _, out := range sessions[i+1:] {
			if out.Start.Sub(in.Start) > legWindow {
				break
			}
			if out.Linked != "" || out.Server != in.Server || out.Client == in.Client || !sameCommands(in, out) {
				continue
			}
			in.Linked, in.Leg = out.ID, LegClient
			out.Linked, out.Leg = in.ID, LegServer
			break
		}
	}
}

// The legs of a proxied session.
const (
	// LegClient is the client's connection (intercepted or dialled to
	// ftpalg).
	LegClient = "client"
	// LegServer is ftpalg's own connection to the server.
	LegServer = "server"
)

func sameCommands(a, b *Session) bool {
	ca, cb := commandLines(a), commandLines(b)
	if len(ca) == 0 || len(ca) != len(cb) {
		return false
	}
	for i := range ca {
		if ca[i] != cb[i] {
			return false
		}
	}
	return true
}

func commandLines(s *Session) []string {
	var out []string
	for _, e := range s.Events {
		if len(out) == legCommands {
			break
		}
		if e.Kind != "command" {
			continue
		}
		if len(e.Line) >= 4 && (e.Line[:4] == "PORT" || e.Line[:4] == "EPRT") {
			continue
		}
		out = append(out, e.Line)
	}
	return out
}

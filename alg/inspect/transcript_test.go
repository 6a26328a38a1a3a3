package inspect

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/alg/ftp"
	"github.com/ftpalg/ftpalg/nat"
)

// transcriptRecord is one C:/S: record of a recorded transcript (see
// alg/ftp/testdata/transcripts/README.md).
type transcriptRecord struct {
	client bool
	data   []byte
}

func loadRecords(t *testing.T, path string) []transcriptRecord {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var recs []transcriptRecord
	for len(raw) > 0 {
		var rec []byte
		// A record runs to its own terminator: "\n" ends the payload's
		// line (kept); C~/S~ records end at the file's "\n" (dropped).
		prefix := string(raw[:min(3, len(raw))])
		i := bytes.IndexByte(raw, '\n')
		if i < 0 {
			i = len(raw) - 1
		}
		rec, raw = raw[:i+1], raw[i+1:]
		switch prefix {
		case "C: ", "S: ":
			recs = append(recs, transcriptRecord{client: prefix == "C: ", data: rec[3:]})
		case "C~ ", "S~ ":
			recs = append(recs, transcriptRecord{client: prefix == "C~ ", data: bytes.TrimSuffix(rec[3:], []byte("\n"))})
		}
	}
	return recs
}

// decisions of the proxy's core (alg.Machine) for every line of a
// transcript, one string per command line and per reply.
func machineDecisions(t *testing.T, recs []transcriptRecord, ep alg.Endpoints, pol alg.Policy) []string {
	t.Helper()
	pool, err := nat.NewPool(40000, 40999)
	if err != nil {
		t.Fatal(err)
	}
	planner := &nat.Gateway{Pool: pool}
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	m := alg.NewMachine(1, ep, pol, now)
	// The capture shows traffic that was not proxied: a line ftpalg
	// would refuse still reached the server, which answered it.
	m.SetMirror()

	// The replies, whole, and how many server records each spans.
	var srv bytes.Buffer
	for _, r := range recs {
		if !r.client {
			srv.Write(r.data)
		}
	}
	var replies []ftp.Reply
	rr := ftp.NewReplyReader(bytes.NewReader(srv.Bytes()), pol.MaxLine, pol.MaxReplyLines)
	for {
		r, err := rr.ReadReply()
		if err != nil {
			break
		}
		replies = append(replies, r)
	}

	var out []string
	run := func(line string, acts []alg.Action) {
		var notes []string
		for len(acts) > 0 {
			a := acts[0]
			acts = acts[1:]
			switch a.Kind {
			case alg.ActRefused:
				notes = append(notes, "refused "+a.Refusal.Reply)
			case alg.ActEnd:
				notes = append(notes, "end "+a.Refusal.Reply)
			case alg.ActPlan:
				plan, err := planner.Plan(context.Background(), ep, a.Opening.Announcement)
				acts = append(m.Planned(a.Opening, plan, err), acts...)
			case alg.ActOpen:
				acts = append(m.Opened(a.Opening, now), acts...)
				rewritten := ""
				if p := a.Opening.Plan.Announce; announceChanged(a.Opening.Announcement, p) {
					rewritten = " rewritten " + p.String()
				}
				notes = append(notes, fmt.Sprintf("pinhole %s%s", a.Pinhole, rewritten))
			case alg.ActClose:
				if a.Release != nil {
					a.Release()
				}
			}
		}
		out = append(out, strings.Join(append([]string{line}, notes...), "; "))
	}
	next, lines := 0, 0
	for _, r := range recs {
		now = now.Add(time.Millisecond)
		if r.client && !bytes.HasSuffix(r.data, []byte("\n")) {
			continue // not a line: the stream ends inside it (C~)
		}
		if r.client {
			cmd, err := ftp.ParseCommand(r.data)
			what := "C invalid"
			if err == nil {
				what = "C " + cmd.Verb
			}
			run(what, m.ClientLine(now, r.data))
			continue
		}
		if next >= len(replies) {
			continue
		}
		if lines++; lines < len(replies[next].Lines) {
			continue
		}
		rep := replies[next]
		next, lines = next+1, 0
		answers := m.Head()
		if answers == "" {
			answers = "connect"
		}
		run(fmt.Sprintf("S %d answers %s", rep.Code, answers), m.ServerReply(now, rep))
	}
	return out
}

func announceChanged(a alg.Announcement, p netip.AddrPort) bool {
	if a.Kind == alg.EPSV {
		return p.Port() != a.Addr.Port()
	}
	return p != a.Addr
}

// inspectDecisions runs the transcript through the capture inspector (as a
// capture of the same traffic) and states its findings in the same form.
func inspectDecisions(t *testing.T, recs []transcriptRecord, client, server string) []string {
	t.Helper()
	b := newCapture(t)
	c := b.open(client, server)
	for _, r := range recs {
		c.send(r.client, string(r.data))
	}
	c.close()
	rep := inspectBytes(t, b.pcap(), Options{})
	s := oneSession(t, rep)
	refused := map[time.Time][]string{}
	for _, v := range s.Violations {
		if v.Reply != "" {
			note := "refused " + v.Reply
			if v.End {
				note = "end " + v.Reply
			}
			refused[v.Time] = append(refused[v.Time], note)
		}
	}
	announced := map[time.Time][]string{}
	for _, a := range s.Announcements {
		if a.Verdict != VerdictPinhole {
			continue
		}
		rewritten := ""
		if a.Rewritten.IsValid() {
			rewritten = " rewritten " + a.Rewritten.String()
		}
		announced[a.Time] = append(announced[a.Time], fmt.Sprintf("pinhole %s%s", a.Pinhole.Rule, rewritten))
	}
	var out []string
	for _, e := range s.Events {
		var line string
		switch e.Kind {
		case "command":
			line = "C " + strings.ToUpper(strings.Fields(e.Line + " x")[0])
		case "invalid":
			line = "C invalid"
		case "reply", "preliminary":
			ans := e.Answers
			if ans == "" {
				ans = "connect"
			}
			line = fmt.Sprintf("S %d answers %s", e.Code, ans)
		default:
			continue
		}
		notes := append(append([]string{line}, refused[e.Time]...), announced[e.Time]...)
		out = append(out, strings.Join(notes, "; "))
	}
	return out
}

// TestTranscriptsSameDecisions replays every recorded transcript through
// the proxy's core (alg.Machine, as alg.Session drives it) and through the
// capture inspector, and requires the same decision for every line: which
// command a reply answers, what is refused with which reply, which pinhole
// is opened and how the announcement is rewritten.
func TestTranscriptsSameDecisions(t *testing.T) {
	files, err := filepath.Glob("../ftp/testdata/transcripts/*.txt")
	if err != nil || len(files) < 50 {
		t.Fatalf("found %d transcripts (%v), want the recorded set of at least 50", len(files), err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txt"), func(t *testing.T) {
			recs := loadRecords(t, f)
			client, server := "127.0.0.1:50000", "127.0.0.1:21"
			if strings.HasSuffix(f, "6.txt") {
				client, server = "[::1]:50000", "[::1]:21"
			}
			cap := netip.MustParseAddrPort(client)
			srv := netip.MustParseAddrPort(server)
			// As the inspector plans: ftpalg at the capture point, no NAT.
			ep := alg.Endpoints{Client: cap, Dialled: srv, Upstream: cap, Server: srv}
			got := machineDecisions(t, recs, ep, alg.DefaultPolicy())
			want := inspectDecisions(t, recs, client, server)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("core and inspect decide differently:\ncore:\n%s\ninspect:\n%s",
					strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			announcements := 0
			for _, d := range got {
				if strings.Contains(d, "pinhole ") {
					announcements++
				}
			}
			if announcements == 0 && !strings.Contains(f, "misc") {
				t.Errorf("no pinhole in %s: the replay decided nothing worth comparing", f)
			}
		})
	}
}

package inspect

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	clock = "15:04:05.000000"
	stamp = "2006-01-02T15:04:05.000000Z07:00"
)

// WriteText writes the report for people: a header, one block per session
// (its events, announcements with their pinholes, and violations), and a
// summary line. Times are UTC.
func (r *Report) WriteText(w io.Writer) error {
	b := bufio.NewWriter(w)
	ports := make([]string, len(r.ControlPorts))
	for i, p := range r.ControlPorts {
		ports[i] = strconv.Itoa(int(p))
	}
	fmt.Fprintf(b, "%s capture, %d packets; FTP control ports %s\n", r.Format, r.Packets, strings.Join(ports, ","))
	for _, a := range r.Assumptions {
		fmt.Fprintf(b, "assumption: %s\n", a)
	}
	for _, msg := range r.Warnings {
		fmt.Fprintf(b, "warning: %s\n", msg)
	}
	for _, s := range r.Sessions {
		writeSession(b, s)
	}
	fmt.Fprintf(b, "\n%d sessions, %d announcements, %d violations\n", len(r.Sessions), r.Announcements(), r.Violations())
	if err := b.Flush(); err != nil {
		return fmt.Errorf("writing report: %w", err)
	}
	return nil
}

func writeSession(b *bufio.Writer, s *Session) {
	fmt.Fprintf(b, "\nsession %s  client %s  server %s  %s .. %s  %s\n", s.ID, s.Client, s.Server,
		s.Start.UTC().Format(stamp), s.End.UTC().Format(clock), s.State)
	if s.Linked != "" {
		other := map[string]string{LegClient: "ftpalg's connection to the server", LegServer: "the client's connection"}[s.Leg]
		fmt.Fprintf(b, "  one proxied session with %s: %s\n", s.Linked, other)
	}
	for _, e := range s.Events {
		who := "C"
		if e.Dir == DirServer {
			who = "S"
		}
		prefix := fmt.Sprintf("  %s %s  ", e.Time.UTC().Format(clock), who)
		switch e.Kind {
		case "command", "reply", "preliminary":
			lines := strings.Split(e.Line, "\n")
			for i, l := range lines {
				if i == 0 {
					b.WriteString(prefix)
				} else {
					b.WriteString(strings.Repeat(" ", len(prefix)))
				}
				b.WriteString(printable(l))
				if i == len(lines)-1 && e.Kind != "command" {
					if e.Answers != "" {
						fmt.Fprintf(b, "    [%s]", e.Answers)
					} else {
						b.WriteString("    [unpaired]")
					}
				}
				b.WriteByte('\n')
			}
		default:
			fmt.Fprintf(b, "%s-- %s: %s\n", prefix, e.Kind, printable(e.Line))
		}
		if e.Note != "" {
			fmt.Fprintf(b, "%s   (%s)\n", strings.Repeat(" ", len(prefix)), e.Note)
		}
	}
	if len(s.Announcements) > 0 {
		b.WriteString("  announcements:\n")
	}
	for _, a := range s.Announcements {
		fmt.Fprintf(b, "    %s %s %s: ", a.Time.UTC().Format(clock), a.Kind, a.Announced)
		if a.Pinhole != nil {
			fmt.Fprintf(b, "pinhole %s", a.Pinhole.Rule)
			if a.Rewritten.IsValid() {
				fmt.Fprintf(b, "; announced as %s", a.Rewritten)
			}
		} else {
			b.WriteString("refused")
		}
		switch {
		case a.Data != nil && a.Used:
			fmt.Fprintf(b, "; used at %s by %s -> %s", a.Data.Time.UTC().Format(clock), a.Data.From, a.Data.To)
		case a.Data != nil:
			fmt.Fprintf(b, "; not used: %s -> %s tried at %s, never accepted (no SYN-ACK)",
				a.Data.From, a.Data.To, a.Data.Time.UTC().Format(clock))
		default:
			b.WriteString("; no data connection seen")
		}
		b.WriteByte('\n')
	}
	if len(s.Violations) > 0 {
		b.WriteString("  violations:\n")
	}
	for _, v := range s.Violations {
		who := "C"
		if v.Dir == DirServer {
			who = "S"
		}
		why := strings.TrimPrefix(v.Why, v.What+": ") // "bounce: PORT names ..."
		fmt.Fprintf(b, "    %s %s  %s: %s\n", v.Time.UTC().Format(clock), who, v.What, printable(why))
		switch {
		case v.Reply != "" && v.End:
			fmt.Fprintf(b, "                       ftpalg answers %q and ends the session\n", v.Reply)
		case v.Reply != "":
			fmt.Fprintf(b, "                       ftpalg answers %q\n", v.Reply)
		default:
			b.WriteString("                       ftpalg passes it on; reported as suspicious\n")
		}
	}
	if s.DroppedEvents > 0 {
		fmt.Fprintf(b, "  (%d more events not recorded: limit reached)\n", s.DroppedEvents)
	}
}

// printable returns s as is when it holds only printable characters, else
// Go-quoted, so that a hostile line cannot play tricks on a terminal.
func printable(s string) string {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

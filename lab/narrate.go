package lab

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// ANSI SGR sequences used when colour is on.
const (
	sgrReset  = "\x1b[0m"
	sgrBold   = "\x1b[1m"
	sgrDim    = "\x1b[2m"
	sgrRed    = "\x1b[31m"
	sgrGreen  = "\x1b[32m"
	sgrYellow = "\x1b[33m"
	sgrCyan   = "\x1b[36m"
)

// labelWidth is the width of the label column of Field lines.
const labelWidth = 11

// Narrator writes the lab's story for a person: plain text, or the same
// text with ANSI colours for a terminal. Write errors are ignored: the story
// is best effort, the lab's result does not depend on it.
type Narrator struct {
	// W receives the text.
	W io.Writer
	// Color adds ANSI colours and bold.
	Color bool
}

func (n *Narrator) paint(sgr, s string) string {
	if !n.Color || s == "" {
		return s
	}
	return sgr + s + sgrReset
}

func (n *Narrator) printf(format string, a ...any) { fmt.Fprintf(n.W, format, a...) }

// Title prints the lab's title.
func (n *Narrator) Title(s string) { n.printf("%s\n", n.paint(sgrBold, s)) }

// Para prints a paragraph of explanation, indented, with a blank line
// before it.
func (n *Narrator) Para(lines ...string) {
	n.printf("\n")
	for _, l := range lines {
		n.printf("  %s\n", l)
	}
}

// Text prints lines of explanation, indented, without a blank line.
func (n *Narrator) Text(lines ...string) {
	for _, l := range lines {
		n.printf("  %s\n", l)
	}
}

// Act prints the heading of a part of the story.
func (n *Narrator) Act(title string) {
	n.printf("\n%s\n", n.paint(sgrBold, "== "+title+" =="))
}

// Step prints the heading of step num of total.
func (n *Narrator) Step(num, total int, title string) {
	n.printf("\n%s\n", n.paint(sgrBold+sgrCyan, fmt.Sprintf("-- Step %d/%d: %s", num, total, title)))
}

// Field prints one labelled line of a step.
func (n *Narrator) Field(label, value string) {
	n.printf("   %s %s\n", n.paint(sgrCyan, pad(label, labelWidth)), value)
}

// Highlight prints a labelled line that shows something changing (an
// announcement and its rewrite).
func (n *Narrator) Highlight(label, value string) {
	n.printf("   %s %s\n", n.paint(sgrCyan, pad(label, labelWidth)), n.paint(sgrYellow, value))
}

// Lines prints a label and then lines (firewall rules), dimmed, each on its
// own line under the value column.
func (n *Narrator) Lines(label, intro string, lines []string) {
	n.Field(label, intro)
	indent := strings.Repeat(" ", 3+labelWidth+1)
	for _, l := range lines {
		n.printf("%s%s\n", indent, n.paint(sgrDim, l))
	}
}

// Result prints the verdict of a step.
func (n *Narrator) Result(ok bool, what string) {
	word := n.paint(sgrGreen+sgrBold, "PASS")
	if !ok {
		word = n.paint(sgrRed+sgrBold, "FAIL")
	}
	n.printf("   %s %s\n", word, what)
}

// Summary prints the verdict of every step that ran and the overall one;
// total is the number of steps planned.
func (n *Narrator) Summary(steps []StepResult, total int, elapsed time.Duration) {
	n.Act("Summary")
	failed := 0
	for i, s := range steps {
		word := n.paint(sgrGreen, "PASS")
		if !s.Passed {
			word = n.paint(sgrRed, "FAIL")
			failed++
		}
		n.printf("  %s %2d. %s\n", word, i+1, s.Title)
	}
	n.printf("\n")
	secs := elapsed.Seconds()
	switch {
	case failed == 0 && len(steps) == total:
		n.printf("  %s\n", n.paint(sgrGreen+sgrBold, fmt.Sprintf("All %d steps did what they said (%.1fs).", total, secs)))
	case len(steps) < total:
		n.printf("  %s\n", n.paint(sgrRed+sgrBold, fmt.Sprintf(
			"%d of %d steps did not do what they said, and the lab stopped after step %d of %d (%.1fs).",
			failed, len(steps), len(steps), total, secs)))
	default:
		n.printf("  %s\n", n.paint(sgrRed+sgrBold, fmt.Sprintf("%d of %d steps did not do what they said (%.1fs).", failed, total, secs)))
	}
}

// pad pads s with spaces to width w (s may contain ANSI sequences, which
// take no room).
func pad(s string, w int) string {
	visible := len([]rune(stripANSI(s)))
	if visible >= w {
		return s
	}
	return s + strings.Repeat(" ", w-visible)
}

// stripANSI removes ANSI SGR sequences from s.
func stripANSI(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == 0x1b && i+1 < len(s) && s[i+1] == '[' {
			j := i + 2
			for j < len(s) && (s[j] == ';' || s[j] >= '0' && s[j] <= '9') {
				j++
			}
			if j < len(s) && s[j] == 'm' {
				i = j
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// formatBytes formats n bytes with a binary unit: "512 B", "2.0 MiB".
func formatBytes(n float64) string {
	units := []string{"B", "KiB", "MiB", "GiB"}
	i := 0
	for n >= 1024 && i < len(units)-1 {
		n /= 1024
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%.0f %s", n, units[i])
	}
	return fmt.Sprintf("%.1f %s", n, units[i])
}

// formatRate formats bytes moved in d as a rate: "1.2 GiB/s".
func formatRate(bytes int64, d time.Duration) string {
	if d <= 0 {
		d = time.Microsecond
	}
	return formatBytes(float64(bytes)/d.Seconds()) + "/s"
}

// formatDuration rounds d for a person: "3.2 ms", "1.25 s".
func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%d µs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000)
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

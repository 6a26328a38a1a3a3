package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestStatusSocketStaleAndForeign: a socket a killed run left behind is
// replaced at the next start, and the new one is 0600; a path that is not a
// socket is refused and left alone.
func TestStatusSocketStaleAndForeign(t *testing.T) {
	dir := t.TempDir()
	newDaemon := func(path string) *daemon {
		return &daemon{cfg: Config{StatusSocket: path}, log: slog.New(slog.DiscardHandler), met: newMetrics()}
	}
	cleanup := func(d *daemon) {
		for i := len(d.cleanups) - 1; i >= 0; i-- {
			d.cleanups[i]()
		}
	}

	// A stale socket: bound, nobody listening, file left (as after kill -9).
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	d := newDaemon(stale)
	if err := d.listenStatus(context.Background()); err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	fi, err := os.Lstat(stale)
	if err != nil || fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("status socket %v, %v; want a socket with mode 0600", fi.Mode(), err)
	}
	// ftpalg status --json reads it: the schema, and label values as they
	// are (client->server, not client-\u003eserver).
	var out, errOut strings.Builder
	if code := mainErr([]string{"status", "--socket", stale, "--json"}, &out, &errOut); code != 0 {
		t.Fatalf("ftpalg status: exit %d: %s", code, errOut.String())
	}
	var st Status
	if err := json.Unmarshal([]byte(out.String()), &st); err != nil || st.Schema != "ftpalg-status/1" ||
		!strings.Contains(out.String(), `direction=\"client->server\"`) {
		t.Errorf("ftpalg status --json: %v\n%s", err, out.String())
	}
	// A second daemon on the same socket is refused while the first answers.
	if err := newDaemon(stale).listenStatus(context.Background()); err == nil {
		t.Error("a second daemon took the socket of a running one")
	}
	cleanup(d)

	// A regular file (a mistyped path) is not removed.
	file := filepath.Join(dir, "ftpalg.toml")
	if err := os.WriteFile(file, []byte("mode = \"gateway\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	d = newDaemon(file)
	if err := d.listenStatus(context.Background()); err == nil {
		cleanup(d)
		t.Fatal("a regular file was taken for the status socket")
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "mode = \"gateway\"\n" {
		t.Errorf("the file under --status-socket was changed: %q, %v", b, err)
	}
}

// TestStatusSchemaDocumented: the README's ftpalg-status/1 example is the
// schema: it decodes strictly into Status (no unknown field) and names
// every field of it, and the text output is readable (no \u003e).
func TestStatusSchemaDocumented(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, _ := strings.Cut(string(readme), "\n### Status\n")
	sec, _, _ = strings.Cut(sec, "\n## ")
	_, ex, ok := strings.Cut(sec, "```\n")
	ex, _, _ = strings.Cut(ex, "```\n")
	if !ok || !strings.Contains(ex, `"schema": "ftpalg-status/1"`) {
		t.Fatalf("no ftpalg-status/1 example in the README's Status section")
	}
	dec := json.NewDecoder(strings.NewReader(ex))
	dec.DisallowUnknownFields()
	var st Status
	if err := dec.Decode(&st); err != nil {
		t.Fatalf("the README's example is not the schema: %v", err)
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[Status](), reflect.TypeFor[StatusSession](), reflect.TypeFor[StatusPinhole]()} {
		for f := range typ.Fields() {
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if !strings.Contains(ex, `"`+name+`":`) && !strings.Contains(sec, "`"+name+"`") {
				t.Errorf("the README does not document %s.%s (%q)", typ.Name(), f.Name, name)
			}
		}
	}
	var out strings.Builder
	printStatus(&out, st)
	if !strings.Contains(out.String(), "s12.p3") || strings.Contains(out.String(), `\u00`) {
		t.Errorf("text status:\n%s", out.String())
	}
}

package netlab

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Transfer returns a ready Transfer against s over family f: RETR of Big,
// STOR of a fresh 1 MiB+ file into UploadDir, or LIST of ListDir. Local
// files live in t.TempDir().
func (s *Server) Transfer(t testing.TB, tool Tool, mode Mode, op Op, f Family) Transfer {
	t.Helper()
	x := Transfer{Tool: tool, Mode: mode, Op: op, Server: s.Addr(f), User: s.User, Pass: s.Pass}
	tag := fmt.Sprintf("%s-%s-%s", tool, strings.ToLower(string(mode)), strings.ToLower(f.String()))
	switch op {
	case Retr:
		x.Remote = s.Big.Path
		x.Local = filepath.Join(t.TempDir(), "retr-"+tag+".bin")
	case Stor:
		name := s.nextUploadName("stor-" + tag)
		x.Remote = path.Join(s.UploadDir, name)
		x.Local = filepath.Join(t.TempDir(), name)
		h := fnv.New64a()
		h.Write([]byte(name))
		if _, err := WriteRandomFile(x.Local, 1<<20+777, h.Sum64()); err != nil {
			t.Fatal(err)
		}
	case List:
		x.Remote = s.ListDir
	}
	return x
}

// Verify checks that r is a complete, correct transfer against s: the
// client succeeded, announced the data connection with the requested mode,
// and RETR got the exact bytes of the file, STOR left the exact bytes of
// the local file on the server, LIST showed every name of the directory.
func (s *Server) Verify(r Result) error {
	x := r.Transfer
	if r.Err != nil {
		return fmt.Errorf("transfer failed: %w\n%s", r.Err, r.Summary())
	}
	if !r.SentCommand(string(x.Mode)) {
		return fmt.Errorf("client did not send %s\n%s", x.Mode, r.Summary())
	}
	// curl falls back from EPSV to PASV (and EPRT to PORT) when the first
	// try fails; a transfer that worked only after a fallback does not count.
	for _, m := range Modes {
		if m != x.Mode && r.SentCommand(string(m)) {
			return fmt.Errorf("client sent %s as well as %s (fallback)\n%s", m, x.Mode, r.Summary())
		}
	}
	switch x.Op {
	case Retr:
		n, sum, err := FileSHA256(s.LocalPath(x.Remote))
		if err != nil {
			return err
		}
		if r.Bytes != n || r.SHA256 != sum {
			return fmt.Errorf("downloaded %d bytes sha256 %s, server has %d bytes sha256 %s\n%s", r.Bytes, r.SHA256, n, sum, r.Summary())
		}
	case Stor:
		wantN, want, err := FileSHA256(x.Local)
		if err != nil {
			return err
		}
		n, sum, err := FileSHA256(s.LocalPath(x.Remote))
		if err != nil {
			return fmt.Errorf("uploaded file: %w\n%s", err, r.Summary())
		}
		if n != wantN || sum != want {
			return fmt.Errorf("server has %d bytes sha256 %s, uploaded %d bytes sha256 %s\n%s", n, sum, wantN, want, r.Summary())
		}
	case List:
		entries, err := os.ReadDir(s.LocalPath(x.Remote))
		if err != nil {
			return err
		}
		if len(entries) == 0 {
			return fmt.Errorf("directory %s is empty: nothing to check", x.Remote)
		}
		for _, e := range entries {
			if !strings.Contains(r.Stdout, e.Name()) {
				return fmt.Errorf("listing lacks %q:\n%s\n%s", e.Name(), r.Stdout, r.Summary())
			}
		}
	}
	return nil
}

// Matrix returns every supported transfer (client, mode, family) of every
// operation in ops against s.
func Matrix(t testing.TB, s *Server, ops []Op) []Transfer {
	var xs []Transfer
	for _, tool := range Tools {
		for _, f := range Families {
			for _, mode := range Modes {
				if !Supported(tool, mode, f) {
					continue
				}
				for _, op := range ops {
					xs = append(xs, s.Transfer(t, tool, mode, op, f))
				}
			}
		}
	}
	return xs
}

// RunAll runs the transfers from ns, at most limit at a time (they mostly
// wait, so more than -parallel), and returns the results in order.
func RunAll(ctx context.Context, ns *NS, xs []Transfer, limit int) []Result {
	res := make([]Result, len(xs))
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i, x := range xs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			res[i] = RunTransfer(ctx, ns, x)
		})
	}
	wg.Wait()
	return res
}

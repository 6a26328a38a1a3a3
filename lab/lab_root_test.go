package lab

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/lab/netlab/roottest"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// A lab whose ftpalg cannot start fails, says so, and still removes
// everything it built.
func TestRunFailsAndCleansUp(t *testing.T) {
	if err := Preflight(); err != nil {
		roottest.Unavailable(t, "%v", err)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{Ftpalg: "/bin/false", Out: &out, FileSize: 4096})
	if !errors.Is(err, ErrStepsFailed) {
		t.Fatalf("Run with a broken ftpalg: %v, want ErrStepsFailed\n%s", err, out.String())
	}
	if len(res.Steps) != 3 || !res.Steps[0].Passed || !res.Steps[1].Passed || res.Steps[2].Passed {
		t.Errorf("steps %+v: want the two steps without ftpalg passed, then starting ftpalg failed", res.Steps)
	}
	for _, want := range []string{"FAIL", "did not start", "the lab stopped after step 3 of 16", "Removed the lab network"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the story lacks %q:\n%s", want, out.String())
		}
	}
	names, err := netlab.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		for _, ours := range res.Namespaces {
			if n == ours {
				t.Errorf("namespace %s left behind", n)
			}
		}
	}
}

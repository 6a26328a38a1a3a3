package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDebPackageFiles checks contrib/deb/nfpm.yaml without building the
// package (CI builds and installs it): every source file it names exists
// (bin/ is built by make deb), the maintainer scripts are executable and
// parse as POSIX sh, and the service is stopped before the binary is
// removed (its drain and ExecStopPost remove the firewall rules; without
// the binary a leftover could never be flushed).
func TestDebPackageFiles(t *testing.T) {
	root := "../.."
	y, err := os.ReadFile(filepath.Join(root, "contrib/deb/nfpm.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	scripts := map[string]string{}
	for _, l := range strings.Split(string(y), "\n") {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "- "))
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "src":
			if strings.HasPrefix(v, "bin/") {
				continue
			}
			if _, err := os.Stat(filepath.Join(root, v)); err != nil {
				t.Errorf("nfpm.yaml: src %s: %v", v, err)
			}
		case "postinstall", "preremove", "postremove", "preinstall":
			scripts[k] = v
		}
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range scripts {
		p := filepath.Join(root, v)
		fi, err := os.Stat(p)
		if err != nil {
			t.Errorf("%s %s: %v", k, v, err)
			continue
		}
		if fi.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s %s is not executable", k, v)
		}
		if out, err := exec.Command(sh, "-n", p).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", v, err, out)
		}
	}
	prerm, err := os.ReadFile(filepath.Join(root, scripts["preremove"]))
	if scripts["preremove"] == "" || err != nil || !strings.Contains(string(prerm), `"$1" = remove`) ||
		!strings.Contains(string(prerm), "stop ftpalg.service") {
		t.Errorf("no preremove that stops ftpalg.service on remove (%v)", err)
	}
}

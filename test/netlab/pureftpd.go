package netlab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// pureFTPdRoots are where EnsurePureFTPd looks for an extracted pure-ftpd,
// after /usr/sbin/pure-ftpd. FTPALG_PEERS_ROOT overrides the first.
func pureFTPdRoots() []string {
	roots := []string{"/opt/ftpservers/root"}
	if r := os.Getenv("FTPALG_PEERS_ROOT"); r != "" {
		roots = append([]string{r}, roots...)
	}
	return roots
}

var ensurePure struct {
	once       sync.Once
	bin, authd string
	env        []string
	err        error
}

// EnsurePureFTPd finds pure-ftpd and pure-authd: installed in /usr/sbin, or
// extracted from the Debian package into $FTPALG_PEERS_ROOT or
// /opt/ftpservers/root (pure-ftpd conflicts with vsftpd, so it is extracted
// rather than installed). If neither has it, it runs `install-peers.sh
// --pure-ftpd`, which downloads the packages with apt-get and extracts them.
// It returns the two programs and the environment (LD_LIBRARY_PATH for an
// extracted libsodium) to run them with.
func EnsurePureFTPd() (bin, authd string, env []string, err error) {
	e := &ensurePure
	e.once.Do(func() {
		e.bin, e.authd, e.env, e.err = findPureFTPd()
		if e.err == nil {
			return
		}
		script, serr := installScript()
		if serr != nil {
			e.err = errors.Join(e.err, serr)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if out, rerr := exec.CommandContext(ctx, "sh", script, "--pure-ftpd").CombinedOutput(); rerr != nil {
			e.err = errors.Join(e.err, fmt.Errorf("running %s --pure-ftpd: %w: %s", script, rerr, tail(string(out), 2048)))
			return
		}
		e.bin, e.authd, e.env, e.err = findPureFTPd()
	})
	return e.bin, e.authd, e.env, e.err
}

func findPureFTPd() (bin, authd string, env []string, err error) {
	if isExec("/usr/sbin/pure-ftpd") && isExec("/usr/sbin/pure-authd") {
		return "/usr/sbin/pure-ftpd", "/usr/sbin/pure-authd", nil, nil
	}
	for _, root := range pureFTPdRoots() {
		bin, authd := filepath.Join(root, "usr/sbin/pure-ftpd"), filepath.Join(root, "usr/sbin/pure-authd")
		if !isExec(bin) || !isExec(authd) {
			continue
		}
		libs, _ := filepath.Glob(filepath.Join(root, "usr/lib/*-linux-gnu"))
		if len(libs) > 0 {
			env = []string{"LD_LIBRARY_PATH=" + strings.Join(libs, ":")}
		}
		return bin, authd, env, nil
	}
	return "", "", nil, fmt.Errorf("pure-ftpd not found in /usr/sbin or %s", strings.Join(pureFTPdRoots(), ", "))
}

func isExec(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// installScript returns the path of test/install-peers.sh, next to this
// package's source.
func installScript() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("locating install-peers.sh: no caller information")
	}
	p := filepath.Join(filepath.Dir(file), "..", "install-peers.sh")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("locating install-peers.sh: %w", err)
	}
	return p, nil
}

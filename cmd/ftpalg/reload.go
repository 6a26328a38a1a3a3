package main

import (
	"flag"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// handleSignals: SIGHUP reloads; the first SIGINT/SIGTERM starts the drain,
// a second one cuts it short.
func (d *daemon) handleSignals(cancel func()) (stop func()) {
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	go func() {
		stops := 0
		// A SIGHUP during the start (the file may have changed after it
		// was read) is applied once ftpalg serves, not dropped.
		pending, started := false, d.serving
		for {
			select {
			case <-done:
				return
			case <-started:
				started = nil
				if pending {
					pending = false
					d.log.Info("reloading: SIGHUP arrived during the start")
					d.reload()
				}
			case s := <-ch:
				serving := false
				select {
				case <-d.serving:
					serving = true
				default:
				}
				if s == syscall.SIGHUP {
					if serving {
						d.reload()
					} else if stops == 0 {
						pending = true
						d.log.Info("reload deferred: ftpalg is still starting; it reloads once it serves")
					}
					continue
				}
				if stops++; stops == 1 {
					cancel()
				} else if serving {
					d.proxy.EndDrain()
				}
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

// reload re-reads the file and the flags (which still win) and applies
// what can change to new sessions; see the README's "Reloading".
func (d *daemon) reload() {
	d.reloadCert()
	if d.path == "" {
		d.log.Warn("reload: nothing to reload (no --config file)")
		return
	}
	fs := flag.NewFlagSet("ftpalg run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	next, _, _, err := loadConfig(d.args, fs)
	if err != nil {
		d.met.reloads.WithLabelValues("failed").Inc()
		d.log.Error("reload failed: keeping the running configuration", "config", d.path, "err", err)
		return
	}
	d.mu.Lock()
	cur := d.cfg
	d.mu.Unlock()
	if keys := restartOnly(cur, next); len(keys) > 0 {
		d.met.reloads.WithLabelValues("refused").Inc()
		d.log.Error("reload refused: these settings need a restart; keeping the running configuration",
			"config", d.path, "keys", strings.Join(keys, ","))
		return
	}
	var changed []string
	for _, o := range options {
		if o.bind(&cur).String() != o.bind(&next).String() {
			changed = append(changed, o.name)
		}
	}
	d.mu.Lock()
	d.cfg = next
	d.mu.Unlock()
	d.proxy.Reload(limitsOf(next))
	d.lvl.Set(parseLevel(next.LogLevel))
	d.met.reloads.WithLabelValues("applied").Inc()
	d.log.Info("configuration reloaded: new sessions use it, running sessions keep theirs",
		"config", d.path, "changed", strings.Join(changed, ","))
}

package lab

// The lab network's life: removed at the end of a run, kept and explained
// with --keep, and cleaned up after runs that left it.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/ftpalg/ftpalg/lab/netlab"
)

// cleanup stops what runs and, unless Keep, removes the network.
func (r *runner) cleanup(ctx context.Context, res *Result) error {
	var errs []error
	if r.alg != nil {
		if err := r.alg.stop(); err != nil {
			errs = append(errs, err)
		}
		r.alg = nil
	}
	if r.srvStop != nil {
		if err := r.srvStop(); err != nil {
			r.log.Error("FTP server stopped", "err", err)
		}
	}
	if r.ct != nil {
		r.ct.Close()
	}
	if r.capture != nil {
		st, err := r.capture.stop()
		res.Packets, res.Dropped = st.Packets, st.Dropped
		switch {
		case err != nil:
			errs = append(errs, err)
		case st.Dropped > 0:
			r.n.Para(fmt.Sprintf("Wrote %d packets to %s; the kernel dropped %d more that the capture could not keep up with,",
				st.Packets, r.cfg.Capture, st.Dropped), "so the file is incomplete.")
		default:
			r.n.Para(fmt.Sprintf("Wrote %d packets to %s (the kernel dropped none); open it with Wireshark.", st.Packets, r.cfg.Capture))
		}
	}
	if !r.built {
		return errors.Join(errs...)
	}
	if r.cfg.Keep {
		if r.t.layout != layoutGateway {
			if err := r.t.wire(layoutGateway); err != nil {
				return errors.Join(append(errs, err)...)
			}
		}
		r.keepHelp()
		return errors.Join(errs...)
	}
	if err := r.t.destroy(ctx); err != nil {
		errs = append(errs, fmt.Errorf("removing the lab network: %w", err))
	} else {
		r.n.Para(fmt.Sprintf("Removed the lab network (%s*).", Prefix+r.t.id+"-"))
	}
	return errors.Join(errs...)
}

// keepHelp tells how to use and remove a kept lab.
func (r *runner) keepHelp() {
	bin := r.cfg.Ftpalg
	if abs, err := filepath.Abs(bin); err == nil {
		bin = abs
	}
	t := r.t
	r.n.Para(
		"The lab network is still up (--keep), cabled for gateway mode, with the strict firewall and no ftpalg:",
		fmt.Sprintf("  client %s, %s; gateway %s / %s; server %s, %s", netlab.InsideHost4, netlab.InsideHost6,
			netlab.InsideGW4, netlab.OutsideGW4, netlab.OutsideHost4, netlab.OutsideHost6),
		"",
		"  look at the firewall:  ip netns exec "+t.gw.Name+" iptables -S",
		"  a shell on a host:     ip netns exec "+t.client.Name+" bash   (or "+t.gw.Name+", "+t.server.Name+")",
		"  run ftpalg yourself:   ip netns exec "+t.gw.Name+" "+bin+" run --mode gateway --intercept "+netlab.IfInside,
		"  remove it:             "+bin+" lab --clean",
		"",
		"The lab's own FTP server and client are gone with it; to try by hand, bring your own",
		"(for example vsftpd in the server's namespace and curl in the client's).",
	)
}

// otherLabs returns the ids of lab networks other than id that are up.
func otherLabs(id string) []string {
	names, err := netlab.List()
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var ids []string
	for _, name := range names {
		if lid, ok := labID(name); ok && lid != id && !seen[lid] {
			seen[lid] = true
			ids = append(ids, lid)
		}
	}
	sort.Strings(ids)
	return ids
}

// Clean removes the lab networks that earlier runs left up (with --keep,
// or because they were killed): every namespace named Prefix + "<pid>-..."
// whose pid is not a running process. Labs in progress are left alone and
// named. It reports what it did on out.
func Clean(ctx context.Context, out io.Writer) error {
	if os.Geteuid() != 0 {
		return errors.New("removing lab networks needs root")
	}
	names, err := netlab.List()
	if err != nil {
		return err
	}
	var errs []error
	removed := 0
	for _, name := range names {
		id, ok := labID(name)
		if !ok {
			continue
		}
		pid, _ := strconv.Atoi(id)
		if pid != os.Getpid() && netlab.Alive(pid) {
			fmt.Fprintf(out, "left %s alone: its lab (process %d) is still running\n", name, pid)
			continue
		}
		if err := removeLabNamespace(ctx, name); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "removed %s\n", name)
		removed++
	}
	if removed == 0 && len(errs) == 0 {
		fmt.Fprintln(out, "no lab network to remove")
	}
	return errors.Join(errs...)
}

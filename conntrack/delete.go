package conntrack

import (
	"context"
	"errors"
	"fmt"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// DeleteFlows deletes the conntrack entries of the TCP flows that match m
// (original direction from m.Src, any port, to m.Dst) in the network
// namespace of the calling thread, and returns how many it deleted. An entry
// that disappears meanwhile is not an error. Deleting an entry ends the flow
// for conntrack (a DESTROY event); packets that follow are new to the
// firewall. It needs CAP_NET_ADMIN.
func DeleteFlows(ctx context.Context, m Match) (int, error) {
	n, err := m.normalize()
	if err != nil {
		return 0, fmt.Errorf("deleting flows %v: %w", m, err)
	}
	c, err := ct.Dial(nil)
	if err != nil {
		return 0, fmt.Errorf("deleting flows %v: opening conntrack socket: %w", n, err)
	}
	// Closing the socket aborts a dump or delete in progress.
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer func() {
		if stop() {
			c.Close()
		}
	}()

	flows, err := c.Dump(nil)
	if err != nil {
		return 0, fmt.Errorf("deleting flows %v: dumping conntrack table: %w", n, errOr(ctx, err))
	}
	deleted := 0
	for i := range flows {
		s, ok := snapshotOf(&flows[i])
		if !ok || !n.matches(s.orig) {
			continue
		}
		f := ct.Flow{
			ID:         flows[i].ID,
			Zone:       flows[i].Zone,
			TupleOrig:  flows[i].TupleOrig,
			TupleReply: flows[i].TupleReply,
		}
		switch err := c.Delete(f); {
		case err == nil:
			deleted++
		case errors.Is(err, unix.ENOENT):
			// Gone meanwhile: the desired state.
		default:
			return deleted, fmt.Errorf("deleting flow %s: %w", s.orig, errOr(ctx, err))
		}
	}
	return deleted, nil
}

// errOr returns ctx's error when ctx is done (the socket was closed because
// of it), else err.
func errOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

package relay

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/ftpalg/ftpalg/rules"
)

// Through returns a Backend for the data connections the relay must carry
// itself (FTPS: ftpalg terminates TLS on them) on a host whose firewall
// (fw, e.g. the iptables backend) must also let their first packet in:
// Open opens in fw the pinhole from the expected peer to the relay's
// listening address on this host (Src -> Dst, no translation: INPUT), then
// the relay pinhole; Close closes both. Connected is the relay's.
//
// Without a firewall to open (the sidecar case) the relay alone is the
// backend.
func (r *Backend) Through(fw rules.Backend) rules.Backend {
	return &through{relay: r, fw: fw}
}

type through struct {
	relay *Backend
	fw    rules.Backend
}

var (
	_ rules.Backend   = (*through)(nil)
	_ rules.Connector = (*through)(nil)
)

// local is the firewall's half of p: the first packet from the peer to
// the relay's own listening address, untranslated.
func local(p rules.Pinhole) rules.Pinhole {
	return rules.Pinhole{ID: p.ID, Src: p.Src, Dst: p.Dst, TTL: p.TTL, Passive: p.Passive,
		SNAT: netip.Addr{}, DNAT: netip.AddrPort{}}
}

func (t *through) Open(ctx context.Context, p rules.Pinhole) error {
	if err := t.fw.Open(ctx, local(p)); err != nil {
		return err
	}
	if err := t.relay.Open(ctx, p); err != nil {
		if cerr := t.fw.Close(context.WithoutCancel(ctx), local(p)); cerr != nil {
			err = errors.Join(err, fmt.Errorf("closing the firewall half of %v: %w", p, cerr))
		}
		return err
	}
	return nil
}

func (t *through) Close(ctx context.Context, p rules.Pinhole) error {
	return errors.Join(t.relay.Close(ctx, p), t.fw.Close(ctx, local(p)))
}

func (t *through) Connected(ctx context.Context, p rules.Pinhole) error {
	return t.relay.Connected(ctx, p)
}

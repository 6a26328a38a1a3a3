package main

import (
	"context"
	"log/slog"
	"sync"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/rules"
)

// watchConntrack closes pinholes at first use and logs one line per data
// transfer, when the kernel lets us watch conntrack (CAP_NET_ADMIN). The
// relay backend sees first use itself.
func (d *daemon) watchConntrack(ctx context.Context) {
	if d.cfg.NoConntrack || d.fw == nil {
		return
	}
	// Which side opened each used pinhole's connection, for the transfer
	// line; an entry lives from first use to the flow's end.
	var passive sync.Map // rules.PinholeID -> bool
	w, err := conntrack.NewWatcher(conntrack.Config{
		Log: d.log,
		OnUse: func(id rules.PinholeID, f conntrack.Flow) {
			// It does not block: the session queues the close.
			d.proxy.PinholeUsed(id)
		},
		OnEnd: func(id rules.PinholeID, f conntrack.FlowEnd) {
			attrs := []slog.Attr{slog.String("pinhole", id.String()), slog.String("session", rules.SessionName(id.Session))}
			if v, ok := passive.LoadAndDelete(id); ok {
				attrs = append(attrs, transferAttrs(f, v.(bool))...)
				d.met.transfer(f, v.(bool))
			}
			d.log.LogAttrs(context.Background(), slog.LevelInfo, "transfer", append(attrs, f.LogAttrs()...)...)
		},
	})
	if err != nil {
		d.log.Warn("conntrack unavailable: pinholes close on the transfer's reply or TTL only, no transfer lines", "err", err)
		return
	}
	d.obs = append(d.obs, &watchObserver{w: w, passive: &passive})
	wctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := w.Run(wctx); err != nil && wctx.Err() == nil {
			d.log.Error("conntrack watcher stopped", "err", err)
		}
	}()
	d.cleanups = append(d.cleanups, func() { stop(); <-done })
}

// watchObserver has conntrack watch each pinhole's data connection.
type watchObserver struct {
	w       *conntrack.Watcher
	passive *sync.Map
}

func (o *watchObserver) PinholeOpening(p rules.Pinhole) {
	if p.TLS != nil {
		// Relayed (FTPS): the relay is single use itself, and a close at
		// the flow's first packet would close its listener before it
		// accepted the connection (a reset).
		return
	}
	o.passive.Store(p.ID, p.Passive)
	o.w.Expect(p.ID, conntrack.Match{Src: p.Src, Dst: p.Dst})
}

func (o *watchObserver) PinholeClosed(p rules.Pinhole, reason string) {
	o.w.Forget(p.ID) // a no-op once the flow was seen
	if reason != "used" {
		// Unused (or its use raced the close): the line, if any, goes
		// without the direction.
		o.passive.Delete(p.ID)
	}
}

// transferAttrs names the client and server of a data connection by their
// real addresses, the direction the data went (the side that sent more) and
// its bytes. The initiator (the client in passive mode, the server in active
// mode) is the original source; the responder's real address is the reply
// direction's source, after any DNAT.
func transferAttrs(f conntrack.FlowEnd, passive bool) []slog.Attr {
	initiator, responder := f.Orig.Src, f.Reply.Src
	client, server := initiator, responder
	if !passive {
		client, server = responder, initiator
	}
	attrs := []slog.Attr{slog.String("client", client.String()), slog.String("server", server.String())}
	if !f.Counted {
		return attrs
	}
	clientSent := (f.OrigBytes > f.ReplyBytes) == passive
	dir := "server->client"
	if clientSent {
		dir = "client->server"
	}
	return append(attrs, slog.String("direction", dir), slog.Uint64("bytes", max(f.OrigBytes, f.ReplyBytes)))
}

package main

import (
	"context"
	"log/slog"
	"strings"
	"sync"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/rules"
)

// watchConntrack closes pinholes at first use and logs one line per data
// transfer, when the kernel lets us watch conntrack (CAP_NET_ADMIN). The
// relay backend sees first use itself.
func (d *daemon) watchConntrack(ctx context.Context) {
	if d.cfg.NoConntrack || d.ipt == nil {
		return
	}
	// Which side opened each used pinhole's connection, for the transfer
	// line; an entry lives from first use to the flow's end.
	var passive sync.Map // pinhole ID -> bool
	w, err := conntrack.NewWatcher(conntrack.Config{
		Log: d.log,
		OnUse: func(id string, f conntrack.Flow) {
			// Not on the watcher's goroutine: closing runs iptables, and
			// the watcher must keep reading events meanwhile.
			go d.proxy.PinholeUsed(id)
		},
		OnEnd: func(id string, f conntrack.FlowEnd) {
			// Pinhole IDs are "<session>.p<n>".
			session, _, _ := strings.Cut(id, ".")
			attrs := []slog.Attr{slog.String("pinhole", id), slog.String("session", session)}
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
	open, closed := d.proxy.OnPinholeOpen, d.proxy.OnPinholeClose
	d.proxy.OnPinholeOpen = func(p rules.Pinhole) {
		open(p)
		passive.Store(p.ID, p.Passive)
		w.Expect(p.ID, conntrack.Match{Src: p.Src, Dst: p.Dst})
	}
	d.proxy.OnPinholeClose = func(p rules.Pinhole, reason string) {
		closed(p, reason)
		w.Forget(p.ID) // a no-op once the flow was seen
		if reason != "used" {
			// Unused (or its use raced the close): the line, if any,
			// goes without the direction.
			passive.Delete(p.ID)
		}
	}
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

// Package namespace runs Go code, and so opens sockets, inside a named
// network namespace (as `ip netns add` creates them). It is shared by the
// lab and the end-to-end test harness.
//
// Typical usage:
//
//	ln, err := namespace.Listen("ftpalg-lab-42-server", "tcp", "192.0.2.2:21")
//
// A network namespace belongs to an OS thread, not to a goroutine: Do locks
// a fresh goroutine to its thread, switches that thread into the namespace,
// runs fn and switches back. Sockets keep the namespace they were created in
// after Do returns, so a listener or connection made in fn can be used from
// any goroutine.
package namespace

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on an OS thread switched into the namespace called name. fn
// must not start goroutines that expect to be in the namespace.
func Do(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread is unlocked only if it could be switched back; if not,
		// it ends with this goroutine and the runtime discards it.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening network namespace %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering network namespace %s: %w", name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			ferr = errors.Join(ferr, fmt.Errorf("leaving network namespace %s: %w", name, err))
		} else {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Dial connects to addr from inside the namespace called name.
func Dial(ctx context.Context, name, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := Do(name, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens on addr inside the namespace called name.
func Listen(name, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := Do(name, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

package main

import (
	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/rules"
)

// observers hands every pinhole event to each of its observers, in order.
type observers []alg.Observer

func (o observers) PinholeOpening(p rules.Pinhole) {
	for _, x := range o {
		x.PinholeOpening(p)
	}
}

func (o observers) PinholeClosed(p rules.Pinhole, reason string) {
	for _, x := range o {
		x.PinholeClosed(p, reason)
	}
}

// tableObserver keeps the table of live pinholes and their metrics.
type tableObserver struct{ d *daemon }

func (o tableObserver) PinholeOpening(p rules.Pinhole) {
	o.d.holes.open(p)
	o.d.met.pinholeOpened()
}

func (o tableObserver) PinholeClosed(p rules.Pinhole, reason string) {
	o.d.holes.close(p.ID)
	o.d.met.pinholeClosed(reason)
}

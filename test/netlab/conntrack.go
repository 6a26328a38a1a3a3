package netlab

import (
	"fmt"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"github.com/vishvananda/netns"
)

// ConntrackFlows returns the conntrack table of the namespace (both
// families). Byte and packet counters are filled in the gateway, where
// NewTopology turns on net.netfilter.nf_conntrack_acct.
func (n *NS) ConntrackFlows() ([]conntrack.Flow, error) {
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		return nil, fmt.Errorf("opening netns %s: %w", n.Name, err)
	}
	defer h.Close()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(h)})
	if err != nil {
		return nil, fmt.Errorf("dialing conntrack in %s: %w", n.Name, err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("dumping conntrack in %s: %w", n.Name, err)
	}
	return flows, nil
}

// CountConntrack returns how many conntrack entries of the namespace match
// (all of them if match is nil).
func (n *NS) CountConntrack(match func(conntrack.Flow) bool) (int, error) {
	flows, err := n.ConntrackFlows()
	if err != nil {
		return 0, err
	}
	count := 0
	for _, f := range flows {
		if match == nil || match(f) {
			count++
		}
	}
	return count, nil
}

// Package netlab builds the network namespaces and the topology that both
// `ftpalg lab` and the end-to-end tests (test/netlab) run in: named network
// namespaces (created, wired and removed over netlink, no `ip` commands
// for that), one address plan from the documentation ranges, and a way to
// run Go code and programs inside a namespace.
//
// Typical usage:
//
//	gw, err := netlab.Create("ftpalg-lab-42-gw")
//	client, err := netlab.Create("ftpalg-lab-42-client")
//	server, err := netlab.Create("ftpalg-lab-42-server")
//	err = netlab.Wire(gw,
//		netlab.Segment{Side: netlab.Inside, Hosts: []*netlab.NS{client}},
//		netlab.Segment{Side: netlab.Outside, Hosts: []*netlab.NS{server}})
//	ln, err := server.Listen("tcp", "[::]:21")
//	...
//	err = netlab.Remove(ctx, gw.Name) // kills what runs there, deletes it
//
// A network namespace belongs to an OS thread, not to a goroutine: NS.Do
// locks a fresh goroutine to its thread, switches that thread into the
// namespace, runs fn and switches back. Sockets keep the namespace they
// were created in. Programs run through `ip netns exec` (NS.Command), which
// also gives them the namespace's /sys.
//
// Nothing here touches the root namespace's interfaces, routes or
// firewall. Names carry the pid of the process that made them
// (prefix + "<pid>-..."), so that ListOwned and Alive tell a dead run's
// leftovers from a live run's namespaces.
package netlab

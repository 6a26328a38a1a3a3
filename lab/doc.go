// Package lab is `ftpalg lab`: a one-command demonstration of FTP through a
// strict firewall, for people who teach and demonstrate firewalls.
//
// Run builds three network namespaces (Prefix + "<pid>-client", "-gw",
// "-server"), wires them client - gateway - server with documentation
// addresses (192.0.2.0/24 and 2001:db8:1::/64 inside, 203.0.113.0/24 and
// 2001:db8:2::/64 outside), and makes the gateway a strict firewall with NAT
// (iptables and ip6tables: INPUT and FORWARD policy DROP, one ESTABLISHED
// rule in each, MASQUERADE out of the outside interface; the kernel's FTP
// conntrack helper is off). It then tells the story step by step, checking
// every claim:
//
//  1. without ftpalg, with the control port let through, a passive transfer
//     times out and an active one is refused (NAT broke the announcement);
//  2. with ftpalg in gateway mode, passive and active transfers over IPv4 and
//     IPv6 work, each through one pinhole that the firewall shows while it is
//     open and that closes at first use; ftpalg's rules go when it stops;
//  3. with the cables swapped (server inside, client outside), ftpalg in
//     reverse mode publishes the server, rewriting its private address;
//  4. FTPS: without ftpalg (cables, port-21 rule as in 1, the server
//     speaking explicit FTPS itself) a passive transfer times out, as no
//     firewall or kernel helper can read the encrypted PASV reply; with
//     ftpalg terminating TLS in reverse mode (the server plain again),
//     passive and active transfers work through a pinhole and the relay, and
//     a data connection that does not resume the control session's TLS
//     session is refused.
//
// ftpalg itself runs as a child process in the gateway's namespace (the
// binary given in Config.Ftpalg, `ftpalg run ... --log-format json`); the
// story is told from its JSON log lines ("pinhole open", "pinhole closed",
// "transfer", "refused"). The FTP server (Server, which speaks explicit
// FTPS when Server.TLS is set) and client (Client) are built in, on top of
// package alg/ftp's codec: their sockets are created in the server's and
// the client's namespaces. The network itself is made
// over netlink by package lab/netlab, which the end-to-end tests share. No
// FTP software is needed, only iptables and iproute2, whose `ip netns exec`
// runs ftpalg and iptables in the gateway (install.sh installs them).
//
// Typical usage:
//
//	res, err := lab.Run(ctx, lab.Config{Ftpalg: "/usr/bin/ftpalg", Out: os.Stdout})
//	if errors.Is(err, lab.ErrStepsFailed) { ... } // some step did not do what it said
//
// Everything Run builds is removed when it returns, also when ctx is
// cancelled (Ctrl-C) or a step fails, unless Config.Keep; Clean removes
// labs that were kept or whose process was killed.
package lab

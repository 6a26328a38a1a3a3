// Package nftables is the pinhole backend that makes every pinhole kernel
// state: an element of a set or map in one table ftpalg owns, with a
// kernel timeout equal to the pinhole's TTL, consumed by the first
// connection that uses it. It talks netlink (github.com/google/nftables
// for the table, its own batches for elements), never runs nft.
//
// # The table
//
//	table inet ftpalg
//	  set open4/open6   src . dst . dport                      unused pinholes
//	  map dnat4/dnat6   src . dst . dport : addr . port        DNAT of a pinhole
//	  map snat4/snat6   src . target . tport : addr            SNAT, keyed after DNAT
//	  chain pinhole_pre filter prerouting  -150  consume a pinhole, mark the connection; listeners
//	  chain pinhole_out filter output      -150  the same for connections the host opens
//	  chain nat_pre     nat    prerouting  -100  intercept (redirect of port 21); DNAT by map
//	  chain nat_out     nat    output      -100  DNAT by map
//	  chain nat_post    nat    postrouting  100  SNAT by map
//	  chain nat_in      nat    input        100  SNAT by map, target on the host
//
// Open is one netlink batch that adds the pinhole's element to the open set
// (and to the dnat and snat maps when it translates), each with the
// pinhole's TTL as kernel timeout; Close is one batch of
// NFT_MSG_DESTROYSETELEM (Linux 6.3), which does not fail for an element
// already gone. No rule is added or removed per pinhole, and lookups stay
// hash lookups with any number of live pinholes. After a crash, the kernel
// drops every element when its timeout passes; the next Setup deletes the
// table.
//
// # Single use
//
// The first new connection (conntrack state new, a SYN) whose source,
// destination and port are in the open set is counted in the used set
// (dynset add with a connection count of at most 1), deletes its element
// from the open set from the packet path (dynset delete), and gets the mark
// bit in its conntrack entry. A SYN that follows, however soon, finds no
// element: it gets no mark, so it is neither admitted nor translated (the
// NAT chains act on marked connections only). Two SYNs that meet the rule
// at the same instant on two CPUs can both pass the lookup before either
// deletes; the connection count, which the kernel keeps under a lock, lets
// only the first through. The mark stays with the connection, so its
// retransmitted SYN and the rest of it pass. A used element goes when the
// connection it counted is gone.
//
// # The operator's firewall
//
// An accept in ftpalg's table does not override a drop in another table:
// every base chain on a hook sees the packet and any drop is final. So
// ftpalg marks, in its own table, the connections it admits (a pinhole's
// first connection, an intercepted control connection, a connection to its
// own listener) with Config.Mark, a conntrack mark bit (DefaultMark
// 0x01000000), and puts one rule at the top of each operator filter chain
// that decides on input and forward:
//
//	iptables and ip6tables (legacy or nft variant, whichever the commands
//	are), chains INPUT and FORWARD of table filter, when they exist:
//	    -m connmark --mark MARK/MARK -m comment --comment ftpalg:accept -j ACCEPT
//	native nftables: every base chain of type filter on hook input or
//	forward, in a table that ftpalg does not own and iptables-nft does not
//	manage, by netlink:
//	    ct mark & MARK == MARK accept comment "ftpalg:accept"
//
// Setup sweeps every rule with that comment (whatever its mark) before it
// installs them, Teardown removes them, Watch puts them back when a
// firewall reload removed them.
//
// # Repair
//
// Watch checks every second that the table, its chains and the accept
// rules are there. After a foreign "nft flush ruleset" or "nft delete
// table inet ftpalg" it recreates the table, the rules of Intercept and
// AllowListeners, the accept rules, and every live pinhole with the
// lifetime it has left, and logs one line. A pinhole that a connection had
// consumed before the flush comes back too (ftpalg cannot tell) until its
// session closes it or its timeout passes.
package nftables

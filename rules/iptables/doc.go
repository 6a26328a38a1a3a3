// Package iptables is the rules.Backend for kernels without nf_tables (or
// where the operator's firewall is iptables-legacy): pinholes are rules in
// chains ftpalg owns (FTPALG-*), each entered by one commented jump from a
// built-in chain, written through go-iptables and batched through
// iptables-restore --noflush. Setup sweeps what a crashed run left, Teardown
// removes everything, Watch repairs a foreign flush. See iptables.go for the
// chain layout.
package iptables

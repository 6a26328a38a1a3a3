// Package relay is the userspace rules.Backend: it changes no firewall and
// needs no privileges. A pinhole is a listener on the pool port that accepts
// only the expected peer, once, within the TTL, and relays the data
// connection to its target with splice(2) and half-close. Sidecars use it,
// and so does every data connection ftpalg must carry itself.
package relay

package rules

import (
	"errors"
	"fmt"
	"regexp"
)

// ifaceRE is what an interception accepts as an interface name: the
// kernel's own characters, at most 15 of them (IFNAMSIZ-1), and a trailing
// "+" as a wildcard, as iptables -i and nftables' iifname take it.
var ifaceRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.@-]*\+?$`)

// CheckIntercept validates the arguments of a backend's Intercept: at
// least one interface, every name one the firewall takes, a listen port.
// Both firewall backends call it before they change anything.
func CheckIntercept(ifaces []string, listenPort uint16) error {
	if len(ifaces) == 0 {
		return errors.New("intercepting FTP: no interfaces")
	}
	if listenPort == 0 {
		return errors.New("intercepting FTP: listen port 0")
	}
	for _, ifc := range ifaces {
		if len(ifc) > 15 || !ifaceRE.MatchString(ifc) {
			return fmt.Errorf("intercepting FTP: invalid interface name %q", ifc)
		}
	}
	return nil
}

package alg

import (
	"fmt"
	"time"

	"github.com/ftpalg/ftpalg/alg/ftp"
)

// Policy is what a Session allows. The zero value is not useful; start from
// DefaultPolicy, which refuses what a careful firewall engineer would refuse.
type Policy struct {
	// MinDataPort is the lowest data port a pinhole may target. Ports below
	// it are refused: an announcement naming a privileged port (25, 22, ...)
	// is the classic way to make an FTP peer talk to another service.
	// Default 1024.
	MinDataPort uint16
	// MaxLine bounds one command or reply line, terminator included. An
	// over-long line ends the session: no FTP line needs it, and a bound keeps
	// memory per session fixed. Default 4096 (ftp.DefaultMaxLine).
	MaxLine int
	// MaxReplyLines bounds the lines of one multi-line reply. Default 1000.
	MaxReplyLines int
	// MaxPending bounds the commands forwarded but not yet answered. A client
	// that pipelines more waits (TCP backpressure) until the server answers.
	// Default 64.
	MaxPending int
	// AllowTLS lets AUTH TLS/SSL through. After a successful AUTH the ALG is
	// blind: it relays bytes and opens nothing, so data connections break
	// behind a strict firewall. Default false: AUTH is refused with 534, and
	// AUTH lines are removed from FEAT replies, so clients fall back to plain
	// FTP.
	AllowTLS bool
	// PinholeTTL is how long an announced, unused pinhole stays open.
	// Default 30s.
	PinholeTTL time.Duration
	// UseGrace is how long a pinhole stays open after the transfer's
	// preliminary reply (150/125). Passive clients connect before they send
	// the transfer command, but in active mode some servers send 150 before
	// they connect; the grace covers that race. Default 2s. A conntrack
	// observer, when present, closes the pinhole as soon as the flow is seen.
	UseGrace time.Duration
	// OpenTimeout bounds planning and opening one pinhole. Default 5s.
	OpenTimeout time.Duration
	// DrainTimeout is how long the other direction may still run after one
	// side of the session has ended. Default 5s.
	DrainTimeout time.Duration
	// MaxSyntaxErrors is how many consecutive lines that are not FTP
	// commands a client may send before the session ends. Default 3.
	MaxSyntaxErrors int
}

// DefaultPolicy returns the secure defaults described on each field.
func DefaultPolicy() Policy {
	return Policy{
		MinDataPort:     1024,
		MaxLine:         ftp.DefaultMaxLine,
		MaxReplyLines:   1000,
		MaxPending:      64,
		AllowTLS:        false,
		PinholeTTL:      30 * time.Second,
		UseGrace:        2 * time.Second,
		OpenTimeout:     5 * time.Second,
		DrainTimeout:    5 * time.Second,
		MaxSyntaxErrors: 3,
	}
}

// Validate reports a policy that cannot work.
func (p Policy) Validate() error {
	switch {
	case p.MaxLine < 64:
		return fmt.Errorf("policy: max line %d is below 64 bytes", p.MaxLine)
	case p.MaxReplyLines < 1:
		return fmt.Errorf("policy: max reply lines %d must be positive", p.MaxReplyLines)
	case p.MaxPending < 1:
		return fmt.Errorf("policy: max pending commands %d must be positive", p.MaxPending)
	case p.PinholeTTL <= 0:
		return fmt.Errorf("policy: pinhole TTL %v must be positive", p.PinholeTTL)
	case p.UseGrace < 0 || p.OpenTimeout <= 0 || p.DrainTimeout <= 0:
		return fmt.Errorf("policy: timeouts must be positive")
	case p.MaxSyntaxErrors < 1:
		return fmt.Errorf("policy: max syntax errors %d must be positive", p.MaxSyntaxErrors)
	}
	return nil
}

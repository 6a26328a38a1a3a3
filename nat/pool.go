package nat

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
)

// ErrPoolExhausted is returned by Pool.Get when every port is handed out.
var ErrPoolExhausted = errors.New("data port pool exhausted")

// Pool hands out ports from a fixed range for translated data endpoints.
// Allocation walks the range round-robin, so a port just released is the
// last to be reused; ports that InUse reports busy are skipped.
type Pool struct {
	lo, hi uint16
	// InUse, if set, reports ports that are busy outside the pool (e.g. a
	// local socket is bound there); they are skipped.
	InUse func(port uint16) bool

	mu   sync.Mutex
	used map[uint16]bool
	next uint16
}

// NewPool returns a pool of the ports lo..hi, both included.
func NewPool(lo, hi uint16) (*Pool, error) {
	if lo == 0 || hi < lo {
		return nil, fmt.Errorf("port pool %d-%d: want 1 <= lo <= hi <= 65535", lo, hi)
	}
	return &Pool{lo: lo, hi: hi, used: make(map[uint16]bool), next: lo}, nil
}

// ParseRange parses "LO-HI" (or a single port).
func ParseRange(s string) (lo, hi uint16, err error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		b = a
	}
	l, err1 := strconv.ParseUint(strings.TrimSpace(a), 10, 16)
	h, err2 := strconv.ParseUint(strings.TrimSpace(b), 10, 16)
	if err1 != nil || err2 != nil || l == 0 || h < l {
		return 0, 0, fmt.Errorf("port range %q: want LO-HI with 1 <= LO <= HI <= 65535", s)
	}
	return uint16(l), uint16(h), nil
}

// Size is the number of ports in the pool.
func (p *Pool) Size() int { return int(p.hi) - int(p.lo) + 1 }

// Get hands out a free port.
func (p *Pool) Get() (uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for range p.Size() {
		port := p.next
		if p.next == p.hi {
			p.next = p.lo
		} else {
			p.next++
		}
		if p.used[port] || (p.InUse != nil && p.InUse(port)) {
			continue
		}
		p.used[port] = true
		return port, nil
	}
	return 0, fmt.Errorf("%w (%d-%d)", ErrPoolExhausted, p.lo, p.hi)
}

// Put returns port to the pool. Putting a port that is not handed out is a
// no-op.
func (p *Pool) Put(port uint16) {
	p.mu.Lock()
	delete(p.used, port)
	p.mu.Unlock()
}

// InUseCount is the number of ports handed out.
func (p *Pool) InUseCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.used)
}

package downstream

import (
	"context"
	"sync"
	"time"
)

// rateLimiter is a token bucket shared by every full sync being sent, so
// a wave of replicas cannot saturate a link (--full-sync-rate-limit). A
// burst of one chunk is allowed, so the rate holds from the first byte.
type rateLimiter struct {
	rate  float64 // bytes per second
	burst float64

	mu     sync.Mutex
	tokens float64
	last   time.Time
}

func newRateLimiter(bytesPerSec int64, burst int64) *rateLimiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return &rateLimiter{rate: float64(bytesPerSec), burst: float64(burst), tokens: float64(burst), last: time.Now()}
}

// wait takes n bytes of budget, waiting until the bucket has them or ctx
// ends. A nil limiter never waits.
func (l *rateLimiter) wait(ctx context.Context, n int64) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n) // may go negative: the debt is what this caller waits for
	debt := -l.tokens
	l.mu.Unlock()
	if debt <= 0 {
		return nil
	}
	t := time.NewTimer(time.Duration(debt / l.rate * float64(time.Second)))
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

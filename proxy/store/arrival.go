package store

import (
	"sort"
	"sync"
	"time"
)

// ArrivalIndex maps stream offsets to the time they arrived from upstream,
// for lag in seconds without writing anything to the origin. Samples are
// taken at most every arrivalResolution; when the index is full, adjacent
// samples are merged (keeping the earlier time), so memory is bounded and
// old history just gets coarser. Lag is never understated.
type ArrivalIndex struct {
	mu    sync.Mutex
	ends  []int64 // last offset covered by each sample, ascending
	times []int64 // unix nanoseconds when the sample's first byte arrived
	max   int
}

const (
	arrivalResolution = 10 * time.Millisecond
	arrivalSamples    = 1 << 14
)

func newArrivalIndex() *ArrivalIndex { return &ArrivalIndex{max: arrivalSamples} }

// Record notes that stream bytes up to end arrived at now.
func (a *ArrivalIndex) Record(end int64, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.ends)
	if n > 0 && (now.UnixNano()-a.times[n-1] < int64(arrivalResolution) || end <= a.ends[n-1]) {
		a.ends[n-1] = max(a.ends[n-1], end)
		return
	}
	a.ends = append(a.ends, end)
	a.times = append(a.times, now.UnixNano())
	if len(a.ends) > a.max {
		j := 0
		for i := 0; i < len(a.ends); i += 2 {
			last := min(i+1, len(a.ends)-1)
			a.ends[j], a.times[j] = a.ends[last], a.times[i]
			j++
		}
		a.ends, a.times = a.ends[:j], a.times[:j]
	}
}

// Arrival returns when the byte at off arrived; ok is false when it has
// not arrived (or nothing is known).
func (a *ArrivalIndex) Arrival(off int64) (time.Time, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	i := sort.Search(len(a.ends), func(i int) bool { return a.ends[i] >= off })
	if i == len(a.ends) {
		return time.Time{}, false
	}
	return time.Unix(0, a.times[i]), true
}

// reset forgets everything: offsets of a new history are unrelated.
func (a *ArrivalIndex) reset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ends, a.times = a.ends[:0], a.times[:0]
}

// LagSeconds is how long ago the first byte after acked arrived; 0 when
// the replica has everything.
func (a *ArrivalIndex) LagSeconds(acked int64, now time.Time) float64 {
	t, ok := a.Arrival(acked + 1)
	if !ok {
		return 0
	}
	return max(now.Sub(t).Seconds(), 0)
}

// horizon is the last offset known to have arrived at or before t: every
// byte of the samples before the first one that started after t. ok is
// false when nothing is known to have arrived by then.
func (a *ArrivalIndex) horizon(t time.Time) (int64, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	tn := t.UnixNano()
	// k: the first sample that started after t; all before it arrived by
	// the start of the next one, and the one before k may still have been
	// arriving at t, so only samples before k-1 are certain.
	k := sort.Search(len(a.times), func(i int) bool { return a.times[i] > tn })
	if k < 2 {
		return 0, false
	}
	return a.ends[k-2], true
}

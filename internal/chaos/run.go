package chaos

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Report is what a run did and found.
type Report struct {
	Seed     uint64
	Elapsed  time.Duration
	Faults   map[string]int // by kind
	Checks   int
	Compared int64    // stream bytes compared with the origin's, both proxies
	Schedule []string // every fault, in order, with its target and time
	Findings []string // broken invariants; empty when the run passed
}

// Total is the number of faults injected.
func (r *Report) Total() int {
	n := 0
	for _, c := range r.Faults {
		n += c
	}
	return n
}

func (r *Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "seed %d, %s, %d faults, %d checks, %d MB of stream compared, %d findings\n",
		r.Seed, r.Elapsed.Round(time.Second), r.Total(), r.Checks, r.Compared>>20, len(r.Findings))
	kinds := make([]string, 0, len(r.Faults))
	for k := range r.Faults {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Fprintf(&b, "  %-20s %d\n", k, r.Faults[k])
	}
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "FINDING: %s\n", f)
	}
	return b.String()
}

// ErrFindings: the run broke an invariant; the report says which.
var ErrFindings = errors.New("chaos: invariants broken")

// Run builds the topology, injects faults from the seeded schedule until
// Duration has passed (every kind once first, in a seeded order), checks
// after every CheckEvery faults and at the end, and tears everything down.
func Run(cfg Config) (*Report, error) {
	if cfg.CheckEvery <= 0 {
		cfg.CheckEvery = 6
	}
	rep := &Report{Seed: cfg.Seed, Faults: map[string]int{}}
	w, err := build(cfg)
	if w != nil {
		defer w.close()
	}
	if err != nil {
		return rep, err
	}
	w.logf("chaos seed %d: origin %s, standby %s, proxy A %s (fsync always), proxy B %s (fsync everysec), 4 replicas",
		cfg.Seed, w.origin.Addr(), w.standby.Addr(), w.proxies[0].addr, w.proxies[1].addr)
	if err := waitFor(3*time.Minute, func() bool { return w.converged(w.origin) }); err != nil {
		return rep, fmt.Errorf("initial sync: %s", w.describe(w.origin))
	}
	w.ledger.settle(w.fullSyncs()) // the first syncs need no fault
	w.load.run()
	order := w.rnd.Perm(len(faults))
	for i := 0; time.Since(w.start) < cfg.Duration || i < len(faults); i++ {
		f := faults[w.rnd.IntN(len(faults))]
		if i < len(faults) {
			f = faults[order[i]]
		}
		w.pause(300, 2500)
		target, err := f.run(w)
		line := fmt.Sprintf("%.1fs %s %s", time.Since(w.start).Seconds(), f.kind, target)
		rep.Schedule = append(rep.Schedule, line)
		rep.Faults[f.kind]++
		w.logf("fault %s %s", f.kind, target)
		if err != nil {
			rep.Findings = append(rep.Findings, fmt.Sprintf("fault %s %s: %v", f.kind, target, err))
			break
		}
		if (i+1)%cfg.CheckEvery == 0 {
			if found := w.checkLogged(rep); len(found) > 0 {
				break
			}
		}
	}
	if len(rep.Findings) == 0 {
		w.checkLogged(rep)
	}
	rep.Elapsed = time.Since(w.start)
	rep.Compared = w.compared
	if len(rep.Findings) > 0 {
		return rep, ErrFindings
	}
	return rep, nil
}

func (w *world) checkLogged(rep *Report) []string {
	t := time.Now()
	found := w.check()
	rep.Checks++
	rep.Findings = append(rep.Findings, found...)
	w.logf("check %d: %d findings (%.1fs to converge and compare)", rep.Checks, len(found), time.Since(t).Seconds())
	for _, f := range found {
		w.logf("FINDING: %s", f)
	}
	return found
}

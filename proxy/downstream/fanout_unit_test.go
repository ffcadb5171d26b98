package downstream

import (
	"testing"

	"github.com/replproxy/replproxy/proxy/vocab"
)

// A busy follower (its read filled the buffer) hands parked replicas back
// without writing, and they stay in their own loops for the pause.
func TestFanoutBusyHandsBack(t *testing.T) {
	st := &vocab.ReplicaCounters{}
	f := NewFanout(st)
	m := &fanMember{back: make(chan struct{})}
	f.add(m)
	f.Deliver(1, []byte("*1\r\n$4\r\nPING\r\n"), true)
	select {
	case <-m.back:
	default:
		t.Fatal("a busy delivery left the replica parked")
	}
	if !m.pause || m.state.Load() != memberReleased || st.FanoutBytes.Load() != 0 || st.FanoutHandbacks.Load() != 1 {
		t.Fatalf("pause %v state %d fan-out bytes %d handbacks %d, want true, released, 0, 1",
			m.pause, m.state.Load(), st.FanoutBytes.Load(), st.FanoutHandbacks.Load())
	}
}

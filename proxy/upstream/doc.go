// Package upstream is the follower: replproxy as one replica of its
// upstream. It owns the link (dial, handshake, PSYNC, the stream scan and
// append, ACKs and the ACK policy, the link's state and the reasons it
// ended), full syncs behind the fork gate (the cost backoff of requests
// that fork the origin, persisted across restarts) and the data dir's room,
// the wait for a write burst to calm, snapshot refreshes (replicas first,
// trusted for who they are; the upstream only on demand), the empty-origin
// guard's held history, the stream's PUBLISH finder and the pre-deploy
// probe.
//
// It sees the replicas only through the Replicas interface it declares,
// and the fan-out through Options.Deliver.
//
// # Goroutines
//
// Follow (the follow goroutine) and Maintain (the maintain goroutine) are
// run and joined by the daemon. Follow runs one link at a time; each
// streaming link's ACK ticker is joined before the link returns. Maintain
// runs one refresh at a time and joins it. Requests that touch a
// goroutine's state are sent to it: an operator's guard accept goes to the
// follow goroutine on the guard's accepts channel (a link streaming the
// held history is cut; a link still connecting or receiving a full sync
// is not, and the request is served before it streams), refresh wishes
// reach the maintain goroutine on the kick channel.
//
// # Locks
//
// Follower.mu guards the link status, the upstream address and the cancel
// functions of the link and of a refresh; the guard's mu only the held
// history's pointer (the follow goroutine alone writes it, and reads it
// without the lock); the fork gate's mu its state, persisted outside it
// in order (saveMu); the upstream connection's wmu its writes (the ACK
// ticker and the stream reader both ACK). None is held across network I/O
// or an fsync a reader waits on. The stream scanner and the PUBLISH finder
// are the follow goroutine's alone.
package upstream

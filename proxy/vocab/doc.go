// Package vocab is the proxy's shared vocabulary, a leaf every component
// may import: the states and reasons it reports (typed and listed once, so
// metrics create every series at start-up), the label sets, the event
// counter groups (each written by one owner), and the status values the
// components publish and INFO, ROLE, metrics and the status page render.
// It holds no state, starts no goroutine and takes no lock.
package vocab

// Package security owns what authenticates connections: the TLS
// certificates (server, upstream client, metrics), the users file and the
// default user's password, reloaded on SIGHUP and when the files change.
// Sessions read the users through an atomic pointer.
//
// Watch (run and joined by the daemon) polls the files; it is the one
// goroutine the package starts. mu serialises reloads and guards the
// reload status; it is held for no I/O sessions wait on.
package security

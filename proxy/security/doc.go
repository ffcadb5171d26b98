// Package security owns what authenticates connections: the TLS
// certificates (server, upstream client, metrics), the users file and the
// default user's password, reloaded on SIGHUP and when the files change.
// Sessions read the users through an atomic pointer.
//
// The package starts no goroutine: Watch, which polls the files, runs on
// the daemon's, which joins it. mu serialises users reloads and guards
// their status (certificate sources reload under their own locks, in
// package tlsconf); it is held for no I/O sessions wait on.
package security

// Package replproxy is a replication sidecar proxy for stock Redis. The
// daemon is cmd/replproxy; this package holds only repository-level tests.
package replproxy

// Package request reads client requests as Redis does: RESP multibulk and
// inline commands, with Redis' limits on line and argument sizes and its
// protocol error replies. It starts no goroutine and holds no lock; a
// Reader belongs to the goroutine that reads the connection.
package request

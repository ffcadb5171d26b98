package psync

import "hash/crc64"

// jonesTable is CRC-64/Jones as Redis uses it for RDB checksums: the
// reflected form of polynomial 0xad93d23594c935a9.
var jonesTable = crc64.MakeTable(0x95ac9329ac4bc9b5)

// CRC64 continues a Redis CRC-64/Jones over p. Redis uses init 0 and no final
// xor, while hash/crc64 inverts on entry and exit, so invert around it.
func CRC64(prev uint64, p []byte) uint64 {
	return ^crc64.Update(^prev, jonesTable, p)
}

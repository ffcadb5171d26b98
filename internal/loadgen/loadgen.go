// Package loadgen writes realistic workloads to a Redis server for demos and
// benchmarks.
package loadgen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Counter counts commands sent.
type Counter struct{ n atomic.Int64 }

// Load returns the number of commands sent so far.
func (c *Counter) Load() int64 { return c.n.Load() }

// Mixed sends rounds of mixed writes (all data types, expiries, four DBs,
// MULTI/EXEC, Lua, and now and then a 300 KB value) until ctx ends, at most
// roundsPerSec rounds a second (0: as fast as possible).
func Mixed(ctx context.Context, cli *redis.Client, roundsPerSec int, seed uint64, sent *Counter) error {
	rnd := rand.New(rand.NewPCG(seed, seed))
	var tick <-chan time.Time
	if roundsPerSec > 0 {
		t := time.NewTicker(time.Second / time.Duration(roundsPerSec))
		defer t.Stop()
		tick = t.C
	}
	for round := 0; ctx.Err() == nil; round++ {
		if tick != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-tick:
			}
		}
		if err := mixedRound(ctx, cli, rnd, round); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		if sent != nil {
			sent.n.Add(13)
		}
	}
	return nil
}

func mixedRound(ctx context.Context, cli *redis.Client, rnd *rand.Rand, round int) error {
	conn := cli.Conn()
	defer conn.Close()
	if err := conn.Select(ctx, round%4).Err(); err != nil {
		return err
	}
	k := func(s string) string { return fmt.Sprintf("%s:%d", s, rnd.IntN(1000)) }
	_, err := conn.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, k("str"), rnd.Int64(), 0)
		p.Set(ctx, k("ttl"), "v", time.Duration(1+rnd.IntN(5000))*time.Millisecond)
		p.LPush(ctx, k("list"), rnd.IntN(1000))
		p.LTrim(ctx, k("list"), 0, 50)
		p.HSet(ctx, k("hash"), "f"+strconv.Itoa(rnd.IntN(20)), rnd.IntN(1000))
		p.SAdd(ctx, k("set"), rnd.IntN(100))
		p.ZAdd(ctx, k("zset"), redis.Z{Score: rnd.Float64(), Member: rnd.IntN(100)})
		p.XAdd(ctx, &redis.XAddArgs{Stream: k("stream"), MaxLen: 100, Values: []any{"n", round}})
		p.Incr(ctx, "counter")
		return nil
	})
	if err != nil {
		return err
	}
	if _, err := conn.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Incr(ctx, "tx:a")
		p.Decr(ctx, "tx:b")
		return nil
	}); err != nil {
		return err
	}
	if err := conn.Eval(ctx, "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('INCR', KEYS[2])",
		[]string{k("lua"), "lua:n"}, round).Err(); err != nil {
		return err
	}
	if round%100 == 0 {
		return conn.Set(ctx, "big", strings.Repeat(strconv.Itoa(round%10), 300<<10), 0).Err()
	}
	return nil
}

// Fill writes about size bytes of data as pipelined SETs of valueSize
// values, for datasets of a given size. Values are pseudo-random letters,
// so the RDB does not compress to nothing.
func Fill(ctx context.Context, cli *redis.Client, size int64, valueSize int) error {
	rnd := rand.New(rand.NewPCG(1, 2))
	pool := make([]byte, 1<<20+valueSize)
	for i := range pool {
		pool[i] = byte('a' + rnd.IntN(26))
	}
	n := size / int64(valueSize+24)
	const batch = 1000
	for i := int64(0); i < n; i += batch {
		pipe := cli.Pipeline()
		for j := i; j < min(i+batch, n); j++ {
			off := rnd.IntN(1 << 20)
			pipe.Set(ctx, "fill:"+strconv.FormatInt(j, 10), pool[off:off+valueSize], 0)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return err
		}
	}
	return nil
}

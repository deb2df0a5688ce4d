"""The two server-side scripts of the Redis broker's history, each one atomic step in Redis.

A channel's history is a Redis Stream (`<prefix>stream:<channel>`, entry id `0-<offset>`,
trimmed to the history size) beside a meta hash (`<prefix>meta:<channel>`: `epoch` and `top`,
the last offset given). Both expire with the TTL after the channel's last message. A meta hash
that is gone (expired, flushed, a Redis restarted without persistence) is made again with a
fresh epoch and the stream emptied, so that offsets never start again under an old epoch.

`PUBLISH_SCRIPT` gives a broadcast its offsets, keeps it in every channel's stream and
publishes it, in one step: the live message and its history entry carry the same offset, and
the count of copies PUBLISH returns stays exact. `SNAPSHOT_SCRIPT` reads the streams a
recovering socket asks for at one instant, and then publishes a barrier on the reading node's
reply channel: once the barrier arrives there, every live message published before the
snapshot has arrived too, since one pub/sub connection receives in publishing order.
"""

from __future__ import annotations

__all__ = ["PUBLISH_SCRIPT", "SNAPSHOT_SCRIPT"]

# KEYS: the meta hash and the stream of each channel, in pairs.
# ARGV: history size, TTL in ms, the envelope's header line, the message's JSON, then a fresh
# epoch for each channel, then each channel's pub/sub name.
# Returns the copies published and the positions line ("<epoch> <offset>" per channel).
PUBLISH_SCRIPT = """
local n = #KEYS / 2
local size, ttl = ARGV[1], ARGV[2]
local tops, parts = {}, {}
for i = 1, n do
  local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local epoch = redis.call('HGET', meta, 'epoch')
  local top
  if epoch then
    top = redis.call('HINCRBY', meta, 'top', 1)
  else
    epoch, top = ARGV[4 + i], 1
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'top', 1)
  end
  tops[i] = top
  parts[#parts + 1] = epoch
  parts[#parts + 1] = top
end
local positions = table.concat(parts, ' ')
local envelope = ARGV[3] .. positions .. '\\n' .. ARGV[4]
for i = 1, n do
  redis.call('XADD', KEYS[2 * i], 'MAXLEN', size, '0-' .. tops[i], 'e', envelope)
  redis.call('PEXPIRE', KEYS[2 * i - 1], ttl)
  redis.call('PEXPIRE', KEYS[2 * i], ttl)
end
local copies = 0
for i = 1, n do
  copies = copies + redis.call('PUBLISH', ARGV[4 + n + i], envelope)
end
return {copies, positions}
"""

# KEYS: the meta hash and the stream of each channel, in pairs.
# ARGV: history size, TTL in ms, the reply channel, the barrier, then for each channel a fresh
# epoch, the epoch of its `since` ('' for none) and the offset of its `since`.
# Returns, per channel, its epoch, its top and the kept entries after `since` when the epochs
# match and the stream can still hold all of them (else none: the socket is not recovered).
SNAPSHOT_SCRIPT = """
local n = #KEYS / 2
local size, ttl = tonumber(ARGV[1]), ARGV[2]
local result = {}
for i = 1, n do
  local meta, stream = KEYS[2 * i - 1], KEYS[2 * i]
  local base = 4 + 3 * (i - 1)
  local values = redis.call('HMGET', meta, 'epoch', 'top')
  local epoch, top = values[1], tonumber(values[2])
  if not epoch or not top then
    epoch, top = ARGV[base + 1], 0
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
    redis.call('PEXPIRE', meta, ttl)
  end
  local entries = {}
  local after = tonumber(ARGV[base + 3])
  if ARGV[base + 2] == epoch and after < top and top - after <= size then
    entries = redis.call('XRANGE', stream, '0-' .. (after + 1), '+')
  end
  result[i] = {epoch, top, entries}
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return result
"""

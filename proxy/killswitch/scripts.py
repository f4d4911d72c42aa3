"""Lua scripts of the kill switch store: each change is atomic with its notification.

KEYS[1] is always `keys.kill_switches()`; the channel (`keys.kill_switch_channel()`) is an
argument, not a key: classic PUBLISH names no key, so the scripts stay on one cluster slot.
The notification carries no scope (it may hold a phone number): subscribers re-read the hash.
Each script is safe to run twice (tests/store/test_killswitch.py).
"""

# Returns the value it replaced (false/nil if none).
ENGAGE = """
local switches = KEYS[1]
local channel = ARGV[1]
local scope = ARGV[2]
local value = ARGV[3]
local kind = ARGV[4]
local previous = redis.call('HGET', switches, scope)
redis.call('HSET', switches, scope, value)
redis.call('PUBLISH', channel, 'engaged ' .. kind)
return previous
"""

# Returns the value it removed (false/nil if the scope was not engaged: nothing published).
RELEASE = """
local switches = KEYS[1]
local channel = ARGV[1]
local scope = ARGV[2]
local kind = ARGV[3]
local previous = redis.call('HGET', switches, scope)
if previous then
  redis.call('HDEL', switches, scope)
  redis.call('PUBLISH', channel, 'released ' .. kind)
end
return previous
"""

# Returns {live values, expired values}; expired entries (by the server's clock) are deleted.
# A value that is not a JSON object is returned as live: the caller reports it.
LIST = """
local switches = KEYS[1]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local entries = redis.call('HGETALL', switches)
local live, expired = {}, {}
for i = 1, #entries, 2 do
  local ok, decoded = pcall(cjson.decode, entries[i + 1])
  local expires_at = ok and type(decoded) == 'table' and decoded['expires_at']
  if type(expires_at) == 'number' and expires_at <= now then
    redis.call('HDEL', switches, entries[i])
    expired[#expired + 1] = entries[i + 1]
  else
    live[#live + 1] = entries[i + 1]
  end
end
return {live, expired}
"""

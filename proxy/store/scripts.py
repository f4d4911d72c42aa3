"""Lua scripts: every multi-step change to a record is one atomic script on one key.

Each script first names its KEYS/ARGV, reads the clock from the server (`TIME`, so instances
with skewed clocks agree on leases), and is safe to run twice (tests/test_scripts.py).
Completion, release and mark-unknown are compare-and-set on the claim token: a process that
lost its claim can never overwrite another's record (the Powertools #5714 bug class).
"""

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Decide+claim in one round trip. Returns {'claimed', now} or {'exists', now, field, value, ...}.
CLAIM = (
    """
local record = KEYS[1]
local token = ARGV[1]
local payload_hash = ARGV[2]
local lease_ms = tonumber(ARGV[3])
local ttl_ms = tonumber(ARGV[4])
local slide_ms = tonumber(ARGV[5])
local meta = ARGV[6]
"""
    + _NOW_MS
    + """
if redis.call('EXISTS', record) == 0 then
  redis.call('HSET', record, 's', 'inflight', 't', token, 'p', payload_hash,
             'c', now, 'l', now + lease_ms, 'm', meta)
  redis.call('PEXPIRE', record, ttl_ms)
  return {'claimed', now}
end
if slide_ms > 0 then
  -- a keyless retry loop keeps its own window open for as long as it runs
  local left = redis.call('PTTL', record)
  if left >= 0 and left < slide_ms then redis.call('PEXPIRE', record, slide_ms) end
end
local reply = {'exists', now}
local fields = redis.call('HGETALL', record)
for i = 1, #fields do reply[#reply + 1] = fields[i] end
return reply
"""
)

# Returns 1 completed, 2 already completed by this token, 0 not the owner (or record gone).
COMPLETE = """
local record = KEYS[1]
local token = ARGV[1]
local status = ARGV[2]
local headers = ARGV[3]
local body = ARGV[4]
local message_sid = ARGV[5]
local ttl_ms = tonumber(ARGV[6])
if redis.call('HGET', record, 't') ~= token then return 0 end
local state = redis.call('HGET', record, 's')
if state == 'done' then return 2 end
redis.call('HSET', record, 's', 'done', 'st', status, 'h', headers, 'b', body, 'sid', message_sid)
redis.call('HDEL', record, 'u')
redis.call('PEXPIRE', record, ttl_ms)
return 1
"""

# Nothing was sent: the claim goes away so a retry may send. 1 released, 0 not the owner/gone.
RELEASE = """
local record = KEYS[1]
local token = ARGV[1]
if redis.call('HGET', record, 't') ~= token then return 0 end
if redis.call('HGET', record, 's') == 'done' then return 0 end
redis.call('DEL', record)
return 1
"""

# The send may have happened. 1 marked, 2 already unknown, 0 not applicable (other token, done,
# or - with require_expired=1 - the owner's lease is still running).
MARK_UNKNOWN = (
    """
local record = KEYS[1]
local token = ARGV[1]
local reason = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local require_expired = ARGV[4] == '1'
"""
    + _NOW_MS
    + """
if redis.call('HGET', record, 't') ~= token then return 0 end
local state = redis.call('HGET', record, 's')
if state == 'unknown' then return 2 end
if state ~= 'inflight' then return 0 end
if require_expired and tonumber(redis.call('HGET', record, 'l')) > now then return 0 end
redis.call('HSET', record, 's', 'unknown', 'u', reason)
if redis.call('PTTL', record) < ttl_ms then redis.call('PEXPIRE', record, ttl_ms) end
return 1
"""
)

"""Lua scripts: every multi-step change is one atomic script on one recipient's slot.

Each script first names its KEYS/ARGV, reads the clock from the server (`TIME`, so instances
with skewed clocks agree on leases and windows), and is safe to run twice
(tests/store/test_scripts.py).
Completion, release and mark-unknown are compare-and-set on the claim token: a process that
lost its claim can never overwrite another's record (the Powertools #5714 bug class).

The scripts are mechanism, not policy: CLAIM claims and reports the recipient's state; whether
that state blocks the send is decided in Python (`proxy.guard.protection`), and a refused claim
is handed back with RELEASE, which can also trip the breaker.

Field names, state values and TTLs are not spelt here: `${f_…}`, `${s_…}` and `${b_…}` are
filled in from the tables of `proxy.store.codec` (which owns the wire format and says what
each field is), and every lifetime comes in as an argument.
"""

from proxy.store.codec import lua

_NOW_MS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# Returns {'exists', now, field, value, ...} for a duplicate, or {'claimed', now, state-json}.
# The record's own fields (payload hash, what reconciliation needs) come as name/value pairs
# after the fixed arguments (codec.claim_fields).
CLAIM = lua(
    """
local record = KEYS[1]
local sends = KEYS[2]
local breaker = KEYS[3]
local suppressed = KEYS[4]
local token = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local ttl_ms = tonumber(ARGV[3])
local slide_ms = tonumber(ARGV[4])
local windows = ARGV[5]           -- comma-separated window lengths (ms); '' = no limits
local keep_ms = tonumber(ARGV[6]) -- the longest window: older sends are forgotten
local scopes = ARGV[7]            -- newline-separated suppression fields that apply
local FIELDS = 8                  -- ARGV[8..]: the record's fields, name/value pairs
"""
    + _NOW_MS
    + """
if redis.call('EXISTS', record) == 1 then
  if slide_ms > 0 then
    -- a keyless retry loop keeps its own window open for as long as it runs
    local left = redis.call('PTTL', record)
    if left >= 0 and left < slide_ms then redis.call('PEXPIRE', record, slide_ms) end
  end
  local reply = {'exists', now}
  local fields = redis.call('HGETALL', record)
  for i = 1, #fields do reply[#reply + 1] = fields[i] end
  return reply
end

local hits = {}
for field in string.gmatch(scopes, '[^\\n]+') do
  local value = redis.call('HGET', suppressed, field)
  if value then hits[#hits + 1] = {field, value} end
end

local counts = {}
if keep_ms > 0 then
  redis.call('ZREMRANGEBYSCORE', sends, '-inf', now - keep_ms)
  redis.call('ZADD', sends, now, token)
  redis.call('PEXPIRE', sends, keep_ms)
  for window in string.gmatch(windows, '[^,]+') do
    counts[#counts + 1] = redis.call('ZCOUNT', sends, '(' .. (now - tonumber(window)), '+inf')
  end
end

local state = redis.call('HMGET', breaker, '${b_open_until}', '${b_trips}', '${b_probe}',
                         '${b_probe_until}')
local open_until = tonumber(state[1] or '0')
local probe = state[3] or ''
if open_until > 0 and now >= open_until and (probe == '' or tonumber(state[4]) <= now) then
  -- half-open: the first send after the cooldown takes the one probe slot
  redis.call('HSET', breaker, '${b_probe}', token, '${b_probe_until}', now + lease_ms)
  probe = token
end

redis.call('HSET', record, '${f_state}', '${s_in_flight}', '${f_token}', token,
           '${f_claimed_at}', now, '${f_lease_until}', now + lease_ms, unpack(ARGV, FIELDS))
redis.call('PEXPIRE', record, ttl_ms)
return {'claimed', now, cjson.encode({
  counts = counts, hits = hits, open_until = open_until,
  trips = tonumber(state[2] or '0'), probe = probe})}
"""
)

# Returns 1 completed, 2 already completed by this token, 0 not the owner (or record gone).
# With uncount=1 (a definite refusal such as 401 or 21211: Twilio sent nothing) the send
# leaves the recipient's send log, so bad requests cannot use up someone's budget.
# The answer comes as name/value pairs after the fixed arguments (codec.answer_fields). The
# Message SID's index (another slot) is written beside it, in the same round trip.
COMPLETE = lua(
    """
local record = KEYS[1]
local breaker = KEYS[2]
local suppressed = KEYS[3]
local sends = KEYS[4]
local token = ARGV[1]
local ttl_ms = tonumber(ARGV[2])
local learned = ARGV[3]           -- lines of 'field<TAB>value<TAB>ttl_ms'
local uncount = ARGV[4] == '1'
local ANSWER = 5                  -- ARGV[5..]: the answer's fields, name/value pairs
if redis.call('HGET', record, '${f_token}') ~= token then return 0 end
if redis.call('HGET', record, '${f_state}') == '${s_done}' then return 2 end
if uncount then redis.call('ZREM', sends, token) end
redis.call('HSET', record, '${f_state}', '${s_done}', unpack(ARGV, ANSWER))
redis.call('HDEL', record, '${f_unknown_reason}')
redis.call('PEXPIRE', record, ttl_ms)
if redis.call('HGET', breaker, '${b_probe}') == token then
  -- the probe reached Twilio: the breaker closes (trips are remembered until it expires)
  redis.call('HDEL', breaker, '${b_probe}', '${b_probe_until}', '${b_open_until}')
end
for field, value, keep in string.gmatch(learned, '([^\\t\\n]+)\\t([^\\t\\n]+)\\t(%d+)') do
  redis.call('HSET', suppressed, field, value)
  if redis.call('PTTL', suppressed) < tonumber(keep) then
    redis.call('PEXPIRE', suppressed, tonumber(keep))
  end
end
return 1
"""
)

# Nothing was sent (or the send is refused): forget the claim and its place in the send log.
# Returns 1 released, 0 not the owner/gone/done. With trip_ms > 0 the breaker opens for that
# long, unless a concurrent refusal already opened it.
RELEASE = lua(
    """
local record = KEYS[1]
local sends = KEYS[2]
local breaker = KEYS[3]
local token = ARGV[1]
local trip_ms = tonumber(ARGV[2])
local breaker_ttl_ms = tonumber(ARGV[3])
"""
    + _NOW_MS
    + """
redis.call('ZREM', sends, token)
if redis.call('HGET', breaker, '${b_probe}') == token then
  redis.call('HDEL', breaker, '${b_probe}', '${b_probe_until}')
end
if trip_ms > 0 and tonumber(redis.call('HGET', breaker, '${b_open_until}') or '0') <= now then
  redis.call('HSET', breaker, '${b_open_until}', now + trip_ms)
  redis.call('HINCRBY', breaker, '${b_trips}', 1)
  redis.call('PEXPIRE', breaker, breaker_ttl_ms)
end
if redis.call('HGET', record, '${f_token}') ~= token then return 0 end
if redis.call('HGET', record, '${f_state}') == '${s_done}' then return 0 end
redis.call('DEL', record)
return 1
"""
)

# The send may have happened. 1 marked, 2 already unknown, 0 not applicable (other token, done,
# or - with require_expired=1 - the owner's lease is still running).
MARK_UNKNOWN = lua(
    """
local record = KEYS[1]
local breaker = KEYS[2]
local token = ARGV[1]
local reason = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local require_expired = ARGV[4] == '1'
"""
    + _NOW_MS
    + """
if redis.call('HGET', record, '${f_token}') ~= token then return 0 end
local state = redis.call('HGET', record, '${f_state}')
if state == '${s_unknown}' then return 2 end
if state ~= '${s_in_flight}' then return 0 end
if require_expired and tonumber(redis.call('HGET', record, '${f_lease_until}')) > now then
  return 0
end
redis.call('HSET', record, '${f_state}', '${s_unknown}', '${f_unknown_reason}', reason)
if redis.call('PTTL', record) < ttl_ms then redis.call('PEXPIRE', record, ttl_ms) end
if redis.call('HGET', breaker, '${b_probe}') == token then
  -- the probe may have reached Twilio: count it as the probe, close the breaker
  redis.call('HDEL', breaker, '${b_probe}', '${b_probe_until}', '${b_open_until}')
end
return 1
"""
)

# The per-account ceiling: count this send in each of the account's current windows. With
# enforce=1 a send over any limit is not counted (the counts are rolled back), so refused
# attempts do not keep an account locked. Returns {over, count1, count2, ...}: over is the
# 1-based index of the first window over its limit, 0 for none.
ACCOUNT_ADMIT = """
local enforce = ARGV[1] == '1'
local counts = {}
local over = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i * 2])
  local ttl_ms = tonumber(ARGV[i * 2 + 1])
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ttl_ms) end
  counts[i] = n
  if over == 0 and n > limit then over = i end
end
if over > 0 and enforce then
  for _, key in ipairs(KEYS) do redis.call('DECR', key) end
end
local reply = {over}
for i = 1, #counts do reply[i + 1] = counts[i] end
return reply
"""

# Take a send the ceiling counted back out (Twilio refused it definitely). A window that has
# already expired is left alone rather than recreated at -1.
ACCOUNT_UNADMIT = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('DECR', key) end
end
return #KEYS
"""

# The outage merge: a record made on an instance's private store during an outage joins the
# shared store. An existing record wins (UNKNOWN is never downgraded, DONE never replaced),
# except an in-flight copy of the very same claim (same token), which takes the settled
# outcome. Returns 1 taken, 0 left alone.
MERGE_RECORD = lua(
    """
local record = KEYS[1]
local ttl_ms = tonumber(ARGV[1])
local fields = {}
local state, token = nil, nil
for i = 2, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == '${f_state}' then state = ARGV[i + 1] end
  if ARGV[i] == '${f_token}' then token = ARGV[i + 1] end
end
if redis.call('EXISTS', record) == 1 then
  if redis.call('HGET', record, '${f_state}') ~= '${s_in_flight}' or state == '${s_in_flight}'
     or redis.call('HGET', record, '${f_token}') ~= token then
    return 0
  end
  redis.call('DEL', record)
end
redis.call('HSET', record, unpack(fields))
redis.call('PEXPIRE', record, ttl_ms)
return 1
"""
)

# -- resolving UNKNOWN sends (reconciliation, callbacks, operators) --------------------------

# Evidence found (a message in Twilio's list, fetched by SID): the UNKNOWN record becomes a
# stored result, replayed from now on. Returns 1 resolved, 0 not UNKNOWN (any more).
# The answer comes as name/value pairs after the TTL (codec.answer_fields).
RESOLVE_FOUND = lua(
    """
local record = KEYS[1]
local ttl_ms = tonumber(ARGV[1])
local ANSWER = 2                  -- ARGV[2..]: the answer's fields, name/value pairs
if redis.call('HGET', record, '${f_state}') ~= '${s_unknown}' then return 0 end
redis.call('HSET', record, '${f_state}', '${s_done}', unpack(ARGV, ANSWER))
redis.call('HDEL', record, '${f_resolved_sid}')
if redis.call('PTTL', record) < ttl_ms then redis.call('PEXPIRE', record, ttl_ms) end
return 1
"""
)

# A Message SID is known for the send (its status callback, or an operator) but not its JSON:
# the next retry fetches it with its own credential and resolves. 1 noted, 0 not UNKNOWN.
NOTE_SID = lua(
    """
local record = KEYS[1]
if redis.call('HGET', record, '${f_state}') ~= '${s_unknown}' then return 0 end
redis.call('HSET', record, '${f_resolved_sid}', ARGV[1], '${f_resolved_reason}', ARGV[2])
return 1
"""
)

# A lookup in Twilio's list found no trace of the send: counted on the record, for the
# operator deciding what it was (`records unknown`). 1 counted, 0 not UNKNOWN (never created).
NOTE_LOOKUP = lua(
    """
local record = KEYS[1]
if redis.call('HGET', record, '${f_state}') ~= '${s_unknown}' then return 0 end
redis.call('HINCRBY', record, '${f_reconciliations}', 1)
return 1
"""
)

# An operator says it was never sent: release, so the next retry sends. 1 released, 0 not
# UNKNOWN. The send leaves the recipient's send log (it never reached anyone).
RELEASE_UNKNOWN = lua(
    """
local record = KEYS[1]
local sends = KEYS[2]
if redis.call('HGET', record, '${f_state}') ~= '${s_unknown}' then return 0 end
redis.call('ZREM', sends, redis.call('HGET', record, '${f_token}'))
redis.call('DEL', record)
return 1
"""
)

# `unknown_resend_after`: one retry may claim an UNKNOWN send again, once ever per record.
# Returns {1, now} claimed (the record is in flight under the new token), {0, now} not.
RESEND_CLAIM = lua(
    """
local record = KEYS[1]
local token = ARGV[1]
local lease_ms = tonumber(ARGV[2])
local older_than_ms = tonumber(ARGV[3])
"""
    + _NOW_MS
    + """
if redis.call('HGET', record, '${f_state}') ~= '${s_unknown}' then return {0, now} end
if redis.call('HGET', record, '${f_resent}') == '1' then return {0, now} end
if tonumber(redis.call('HGET', record, '${f_claimed_at}')) > now - older_than_ms then
  return {0, now}
end
redis.call('HSET', record, '${f_state}', '${s_in_flight}', '${f_token}', token,
           '${f_lease_until}', now + lease_ms, '${f_resent}', '1')
return {1, now}
"""
)

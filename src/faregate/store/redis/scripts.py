"""The Lua scripts of the Redis hold store. Each runs atomically inside Redis: no other command
from any gateway instance runs between its reads and its writes.

Data per key K (hash-tagged {K}):
  fg:a:{K}  hash  bal (nano-dollars available), held (sum of open holds), rev (1: revoked)
  fg:h:{K}  hash  hold id -> "amount tokens hour created_ms request_id instance"
  fg:s:{K}  hash  hour -> nano-dollars spent or held in that hour (budgets)
  fg:r:{K}  hash  rl/rt, tl/tt: request and token bucket levels and their times (ms)
Shared:
  fg:hexp   zset  "K hold" scored by expiry (ms), for the sweeper
  fg:instances set  serving processes that hold reservations; fg:lease:I (string, expiring) is
            I's lease, renewed while it lives; fg:ih:I (set of "K hold") the holds I made. A hold
            whose instance has no lease is released by the sweeper, or at once by a reservation
            of the same key that would otherwise be refused
  fg:outbox stream of ledger entries waiting for PostgreSQL (store.redis.shipper)
  fg:epoch  string naming this Redis data set; a new one means the old data (and its holds) is gone
  fg:settled:H, fg:e:E  markers that a hold was settled or released (accounts.settle_retry_s plus a minute),
            a credit applied (ten minutes): a script retried after it ran does not act twice
  fg:tk:T   a cache hit's count T: "taken" from its key's requests bucket, or "back" (given back,
            or given up before it ran); a minute, so at most a key's requests per minute of them

Amounts are integers below 2^53, exact in Lua's doubles; they are written with %d because
Lua would print 1e+15 for a large integer. Time is Redis's own clock, shared by all instances.
"""

from __future__ import annotations

PRELUDE = r"""
local OUTBOX, EXPIRY, EPOCH = 'fg:outbox', 'fg:hexp', 'fg:epoch'
local function acct(k) return 'fg:a:{' .. k .. '}' end
local function holds(k) return 'fg:h:{' .. k .. '}' end
local function spend(k) return 'fg:s:{' .. k .. '}' end
local function rate(k) return 'fg:r:{' .. k .. '}' end
local function settled(hold) return 'fg:settled:' .. hold end
local function ticket(t) return 'fg:tk:' .. t end
local INSTANCES = 'fg:instances'
local function lease(inst) return 'fg:lease:' .. inst end
local function owned(inst) return 'fg:ih:' .. inst end
local LAPSED = "released: its instance's lease lapsed (the process is gone)"
local function int(x) return string.format('%d', x) end
local function num(x) return string.format('%.6f', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function emit(epoch, entry, k, kind, amount, cost, hold, req, hour, ts, note)
  redis.call('XADD', OUTBOX, '*', 'e', entry, 'k', k, 't', kind, 'a', int(amount), 'c', cost,
    'h', hold, 'r', req, 'b', hour, 'ts', int(ts), 'n', note, 'p', epoch)
end
-- A token bucket refilled to `now`: `limit` units per minute, `limit` at most.
local function refill(level, at, limit, now)
  if level == nil or at == nil then return limit, now end
  if now > at then level = math.min(limit, level + (now - at) * limit / 60000); at = now end
  return level, at
end
-- Close a hold: settle it (cost given) or release it (cost nil). `used` corrects the token
-- bucket (tokens used vs reserved) when `tpm` > 0. Returns the balance change, or nil.
local function close_hold(epoch, k, hold, cost, used, tpm, note, now)
  local raw = redis.call('HGET', holds(k), hold)
  if not raw then return nil end
  redis.call('HDEL', holds(k), hold)
  redis.call('ZREM', EXPIRY, k .. ' ' .. hold)
  if redis.call('EXISTS', acct(k)) == 0 then return nil end
  local amount, tokens, hour, _, req, inst = string.match(raw, '^(%S+) (%S+) (%S+) (%S+) ?(%S*) ?(%S*)$')
  if inst ~= '' then redis.call('SREM', owned(inst), k .. ' ' .. hold) end
  amount = tonumber(amount)
  local change = amount - (cost or 0)
  redis.call('HINCRBY', acct(k), 'bal', int(change))
  redis.call('HINCRBY', acct(k), 'held', int(-amount))
  if change ~= 0 then redis.call('HINCRBY', spend(k), hour, int(-change)) end
  if used ~= nil and tpm > 0 then
    local r = redis.call('HMGET', rate(k), 'tl', 'tt')
    local level, at = refill(tonumber(r[1]), tonumber(r[2]), tpm, now)
    level = math.min(tpm, level + tonumber(tokens) - used)
    redis.call('HSET', rate(k), 'tl', num(level), 'tt', int(at))
  end
  local kind = 'settlement'
  if cost == nil then kind = 'release'; cost = '' else cost = int(cost) end
  emit(epoch, hold .. ':close', k, kind, change, cost, hold, req, hour, now, note)
  return change
end
-- Release up to n holds of an instance (its lease lapsed, or an operator says it is gone); the
-- instance is forgotten once it holds nothing. At most n: a script blocks Redis while it runs, and
-- a dead instance may have held very many (the caller runs it again until a batch comes up short).
local function release_instance(epoch, inst, note, now, n)
  local members = redis.call('SPOP', owned(inst), n)
  for _, member in ipairs(members) do
    local k, hold = string.match(member, '^(%S+) (%S+)$')
    close_hold(epoch, k, hold, nil, nil, 0, note, now)
  end
  if redis.call('SCARD', owned(inst)) == 0 then redis.call('SREM', INSTANCES, inst) end
  return #members
end
-- Release up to n holds of instances whose lease has lapsed.
local function sweep_instances(epoch, now, n)
  local released = 0
  for _, inst in ipairs(redis.call('SMEMBERS', INSTANCES)) do
    if released >= n then break end
    if redis.call('EXISTS', lease(inst)) == 0 then
      released = released + release_instance(epoch, inst, LAPSED, now, n - released)
    end
  end
  return released
end
-- Release the holds of key k whose instance's lease has lapsed; how many.
local function release_dead_of(epoch, k, now)
  local released = 0
  local all = redis.call('HGETALL', holds(k))
  for j = 1, #all, 2 do
    local inst = string.match(all[j + 1], '^%S+ %S+ %S+ %S+ ?%S* (%S+)$')
    if inst and inst:sub(1, 5) == 'inst_' and redis.call('EXISTS', lease(inst)) == 0 then
      close_hold(epoch, k, all[j], nil, nil, 0, LAPSED, now)
      released = released + 1
    end
  end
  return released
end
-- Release up to `n` holds past their expiry (their process died or lost them).
local function expire(epoch, now, n)
  local due = redis.call('ZRANGEBYSCORE', EXPIRY, '-inf', now, 'LIMIT', 0, n)
  for _, member in ipairs(due) do
    redis.call('ZREM', EXPIRY, member)
    local k, hold = string.match(member, '^(%S+) (%S+)$')
    close_hold(epoch, k, hold, nil, nil, 0, 'expired: not settled in time', now)
  end
  return #due
end
"""

# KEYS: none (names derive from ARGV[1]).
# ARGV: key, hold, request, amount, tokens, hour, ttl_ms, rpm, tpm, prune_before_hour, n, (since, limit)*n,
#       instance
RESERVE = r"""
local k, hold, req = ARGV[1], ARGV[2], ARGV[3]
local amount, tokens, hour = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local ttl, rpm, tpm, prune, n = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10]),
  tonumber(ARGV[11])
local now = now_ms()
local epoch = redis.call('GET', EPOCH)
if not epoch or redis.call('EXISTS', acct(k)) == 0 then return {'noload'} end
-- Already reserved (this call retried on a fresh connection after the first one ran): as it was,
-- with the buckets' levels now (read, not taken again), for the answer's headers.
if redis.call('HEXISTS', holds(k), hold) == 1 then
  local a = redis.call('HMGET', acct(k), 'bal', 'held')
  local r = redis.call('HMGET', rate(k), 'rl', 'rt', 'tl', 'tt')
  local rl, tl = '', ''
  if rpm > 0 then rl = num((refill(tonumber(r[1]), tonumber(r[2]), rpm, now))) end
  if tpm > 0 then tl = num((refill(tonumber(r[3]), tonumber(r[4]), tpm, now))) end
  return {'ok', a[1], a[2], rl, tl}
end
-- Closed already, before it was ever made: the gateway gave the reservation up when Redis did not
-- answer it in time, and released the hold; this is that reservation, run late. Not made now.
if redis.call('EXISTS', settled(hold)) == 1 then return {'closed'} end
expire(epoch, now, 16)
local a = redis.call('HMGET', acct(k), 'bal', 'held', 'rev')
local bal, held = tonumber(a[1]), tonumber(a[2]) or 0
if a[3] == '1' then return {'revoked', int(bal), int(held)} end
local r = redis.call('HMGET', rate(k), 'rl', 'rt', 'tl', 'tt')
local rl, rt, tl, tt = '', '', '', ''
if rpm > 0 then rl, rt = refill(tonumber(r[1]), tonumber(r[2]), rpm, now) end
if tpm > 0 then tl, tt = refill(tonumber(r[3]), tonumber(r[4]), tpm, now) end
-- '' for a limit the key does not have: a level itself may be below zero (an overrun).
local levels = {rpm > 0 and num(rl) or '', tpm > 0 and num(tl) or ''}
-- More tokens than the limit can never fit: said before the requests bucket (no Retry-After).
if tpm > 0 and tokens > tpm then return {'tokens', int(bal), int(held), levels[1], levels[2]} end
if rpm > 0 and rl < 1 then return {'requests', int(bal), int(held), levels[1], levels[2]} end
if tpm > 0 and tl < tokens then return {'tokens', int(bal), int(held), levels[1], levels[2]} end
local inst = ARGV[12 + 2 * n] or ''
-- Would credits or a budget refuse it? (nil: no)
local function refusal()
  if bal < amount then return {'credits', int(bal), int(held), levels[1], levels[2]} end
  if n > 0 or redis.call('HLEN', spend(k)) > 800 then
    local sums = {}
    for i = 1, n do sums[i] = 0 end
    local buckets = redis.call('HGETALL', spend(k))
    for j = 1, #buckets, 2 do
      local h, v = tonumber(buckets[j]), tonumber(buckets[j + 1])
      if h < prune then redis.call('HDEL', spend(k), buckets[j]) end
      for i = 1, n do
        if h >= tonumber(ARGV[10 + 2 * i]) then sums[i] = sums[i] + v end
      end
    end
    for i = 1, n do
      if sums[i] + amount > tonumber(ARGV[11 + 2 * i]) then
        return {'budget', int(bal), int(held), levels[1], levels[2], tostring(i), int(sums[i])}
      end
    end
  end
  return nil
end
local refused = refusal()
-- Before refusing, give back what dead instances still hold for this key, and look again.
if refused and release_dead_of(epoch, k, now) > 0 then
  a = redis.call('HMGET', acct(k), 'bal', 'held')
  bal, held = tonumber(a[1]), tonumber(a[2]) or 0
  refused = refusal()
end
if refused then return refused end
if rpm > 0 then rl = rl - 1; redis.call('HSET', rate(k), 'rl', num(rl), 'rt', int(rt)) end
if tpm > 0 then tl = tl - tokens; redis.call('HSET', rate(k), 'tl', num(tl), 'tt', int(tt)) end
bal = redis.call('HINCRBY', acct(k), 'bal', int(-amount))
held = redis.call('HINCRBY', acct(k), 'held', int(amount))
redis.call('HSET', holds(k), hold,
  int(amount) .. ' ' .. int(tokens) .. ' ' .. hour .. ' ' .. int(now) .. ' ' .. req .. ' ' .. inst)
redis.call('ZADD', EXPIRY, int(now + ttl), k .. ' ' .. hold)
if inst ~= '' then redis.call('SADD', owned(inst), k .. ' ' .. hold) end
redis.call('HINCRBY', spend(k), hour, int(amount))
emit(epoch, hold .. ':res', k, 'reservation', -amount, '', hold, req, hour, now, '')
return {'ok', int(bal), int(held), rpm > 0 and num(rl) or '', tpm > 0 and num(tl) or ''}
"""

# A cache hit: refused as a reservation is when the key is revoked (before its rate limit), else
# one request from the requests-per-minute bucket (rpm 0: none), nothing else; the token bucket's
# level (tpm 0: none) is read, not taken, for the headers. ARGV: key, rpm, tpm, the count's
# ticket ('' none), how long the ticket is remembered (ms)
TAKE_REQUEST = r"""
local k, rpm, tpm = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]) or 0
local t = ARGV[4] or ''
local epoch = redis.call('GET', EPOCH)
if not epoch or redis.call('EXISTS', acct(k)) == 0 then return {'noload'} end
if redis.call('HGET', acct(k), 'rev') == '1' then return {'revoked', '', ''} end
local now = now_ms()
local r = redis.call('HMGET', rate(k), 'rl', 'rt', 'tl', 'tt')
local tl = ''
if tpm > 0 then tl = num((refill(tonumber(r[3]), tonumber(r[4]), tpm, now))) end
if rpm == 0 then return {'ok', '', tl} end
local rl, rt = refill(tonumber(r[1]), tonumber(r[2]), rpm, now)
local mark = t ~= '' and redis.call('GET', ticket(t))
-- Given up by the gateway before it ran (Redis held it unanswered): not taken now.
if mark == 'back' then return {'closed', num(rl), tl} end
-- Taken already (this call retried on a fresh connection after the first one ran): not twice.
if mark == 'taken' then return {'ok', num(rl), tl} end
if rl < 1 then return {'requests', num(rl), tl} end
rl = rl - 1
redis.call('HSET', rate(k), 'rl', num(rl), 'rt', int(rt))
if t ~= '' then redis.call('SET', ticket(t), 'taken', 'PX', tonumber(ARGV[5])) end
return {'ok', num(rl), tl}
"""

# A cache hit's count the gateway gave up on (Redis did not answer it in time): the request is
# given back if it was taken, and the count, if it runs only now, takes nothing.
# ARGV: key, ticket, rpm, how long the ticket is remembered (ms)
GIVE_BACK_REQUEST = r"""
local k, t, rpm = ARGV[1], ARGV[2], tonumber(ARGV[3])
local mark = redis.call('GET', ticket(t))
redis.call('SET', ticket(t), 'back', 'PX', tonumber(ARGV[4]))
if mark ~= 'taken' then return 0 end
local r = redis.call('HMGET', rate(k), 'rl', 'rt')
local rl, rt = refill(tonumber(r[1]), tonumber(r[2]), rpm, now_ms())
redis.call('HSET', rate(k), 'rl', num(math.min(rpm, rl + 1)), 'rt', int(rt))
return 1
"""

# ARGV: key, hold, request, hour, cost (nano), used tokens, tpm, how long to remember it (ms),
#       late (1: charge it even if the hold is gone; else answer 'gone' and do nothing)
SETTLE = r"""
local k, hold, req, hour = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cost, used, tpm, remember = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local now = now_ms()
local epoch = redis.call('GET', EPOCH)
if not epoch or redis.call('EXISTS', acct(k)) == 0 then return {'noload'} end
-- Settled already: this is the same settlement again (retried on a fresh connection, or by the
-- gateway's settlement retry after an outage hid that the first call had landed).
if redis.call('EXISTS', settled(hold)) == 1 then return {'ok'} end
-- Gone, and not known here as settled: the caller looks in PostgreSQL's ledger first (Redis may
-- have lost its memory of the settlement with its data set) and asks again with late = 1.
if ARGV[9] ~= '1' and redis.call('HEXISTS', holds(k), hold) == 0 then return {'gone'} end
-- Remembered as long as such a retry may come, so that it is not charged again.
redis.call('SET', settled(hold), '1', 'PX', remember)
if close_hold(epoch, k, hold, cost, used, tpm, '', now) ~= nil then return {'ok'} end
-- The hold is gone (expired, or lost with an earlier data set): charge the cost on its own.
if cost > 0 then
  redis.call('HINCRBY', acct(k), 'bal', int(-cost))
  redis.call('HINCRBY', spend(k), hour, int(cost))
  emit(epoch, hold .. ':late', k, 'settlement', -cost, int(cost), hold, req, hour, now,
    'late: the hold had expired')
end
return {'late'}
"""

# ARGV: key, hold, tpm, how long to remember it (ms)
RELEASE = r"""
local k, hold, tpm = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms()
local epoch = redis.call('GET', EPOCH)
if not epoch then return {'gone'} end
-- Remembered as closed: a reservation of this hold that runs after it (one Redis held unanswered
-- while it was frozen) is not made.
redis.call('SET', settled(hold), '1', 'PX', tonumber(ARGV[4]))
if close_hold(epoch, k, hold, nil, 0, tpm, '', now) ~= nil then return {'ok'} end
return {'gone'}
"""

# ARGV: how many at most, of expired holds and of dead instances' holds each
SWEEP = r"""
local epoch = redis.call('GET', EPOCH)
if not epoch then return 0 end
local now = now_ms()
return expire(epoch, now, tonumber(ARGV[1])) + sweep_instances(epoch, now, tonumber(ARGV[1]))
"""

# An operator releases a (dead) instance's holds, up to n. ARGV: instance, note, n
RELEASE_INSTANCE = r"""
local epoch = redis.call('GET', EPOCH)
if not epoch then return 0 end
return release_instance(epoch, ARGV[1], ARGV[2], now_ms(), tonumber(ARGV[3]))
"""

# A grant or top-up, refused ('cap') if the balance plus the key's holds (which come back to it)
# would pass the cap: past 2^53 this file's arithmetic is no longer exact.
# ARGV: key, entry id, kind, amount, note, cap
CREDIT = r"""
local k = ARGV[1]
local epoch = redis.call('GET', EPOCH)
if not epoch or redis.call('EXISTS', acct(k)) == 0 then return {'noload'} end
-- Applied once per entry id, even when the call is retried on a fresh connection.
if redis.call('EXISTS', 'fg:e:' .. ARGV[2]) == 1 then return {'ok', redis.call('HGET', acct(k), 'bal')} end
local a = redis.call('HMGET', acct(k), 'bal', 'held')
-- Each term is below 2^53; a sum at or past it compares above the cap all the same.
if tonumber(a[1]) + (tonumber(a[2]) or 0) + tonumber(ARGV[4]) > tonumber(ARGV[6]) then
  return {'cap', a[1], a[2] or '0'}
end
redis.call('SET', 'fg:e:' .. ARGV[2], '1', 'PX', 600000)
local bal = redis.call('HINCRBY', acct(k), 'bal', ARGV[4])
emit(epoch, ARGV[2], k, ARGV[3], tonumber(ARGV[4]), '', '', '', '', now_ms(), ARGV[5])
return {'ok', int(bal)}
"""

# ARGV: new epoch id. Returns the epoch in force (the new one only if there was none).
ENSURE_EPOCH = r"""
redis.call('SET', EPOCH, ARGV[1], 'NX')
return redis.call('GET', EPOCH)
"""

# Take over an account from PostgreSQL, unless an instance already did.
# ARGV: key, epoch the snapshot was made for, balance, revoked (0/1), (hour, spent)*
LOAD = r"""
local k = ARGV[1]
if redis.call('GET', EPOCH) ~= ARGV[2] then return 'epoch' end
if redis.call('EXISTS', acct(k)) == 1 then return 'exists' end
-- Leftovers without an account are from a lost data set; PostgreSQL released their holds.
for _, hold in ipairs(redis.call('HKEYS', holds(k))) do redis.call('ZREM', EXPIRY, k .. ' ' .. hold) end
redis.call('DEL', holds(k), spend(k))
redis.call('HSET', acct(k), 'bal', ARGV[3], 'held', '0', 'rev', ARGV[4])
for i = 5, #ARGV, 2 do redis.call('HSET', spend(k), ARGV[i], ARGV[i + 1]) end
return 'loaded'
"""

# ARGV: key. Marks a loaded account revoked (an unloaded one reads revoked_at when it loads).
REVOKE = r"""
if redis.call('EXISTS', acct(ARGV[1])) == 1 then redis.call('HSET', acct(ARGV[1]), 'rev', '1') end
return 1
"""

# ARGV: key. Balance, held, and the open holds.
READ = r"""
local k = ARGV[1]
if redis.call('EXISTS', acct(k)) == 0 then return {'noload'} end
local a = redis.call('HMGET', acct(k), 'bal', 'held')
return {'ok', a[1], a[2], redis.call('HGETALL', holds(k))}
"""

# ARGV: key, since hours... Spend in buckets >= each.
SPENT = r"""
local k = ARGV[1]
if redis.call('EXISTS', acct(k)) == 0 then return {'noload'} end
local sums = {}
for i = 2, #ARGV do sums[i - 1] = 0 end
local buckets = redis.call('HGETALL', spend(k))
for j = 1, #buckets, 2 do
  local h, v = tonumber(buckets[j]), tonumber(buckets[j + 1])
  for i = 2, #ARGV do if h >= tonumber(ARGV[i]) then sums[i - 1] = sums[i - 1] + v end end
end
local out = {'ok'}
for i = 1, #sums do out[i + 1] = int(sums[i]) end
return out
"""

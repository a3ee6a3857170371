"""The Lua scripts of job records (store, purge, prune) and ``SETTLE``, which writes a record
and acks or retries its lease in one step (key layout: :mod:`.scripts`).

Why a record's write is fenced in the script: a worker whose lease was taken over may still
try to store an outcome; ``put_record`` keeps the record of the newest run and attempt
(:func:`nuvom_kernel.models.supersedes`), so a late settle never overwrites a newer one.

Why ``R rx``, a schedule of expiries: a final record gets a TTL, and Redis deletes its hash
when it runs out, but Redis cannot delete the record's three index entries with it (a
sorted-set member has no TTL). Left there they grew without bound (~36 MB per million
jobs) and ``counts()`` kept counting them. So ``put_record`` sets the record's expiry as an
absolute time (``PEXPIREAT``, from the server's ``TIME``) and adds the same time to ``rx``,
its member being the task (length-prefixed) and the id: after the record is gone only the
member can say which task index holds it. :data:`TRIM` takes the entries that are due and
removes the index entries of those whose record is gone. The record's own expiry decides,
not this process's ``result_ttl_secs``: processes with different TTLs, records kept until
purged (TTL 0, never scheduled) and records written again since (their expiry moved, or
removed by a new run) are all judged by the record as it is now.
"""

from __future__ import annotations

from nuvom_plugins_redis.lua import _COMMON, _FENCED, _REQUEUE

_RECORDS = r"""
local TERMINAL = {SUCCEEDED = true, FAILED = true, CANCELLED = true}
local now_ms = nil  -- the server's clock in ms, read once, by the first record to expire
-- store one record if it supersedes the stored one (nuvom_kernel.models.supersedes)
local function put_record(R, ttl, id, run, att, st, fn, u, data)
  local rk = R .. 'r:' .. id
  local old = redis.call('HMGET', rk, 'run', 'att', 'st', 'fn')
  run, att = tonumber(run), tonumber(att)
  if old[1] then
    local orun, oatt = tonumber(old[1]), tonumber(old[2])
    if run ~= orun or att ~= oatt then
      if run < orun or (run == orun and att < oatt) then return 0 end
    elseif TERMINAL[old[3]] and not TERMINAL[st] then
      return 0
    end
    -- a cancel is final for its run: only a later run replaces it
    if old[3] == 'CANCELLED' and run == orun and st ~= 'CANCELLED' then return 0 end
    redis.call('ZREM', R .. 'ri:s:' .. old[3], id)
    redis.call('ZREM', R .. 'ri:t:' .. old[4], id)
  end
  redis.call('HSET', rk, 'run', run, 'att', att, 'st', st, 'fn', fn, 'u', u, 'd', data)
  redis.call('ZADD', R .. 'ri', u, id)
  redis.call('ZADD', R .. 'ri:s:' .. st, u, id)
  redis.call('ZADD', R .. 'ri:t:' .. fn, u, id)
  if TERMINAL[st] and ttl > 0 then
    if not now_ms then
      local t = redis.call('TIME')
      now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
    -- the same absolute time on the record and in its entry of the expiry schedule
    local at = string.format('%.0f', now_ms + math.floor(ttl * 1000))
    redis.call('PEXPIREAT', rk, at)
    redis.call('ZADD', R .. 'rx', at, #fn .. ':' .. fn .. id)
  else
    redis.call('PERSIST', rk)
  end
  return 1
end
"""

#: ARGV: R, ttl secs, then 7 values per record: id, run, attempts, status, task,
#: updated_at, JSON. Returns 1 (stored) or 0 (refused by the fence) per record.
PUT = "#!lua\n" + _RECORDS + r"""
local R, ttl = ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 7 do
  out[#out + 1] = put_record(R, ttl, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3],
                             ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
end
return out
"""

#: ARGV: R, status, older_than ('+inf' or a number), chunk. Deletes up to ``chunk`` records
#: of that terminal status updated before older_than, and prunes index entries whose record
#: expired. Returns {deleted, index entries looked at}.
PURGE = "#!lua\n" + r"""
local R, st, limit = ARGV[1], ARGV[2], tonumber(ARGV[4])
local max = ARGV[3] == '+inf' and '+inf' or '(' .. ARGV[3]
local ids = redis.call('ZRANGE', R .. 'ri:s:' .. st, '-inf', max, 'BYSCORE', 'LIMIT', 0, limit)
local deleted = 0
for _, id in ipairs(ids) do
  local rk = R .. 'r:' .. id
  local h = redis.call('HMGET', rk, 'st', 'fn')
  redis.call('ZREM', R .. 'ri:s:' .. st, id)
  if not h[1] then
    redis.call('ZREM', R .. 'ri', id)
  elseif h[1] == st then
    redis.call('DEL', rk)
    redis.call('ZREM', R .. 'ri', id)
    redis.call('ZREM', R .. 'ri:t:' .. h[2], id)
    redis.call('ZREM', R .. 'rx', #h[2] .. ':' .. h[2] .. id)
    deleted = deleted + 1
  end
end
return {deleted, #ids}
"""

#: ARGV: R, then (index key, id) pairs whose record is gone: drop them from their index.
PRUNE = "#!lua\n" + r"""
local R = ARGV[1]
for i = 2, #ARGV, 2 do
  if redis.call('EXISTS', R .. 'r:' .. ARGV[i + 1]) == 0 then
    redis.call('ZREM', ARGV[i], ARGV[i + 1])
    redis.call('ZREM', R .. 'ri', ARGV[i + 1])
  end
end
return 0
"""

#: ARGV: R, limit. Takes up to ``limit`` entries of the expiry schedule ``R rx`` that are
#: due by the server's clock and, per entry, asks its record (``PTTL``): gone, its index
#: entries are removed (``ri``, each final status's, its task's); still there with a TTL,
#: it was written again with a later expiry and the entry moves to that time; still there
#: without one (a new run, or stored by a process whose TTL is 0), the entry is dropped and
#: the index entries stay: that record expires only after another final write, which
#: schedules it again. Returns {index entries removed for gone records, entries taken}.
TRIM = "#!lua\n" + _RECORDS + r"""
local R, limit = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGE', R .. 'rx', '-inf', string.format('%.0f', now), 'BYSCORE',
                       'LIMIT', 0, limit)
local gone, done = 0, {}
for _, m in ipairs(due) do
  local colon = string.find(m, ':', 1, true)
  local n = colon and tonumber(string.sub(m, 1, colon - 1))
  local pttl = -2
  if n then
    local fn, id = string.sub(m, colon + 1, colon + n), string.sub(m, colon + n + 1)
    pttl = redis.call('PTTL', R .. 'r:' .. id)
    if pttl == -2 then
      redis.call('ZREM', R .. 'ri', id)
      for st in pairs(TERMINAL) do redis.call('ZREM', R .. 'ri:s:' .. st, id) end
      redis.call('ZREM', R .. 'ri:t:' .. fn, id)
      gone = gone + 1
    end
  end
  if pttl >= 0 then  -- written again since, expiring later: due then
    redis.call('ZADD', R .. 'rx', string.format('%.0f', now + pttl + 1), m)
  else  -- handled, or kept until purged (-1), or unreadable: out of the schedule
    done[#done + 1] = m
  end
end
if #done > 0 then redis.call('ZREM', R .. 'rx', unpack(done)) end
return {gone, #due}
"""

#: ARGV: P, R, ttl, n, then 12 values per settlement: lease id, token, '' (ack) or a retry
#: delay, '1'/'0' new body, body, then the record's 7 values as in PUT. Per settlement: the
#: token must hold and the record supersede the stored one, else nothing of it is written.
SETTLE = "#!lua\n" + _COMMON + _FENCED + _REQUEUE + _RECORDS + r"""
local now = nil  -- the server's clock, read only by a retry (an ack does not need it)
local R, ttl, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 0, n - 1 do
  local b = 5 + i * 12
  local id = ARGV[b]
  local h = held(id, ARGV[b + 1])
  local ok = 0
  if h and put_record(R, ttl, ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8],
                      ARGV[b + 9], ARGV[b + 10], ARGV[b + 11]) == 1 then
    ok = 1
    local jk = P .. 'j:' .. id
    if ARGV[b + 2] == '' then
      unlist(id, h)
      redis.call('DEL', jk)
    else
      local delay = tonumber(ARGV[b + 2])
      now = now or clock()
      redis.call('HINCRBY', jk, 'f', 1)
      if ARGV[b + 3] == '1' then redis.call('HSET', jk, 'b', ARGV[b + 4]) end
      if delay <= 0 then redis.call('HSET', jk, 'a', f17(now)) end
      requeue(id, h, delay, now)
    end
  end
  out[#out + 1] = ok
end
forget_empty()  -- an ack may have taken a queue's last message (scripts: P queues)
return out
"""

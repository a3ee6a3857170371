"""The Lua every script is assembled from (the scripts: :mod:`.scripts`, which also
gives the key layout and the invariants these functions keep).

Why a module of its own: the claim and lease scripts (:mod:`.scripts`), the job-record
scripts (:mod:`.record_scripts`), the limits' (:mod:`.limit_scripts`), the looks and
upkeep (:mod:`.admin_scripts`) and ``BROWSE`` (:mod:`.browse`) all start with ``_COMMON``;
kept apart from any one of them, none imports another to get it. Each fragment is
included only by the scripts that call it: every script call defines the functions it
includes (a closure each, ~0.1-0.2 µs), so the acks and pushes of the hot path carry
only ``_COMMON`` (see also :mod:`.limit_lua`).
"""

from __future__ import annotations

__all__ = ["RANK_LEN", "_BYTE_ORDER", "_COMMON", "_FENCED", "_REQUEUE"]

#: Characters of a ready member before the job id: 17 digits of created_at in µs, 12 of seq.
RANK_LEN = 29

_COMMON = r"""
local P = ARGV[1]
local function f17(x) return string.format('%.17g', x) end
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6, t[1], t[2]
end
local function qkey(q, kind) return P .. 'q:' .. q .. ':' .. kind end
local function wake() redis.call('ZADD', P .. 'wake', 0, 'w') end
-- queues this script took a message out of (see the module docs): one check each at the end
local emptied = {}
local function empty(q)  -- (the held index, rarely there, read only when the rest is gone)
  return redis.call('EXISTS', qkey(q, 'ready'), qkey(q, 'delayed'), qkey(q, 'leased')) == 0
         and redis.call('EXISTS', qkey(q, 'held')) == 0
end
local function forget_empty()
  for q in pairs(emptied) do
    if empty(q) then redis.call('SREM', P .. 'queues', q) end
  end
end
-- remove a message from whichever ordered set its state puts it in (h: HMGET q s r k u);
-- a ready message not in ready is held back by a limit, in its task's held set
local function unlist(id, h)
  emptied[h[1]] = true
  if h[2] == 'l' then redis.call('ZREM', qkey(h[1], 'leased'), id)
  elseif h[2] == 'd' then redis.call('ZREM', qkey(h[1], 'delayed'), id)
  elseif h[2] == 'r' and redis.call('ZREM', qkey(h[1], 'ready'), h[3]) == 0 then
    -- not in ready: held back by a limit, in its task's held set (as hkey() and tidy_held()
    -- in _HELD say it, inline: a function defined here would cost every script call)
    local t = redis.call('HGET', P .. 'j:' .. id, 't')
    local key = t and qkey(h[1], 'held:' .. t .. ':' .. #t)
    if key and redis.call('ZREM', key, h[3]) == 1 and redis.call('EXISTS', key) == 0 then
      redis.call('SREM', qkey(h[1], 'held'), t)
    end
  end
  if h[5] then  -- a lease counted against task u's limit: its room back, a waiter woken
    redis.call('ZREM', P .. 'running:' .. h[5], id)
    wake()
  end
end
-- why a field cannot be used: missing, or (given) not the number it must be
local function bad_field(name, v)
  if not v then return 'missing field ' .. name end
  return 'field ' .. name .. ' holds ' .. string.format('%q', string.sub(v, 1, 40)) ..
         ', not a number'
end
-- move a damaged message aside, never run and never lost: its hash as found becomes
-- P quarantine:<n>, listed in P quarantine (the caller has taken it out of its set)
local function quarantine(id, q, why, now)
  local n = redis.call('INCR', P .. 'seq')
  local xk = P .. 'quarantine:' .. n
  local u = redis.call('HGET', P .. 'j:' .. id, 'u')
  if u then redis.call('ZREM', P .. 'running:' .. u, id) end
  redis.call('RENAME', P .. 'j:' .. id, xk)
  redis.call('HSET', xk, 'xi', id, 'xq', q, 'xw', why, 'xt', f17(now))
  redis.call('ZADD', P .. 'quarantine', now, n)
  emptied[q] = true
end
-- a message back to ready by its priority p and rank r; a hash without them is quarantined
-- (a hash that is gone was deleted or evicted: nothing to move)
local function back_to_ready(id, q, now)
  local jk = P .. 'j:' .. id
  local h = redis.call('HMGET', jk, 'p', 'r')
  local p = tonumber(h[1])
  if p and p == p and h[2] then
    redis.call('ZADD', qkey(q, 'ready'), -p, h[2])
    redis.call('HSET', jk, 's', 'r')
  elseif redis.call('EXISTS', jk) == 1 then
    quarantine(id, q, h[2] and bad_field('p (priority)', h[1]) or 'missing field r (rank)',
               now)
  else
    emptied[q] = true  -- the caller takes its entry out, and nothing goes back in
  end
end
-- due delayed messages and expired leases of queue q back to ready (bounded per call)
local function promote(q, now)
  local moved = 0
  for _, kind in ipairs({'delayed', 'leased'}) do
    local key = qkey(q, kind)
    local due = redis.call('ZRANGE', key, '-inf', f17(now), 'BYSCORE', 'LIMIT', 0, 500)
    for _, id in ipairs(due) do back_to_ready(id, q, now) end
    if #due > 0 then redis.call('ZREM', key, unpack(due)) end
    moved = moved + #due
  end
  return moved
end
-- is the message held by a live lease: leased (state l, a token) with its deadline, its
-- score in q's leased set, still ahead? False once the deadline is <= now: the bound by
-- which promote() moves it back to ready and STATS counts it waiting (module docs)
local function lease_live(q, id, state, token, now)
  if state ~= 'l' or not token then return false end
  local deadline = redis.call('ZSCORE', qkey(q, 'leased'), id)
  if not deadline then return false end
  return tonumber(deadline) > now
end
local function queue_list(n, first)
  if n < 0 then return redis.call('SMEMBERS', P .. 'queues') end
  local qs = {}
  for i = 1, n do qs[i] = ARGV[first + i - 1] end
  return qs
end
local function next_due(qs)
  local best = nil
  for _, q in ipairs(qs) do
    for _, kind in ipairs({'delayed', 'leased'}) do
      local head = redis.call('ZRANGE', qkey(q, kind), 0, 0, 'WITHSCORES')
      if head[2] then
        local at = tonumber(head[2])
        if best == nil or at < best then best = at end
      end
    end
  end
  return best
end
"""

#: ``bytes_lt``: strings in byte order, the order of Redis's sorted-set members and of
#: Python's ``str`` (UTF-8 bytes sort as code points). Why not Lua's ``<``: it is
#: ``strcoll``, and Redis sets ``LC_COLLATE`` from its environment, so under a locale such
#: as ``en_US.UTF-8`` it puts ``a`` before ``B``. For ``BROWSE``, which compares ids and queue
#: names (the claims compare ranks' digits only: see ``_CLAIMING``).
_BYTE_ORDER = r"""
-- a < b, byte by byte
local function bytes_lt(a, b)
  if a == b then return false end
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end
"""

_FENCED = r"""
-- (a hash that lost its q is not held: every script acting on a lease finds its queue by
-- q, and failed on it; the lease expires and the next claim quarantines the message)
local function held(id, token)
  local h = redis.call('HMGET', P .. 'j:' .. id, 'q', 's', 'r', 'k', 'u')
  if h[1] and h[4] and h[4] == token then return h end
  return nil
end
"""

_REQUEUE = r"""
-- a held message back to waiting: at once (ready) or after delay secs (delayed)
local function requeue(id, h, delay, now)
  local jk = P .. 'j:' .. id
  unlist(id, h)
  redis.call('HDEL', jk, 'k', 'u')
  if delay > 0 then
    local at = f17(now + delay)
    redis.call('HSET', jk, 'a', at, 's', 'd')
    redis.call('ZADD', qkey(h[1], 'delayed'), at, id)
  else
    back_to_ready(id, h[1], now)
  end
  wake()
end
"""

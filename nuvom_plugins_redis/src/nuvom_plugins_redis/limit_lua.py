"""Lua shared by the scripts that read held-back messages (concurrency limits: see
:mod:`.limit_scripts`). A module of its own so that :mod:`.scripts` (``CLAIM``), :mod:`.browse`
and :mod:`.limit_scripts` can all include it: it uses ``_COMMON``'s ``qkey`` and ``P`` and
must follow it in a script (``_COMMON``: :mod:`.lua`).

Why these are not in ``_COMMON``: every script call defines the functions it includes (a
closure each, ~0.1-0.2 µs), so the acks and pushes of the hot path do not carry them
(``unlist`` spells out the two lines of ``hkey``/``tidy_held`` it needs).
"""

from __future__ import annotations

__all__ = ["_CLAIMING", "_HELD"]

#: Lua of the scripts that read held sets (claims, ``CLEAR``, ``STATS``, ``BROWSE``, the
#: per-task counts).
_HELD = r"""
-- task t's held-back ready messages in queue q (module docs: "Concurrency limits")
local function hkey(q, t) return qkey(q, 'held:' .. t .. ':' .. #t) end
-- q's index of held tasks names only tasks with a held message (scripts keep it so)
local function tidy_held(q, t)
  if redis.call('EXISTS', hkey(q, t)) == 0 then redis.call('SREM', qkey(q, 'held'), t) end
end
"""

#: Lua of the two claim scripts only (``CLAIM`` and ``limit_scripts.CLAIM_LIMITED``).
_CLAIMING = _HELD + r"""
-- Claims merge queues' ready sets comparing members with Lua's <, which is strcoll (the
-- server's locale) where Redis orders a set's members by bytes. It agrees here: a member
-- is its rank's RANK_LEN digits, unique per server (created µs and the INCR counter), then
-- the id, and digit strings of one length collate as bytes in every locale, so two members
-- never reach their ids. BROWSE, which also compares ids and queue names, uses bytes_lt.
-- the first k held-back messages of task t in queue q back to ready, with the score and
-- member they had there: their place in claim order
local function unhold(q, t, k)
  local key = hkey(q, t)
  local back = redis.call('ZRANGE', key, 0, k - 1, 'WITHSCORES')
  if #back > 0 then
    local pairs_, members = {}, {}
    for i = 1, #back, 2 do
      pairs_[i], pairs_[i + 1] = back[i + 1], back[i]  -- score, member
      members[#members + 1] = back[i]
    end
    redis.call('ZADD', qkey(q, 'ready'), unpack(pairs_))
    redis.call('ZREM', key, unpack(members))
  end
  tidy_held(q, t)
end
-- before a claim of up to n from queue q: as many held-back messages of each task back to
-- ready as the claim could lease (n, or room[t] for a task the claimer limits), so it
-- takes them in claim order; one SMEMBERS (of a missing key) when nothing is held
local function unhold_for(q, n, room)
  for _, t in ipairs(redis.call('SMEMBERS', qkey(q, 'held'))) do
    local k = n
    if room and room[t] then k = math.min(n, room[t]) end
    if k > 0 then unhold(q, t, k) end
  end
end
-- the same before a claim without limits, which holds nothing back: one EXISTS over every
-- queue's index of held tasks finds the few (usually none) that hold something
local function unhold_all(qs, n)
  local keys = {}
  for i, q in ipairs(qs) do keys[i] = qkey(q, 'held') end
  for s = 1, #keys, 1000 do
    local e = math.min(s + 999, #keys)
    if redis.call('EXISTS', unpack(keys, s, e)) > 0 then
      for i = s, e do unhold_for(qs[i], n, nil) end
    end
  end
end
-- why a hash (HMGET b p c a t f d u q) cannot be claimed
local function unfit(h)
  local names = {'b (body)', 'p (priority)', 'c (created_at)', 'a (available_at)', 't (task)'}
  for i = 1, 5 do
    if not h[i] then return bad_field(names[i]) end
  end
  if not h[9] then return bad_field('q (queue)') end
  return bad_field('d (deliveries)', h[7])
end
-- lease the messages picks names ({id, queue} each, in claim order, out of ready already),
-- appending each lease's 11 values to out and counting in out[3] and out[4] the entries
-- dropped (hash gone) and the messages quarantined; how many were leased. Tokens come from
-- one INCRBY, deadlines go in with one ZADD per queue. A lease of a task the claimer
-- limits (room[t] set) counts in running:<t> and names t in u; any other drops u. A
-- claim that took something wakes a waiter if the queues qs still hold ready work (what
-- it left must not make a waiter sleep).
local function lease_picks(picks, qs, now, vis, sec, usec, out, room)
  local expires = f17(now + vis)
  local taken, leased, running, seq = 0, {}, {}, 0
  if #picks > 0 then seq = redis.call('INCRBY', P .. 'seq', #picks) end
  for i = 1, #picks do
    local id, q = picks[i][1], picks[i][2]
    local jk = P .. 'j:' .. id
    -- q too: the lease's ack, retry and extension find its queue by it (a hash without
    -- one was leased, and every settle of it failed, the worker retrying it for good)
    local h = redis.call('HMGET', jk, 'b', 'p', 'c', 'a', 't', 'f', 'd', 'u', 'q')
    local deliveries = tonumber(h[7] or '0')
    if not (h[1] and h[2] and h[3] and h[4] and h[5] and h[9] and deliveries) then
      if redis.call('EXISTS', jk) == 0 then
        -- a ready entry whose message is gone (deleted by hand, evicted): nothing to run;
        -- dropped and counted, so it never wedges the queue
        out[3] = out[3] + 1
        emptied[q] = true
      else  -- a damaged message: kept aside, and the rest of the claim goes on
        quarantine(id, q, unfit(h), now)
        out[4] = out[4] + 1
      end
    else
      taken = taken + 1
      local token = sec .. usec .. '-' .. (seq - taken + 1)
      deliveries = deliveries + 1
      local t = h[5]
      if room and room[t] then  -- counted against this claimer's limit of t
        redis.call('HSET', jk, 'k', token, 's', 'l', 'd', deliveries, 'u', t)
        running[t] = running[t] or {}
        table.insert(running[t], expires)
        table.insert(running[t], id)
      else
        redis.call('HSET', jk, 'k', token, 's', 'l', 'd', deliveries)
        if h[8] then redis.call('HDEL', jk, 'u') end  -- counted by an earlier lease
      end
      leased[q] = leased[q] or {}
      table.insert(leased[q], expires)
      table.insert(leased[q], id)
      for _, v in ipairs({id, token, deliveries, expires, h[1], q, h[2], h[3], h[4], h[5],
                          h[6] or '0'}) do
        out[#out + 1] = v
      end
    end
  end
  for q, pairs_ in pairs(leased) do redis.call('ZADD', qkey(q, 'leased'), unpack(pairs_)) end
  for t, pairs_ in pairs(running) do
    redis.call('ZADD', P .. 'running:' .. t, unpack(pairs_))
  end
  if taken + out[3] + out[4] > 0 then
    for _, q in ipairs(qs) do
      if redis.call('ZCARD', qkey(q, 'ready')) > 0 then
        wake()
        break
      end
    end
  end
  return taken
end
"""

"""The scripts off a job's path: what ``nuvom status``, ``peek_state``, an operator's
``cancel`` and ``clear`` and the reaper run (key layout and invariants: :mod:`.scripts`).

Why a module of its own: none of them runs per job, and each reads or removes messages in
whichever set their state puts them, by the same rules the claim keeps (what "a lease
expired" means: ``lease_live`` and ``promote`` in :mod:`.lua`), so they are read together.
"""

from __future__ import annotations

from nuvom_plugins_redis.limit_lua import _HELD
from nuvom_plugins_redis.lua import _COMMON, RANK_LEN

#: ARGV: P, id. Deletes the message unless a live lease holds it (``lease_live``): what
#: waits is deleted, ready or delayed, and an expired lease too, whether or not a claim or
#: the reaper has moved it back to ready yet (it keeps its token there). Why: no worker
#: holds an expired lease (killed, or stopped with ``extend(lease, 0)``), and refusing it
#: (as this script did while a token was present) left an operator unable to stop a job
#: that OOM-killed its worker: it ran again up to the delivery limit. Deleting the hash
#: fences the old token: its ack, extend, retry and settle find no hash and report the
#: lease lost. A live lease is refused: its worker decides. Atomic like the reaper and the
#: claim, so each sees the message either before the cancel or gone: a claim that took it
#: first holds a live lease (refused here), a reap that moved it first left it ready.
CANCEL = "#!lua\n" + _COMMON + r"""
local now = clock()
local id = ARGV[2]
local jk = P .. 'j:' .. id
local h = redis.call('HMGET', jk, 'q', 's', 'r', 'k', 'u')
if not h[1] or lease_live(h[1], id, h[2], h[4], now) then return 0 end
unlist(id, h)  -- out of its one set (ready, held, delayed or leased) by its state
redis.call('DEL', jk)
forget_empty()
return 1
"""

#: ARGV: P, queue. Deletes up to 500 messages of each state of the queue (and of each task
#: held back in it); returns how many (the caller repeats until 0, so no call blocks the
#: server for long). A lease counted against a limit leaves its task's ``running`` set.
CLEAR = "#!lua\n" + _COMMON + _HELD + r"""
local q = ARGV[2]
local removed = 0
local sets = {{qkey(q, 'ready'), true}, {qkey(q, 'delayed'), false},
              {qkey(q, 'leased'), false}}
local tasks = redis.call('SMEMBERS', qkey(q, 'held'))
for _, t in ipairs(tasks) do sets[#sets + 1] = {hkey(q, t), true} end
for _, set in ipairs(sets) do
  local key, ranked = set[1], set[2]
  local members = redis.call('ZRANGE', key, 0, 499)
  for _, m in ipairs(members) do
    local jk = P .. 'j:' .. (ranked and string.sub(m, RANK_LEN + 1) or m)
    local u = redis.call('HGET', jk, 'u')
    if u then redis.call('ZREM', P .. 'running:' .. u, string.sub(jk, #P + 3)) end
    redis.call('DEL', jk)
  end
  if #members > 0 then redis.call('ZREM', key, unpack(members)) end
  removed = removed + #members
end
for _, t in ipairs(tasks) do tidy_held(q, t) end
if removed == 0 then redis.call('SREM', P .. 'queues', q) end
return removed
""".replace("RANK_LEN", str(RANK_LEN))

#: ARGV: P, lock ms, owner. Promotes due messages of every queue if it takes the lock, and
#: drops listed queues that hold nothing: names an earlier release left in ``P queues`` (it
#: never dropped one but in ``CLEAR``) go at the first tick after an upgrade, and an empty
#: queue costs one ``EXISTS`` instead of a promotion's two reads.
REAP = "#!lua\n" + _COMMON + r"""
if not redis.call('SET', P .. 'reaper', ARGV[3], 'NX', 'PX', ARGV[2]) then return -1 end
local now = clock()
local moved = 0
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  if empty(q) then
    redis.call('SREM', P .. 'queues', q)
  else
    moved = moved + promote(q, now)
  end
end
if moved > 0 then wake() end
forget_empty()
return moved
"""

#: Hashes ``STATS`` reads per queue past the first of each run it walks (see there).
STATS_WALK = 64

#: ARGV: P, then queue names. Returns the server's now, then per queue: ready, delayed,
#: leased, and the earliest due time
#: of a message counted ready ('' if none): ``max(c, a)``, its enqueue or the end of its
#: delay or retry delay (a retry moves ``a``, a promotion keeps it), as the worker's wait
#: time counts. Why a walk: ready sets sort by enqueue within a priority band, not by due
#: time, and a delayed or retried message keeps its old rank at the head of its band. A
#: message is never due before its enqueue, so each band is read in order only while its
#: next enqueue is before the earliest due time found: usually its head alone (due at its
#: enqueue). Due delayed messages (by ``a``) and expired leases (by deadline, no bound)
#: count ready before a claim or the reaper moves them, so their sets are walked too. Past
#: each run's first, at most STATS_WALK hashes per queue: then the earliest found stands
#: (an older message may hide behind many delayed ones, a younger one never reads older).
STATS = "#!lua flags=no-writes\n" + _COMMON + _HELD + r"""
local walk = STATS_WALK
local function due_of(id)
  local h = redis.call('HMGET', P .. 'j:' .. id, 'c', 'a')
  local c, a = tonumber(h[1]), tonumber(h[2])
  if not c then return nil end
  if a and a > c then return a end
  return c
end
local now = clock()
local limit = f17(now)
local out = {limit}
for i = 2, #ARGV do
  local key = qkey(ARGV[i], 'ready')
  local dkey, lkey = qkey(ARGV[i], 'delayed'), qkey(ARGV[i], 'leased')
  local best, extra = nil, 0
  -- may the j-th of a run be read? (the first always; the rest within the budget)
  local function afford(j)
    if j == 1 then return true end
    if extra >= walk then return false end
    extra = extra + 1
    return true
  end
  local function consider(due)
    if due and (best == nil or due < best) then best = due end
  end
  -- a set ordered as ready is (a queue's ready set, or a task's held-back messages)
  local function bands(bkey)
    local band = redis.call('ZRANGE', bkey, 0, 0, 'WITHSCORES')
    while band[2] do
      local score = band[2]
      local members = redis.call('ZRANGE', bkey, score, score, 'BYSCORE', 'LIMIT', 0,
                                 walk - extra + 1)
      for j, m in ipairs(members) do
        -- the rank starts with the enqueue in µs (rounded down): a bound of its due time
        if best and tonumber(string.sub(m, 1, 17)) / 1e6 >= best then break end
        if not afford(j) then break end
        consider(due_of(string.sub(m, RANK_LEN + 1)))
      end
      band = redis.call('ZRANGE', bkey, '(' .. score, '+inf', 'BYSCORE', 'LIMIT', 0, 1,
                        'WITHSCORES')
    end
  end
  bands(key)
  -- held back by a limit: ready all the same (module docs: "Concurrency limits")
  local nheld = 0
  for _, t in ipairs(redis.call('SMEMBERS', qkey(ARGV[i], 'held'))) do
    bands(hkey(ARGV[i], t))
    nheld = nheld + redis.call('ZCARD', hkey(ARGV[i], t))
  end
  local due = redis.call('ZRANGE', dkey, '-inf', limit, 'BYSCORE', 'LIMIT', 0,
                         walk - extra + 1, 'WITHSCORES')
  for j = 1, #due / 2 do
    if best and tonumber(due[2 * j]) >= best then break end
    if not afford(j) then break end
    consider(due_of(due[2 * j - 1]))
  end
  local expired = redis.call('ZRANGE', lkey, '-inf', limit, 'BYSCORE', 'LIMIT', 0,
                             walk - extra + 1)
  for j, id in ipairs(expired) do
    if not afford(j) then break end
    consider(due_of(id))
  end
  -- due delayed jobs and expired leases are waiting already, whether or not a claim or
  -- the reaper has moved them yet
  local ndue = redis.call('ZCOUNT', dkey, '-inf', limit)
  local nexpired = redis.call('ZCOUNT', lkey, '-inf', limit)
  out[#out + 1] = redis.call('ZCARD', key) + nheld + ndue + nexpired
  out[#out + 1] = redis.call('ZCARD', dkey) - ndue
  out[#out + 1] = redis.call('ZCARD', lkey) - nexpired
  out[#out + 1] = best and f17(best) or ''
end
return out
""".replace("RANK_LEN", str(RANK_LEN)).replace("STATS_WALK", str(STATS_WALK))

#: ARGV: P, id. The job's state from the queue alone, by the server's clock: 'R' running
#: (a token whose deadline has not passed), 'T' retrying (a failed job waiting for its
#: time), 'Q' queued (ready, a first run's ETA, or an expired lease), 0 if not queued.
PEEK = "#!lua flags=no-writes\n" + _COMMON + r"""
local now = clock()
local id = ARGV[2]
local h = redis.call('HMGET', P .. 'j:' .. id, 's', 'q', 'k', 'f', 'a')
if not h[1] or not h[2] then return 0 end
if lease_live(h[2], id, h[1], h[3], now) then return 'R' end  -- an expired lease reads Q
if h[1] == 'd' and (tonumber(h[4]) or 0) > 0 and (tonumber(h[5]) or 0) > now then return 'T' end
return 'Q'
"""

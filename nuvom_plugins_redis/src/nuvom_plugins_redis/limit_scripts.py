"""The Lua scripts of concurrency limits (``@task(concurrency=N)``): the limited claim and
the per-task counts of ``nuvom status``, and (below) how limits work on Redis: why
held-back messages are moved aside ("held") rather than skipped, where every script finds
them, how a counted lease stops counting. The keys are listed in :mod:`.scripts`.

Why a second claim script and not a branch in ``CLAIM``: a worker without limits must pay
nothing for them, so ``CLAIM`` stays as it was but for one ``EXISTS`` over its queues'
``held`` indexes (keys that exist only where a limit held something back).
``CLAIM_LIMITED`` is what a worker with limits runs: it reads each candidate's task before
leasing it (one ``HGET`` more per message than ``CLAIM``), counts the task's live leases
from its ``running`` set, and moves a message whose task has no room left to the task's
held set of its queue, so no later claim reads it again until room appears.

What is counted: the leases limited claims made (those write ``u`` and ``running``). The
workers of an app share their task modules, so all of them claim under the same limits
(the kernel hands every worker the limits of the tasks it knows); a worker without limits
(one that knows none of the limited tasks) neither obeys nor is counted by them, as it
would not obey them on any backend.

Why bounded: Redis runs one script at a time. Holding a message back costs its ``HGET``,
its ``ZADD`` to the held set and its share of one ``ZREMRANGEBYRANK`` (about 4-5 µs of the
server's time on the dev box, measured), and a backlog of a saturated task can be any size,
so one call moves at most :data:`HOLD_BUDGET` of them (~5 ms) and says so; the client
calls again at once (:meth:`RedisJobQueue.claim`), other clients' commands running in
between. Each message is moved once while its task stays saturated, so a backlog of
100,000 ahead of other work costs the claim that first meets it about 0.4-0.6 s (100
calls), and later claims nothing (~0.2 ms, as without limits).

How it works (key layout: :mod:`.scripts`).
A worker with limits claims with ``CLAIM_LIMITED``: per limited task, the leases in ``P
running:<task>`` whose deadline is ahead are live (the rule of :mod:`.scripts`: a score
``<= now`` is expired; it is pruned there); room is the limit minus those, and leases are
handed out within it, counted in the same atomic script, so racing claims of any number of
processes never exceed it. A ready message whose task has no room is moved, untouched (no
delivery, no token), with its score and member, from ``ready`` to the task's held set of
its queue: why move it and not skip it is Redis's single thread. A claim that skipped held-
back messages would read them again at every claim, and a saturated task's backlog (100,000
jobs) ahead of other work would cost each claim a walk over all of it; moved once, it costs
nothing until room appears. Room appears at claim time: before it merges the ready sets, a
claim moves back the first ``min(n, room)`` held messages of each task with room (held sets
sort as ``ready`` does, so those are the only ones it could lease before the rest); what it
does not lease waits in ``ready`` and is held again if the task fills up. A claim moves at
most ``limit_scripts.HOLD_BUDGET`` messages aside per call and says "more"; the client
calls again, so the server is never stalled for long.

Where a held message is read: it stays in state ``r`` (its hash is not written when it is
held, so holding costs one ``HGET``), so ``PEEK`` says QUEUED. ``unlist`` (ack, cancel,
settle, requeue, extend of an old token) removes a state-``r`` message from its task's held
set when it is not in ``ready``. ``STATS`` counts held sets as ready and walks them for the
oldest age; ``BROWSE`` walks them after ``ready`` (QUEUED); ``CLEAR`` deletes them;
``empty()`` counts ``q:<queue>:held``, so a queue holding only held messages stays listed in
``P queues`` and ``forget_empty``/``REAP`` never drop it. Quarantine, promotion and reaping
never meet a held message (they read ``delayed``, ``leased`` and ``ready``); the claim that
moves it back to ready quarantines it if it is damaged. A claim without limits (``CLAIM``:
one ``EXISTS`` over its queues' ``held`` indexes) moves held messages back as if no task
were limited: limits belong to the claimer (the SPI), and a worker without them must not
find jobs stranded. Nothing else changes for it: it never writes ``u`` nor ``running``.

How a counted lease stops counting: ack, settle, retry, release, cancel and quarantine go
through ``unlist``/``quarantine``, which remove the id from ``P running:<u>`` (and wake a
waiter: room appeared); a requeue also drops ``u``; ``CLEAR`` removes it with the hash; an
expired lease stops counting by its score alone (its holder may still extend it: ``EXTEND``
puts it back at its new deadline while ``u`` is set, which only a limited claim sets). So
``P running:<task>`` holds at most the live counted leases plus expired ones not yet pruned.
Why ``u`` and not the task: the hash's ``t`` names the task, but only leases a limited claim
made are counted, and ack must know which without another read.

Key names: ``q:<queue>:held:<task>:<len(task)>`` ends with a number, so it never meets a
key of another queue (those end with ``ready``, ``delayed``, ``leased`` or ``held``), and
the length makes (queue, task) readable from the right: no two pairs share a key.
"""

from __future__ import annotations

from nuvom_plugins_redis.limit_lua import _CLAIMING, _HELD
from nuvom_plugins_redis.lua import _COMMON, RANK_LEN

__all__ = ["CLAIM_LIMITED", "COUNT_BUDGET", "HOLD_BUDGET", "TASK_COUNTS"]

#: Messages one ``CLAIM_LIMITED`` call may hold back before it returns (and says "more").
HOLD_BUDGET = 1000
#: Hashes one ``TASK_COUNTS`` call may read before it returns where it stopped.
COUNT_BUDGET = 5000

#: ARGV: P, n, visibility secs, hold budget, number of limits, then (task, limit) pairs,
#: then the number of queues (-1: every queue) and their names. Returns {now, next due time
#: ('' if none, '-' if not looked up), entries dropped, messages quarantined, more ('1' if
#: it stopped on its budget with candidates unread: call again), then 11 values per lease}
#: as ``CLAIM`` returns them.
#:
#: Steps, in one atomic script: per limited task, expired leases leave its ``running`` set
#: (a lease stops counting once its deadline is ``<= now``, the bound ``promote()`` uses)
#: and its room is its limit minus what is left. Per queue, due messages are promoted and,
#: per held task with room (or that this claimer does not limit), its first
#: ``min(n, room)`` held messages go back to ready, with their old score and member, so
#: the merge below meets them in their place. Then the queues' ready sets are merged in
#: claim order (score, then member), read in windows that double up to 512 per queue (a
#: heap of the queues' heads, so many queues cost ``log`` each step): a message of a task
#: with no room is moved to its held set, untouched otherwise (no delivery, no token); any
#: other is leased, and counted in its task's ``running`` set (its hash's ``u`` names the
#: task) when this claimer limits it.
CLAIM_LIMITED = "#!lua\n" + _COMMON + _CLAIMING + r"""
local now, sec, usec = clock()
local n, vis, budget = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local nl = tonumber(ARGV[5])
local room = {}
for i = 0, nl - 1 do
  local t, rk = ARGV[6 + 2 * i], P .. 'running:' .. ARGV[6 + 2 * i]
  redis.call('ZREMRANGEBYSCORE', rk, '-inf', f17(now))  -- expired: no longer counted
  room[t] = tonumber(ARGV[7 + 2 * i]) - redis.call('ZCARD', rk)
end
local qs = queue_list(tonumber(ARGV[6 + 2 * nl]), 7 + 2 * nl)
for _, q in ipairs(qs) do
  promote(q, now)
  unhold_for(q, n, room)
end
-- the merge: one buffer per queue ({q, items, pos, off, size, done, m, s}) in a heap
local function fill(b)
  b.items = redis.call('ZRANGE', qkey(b.q, 'ready'), b.off, b.off + b.size - 1,
                       'WITHSCORES')
  b.off, b.pos = b.off + b.size, 1
  b.done = #b.items < 2 * b.size
  b.size = math.min(b.size * 2, 512)
end
local function advance(b)  -- b's next entry as its head; false when the queue has no more
  if b.pos > #b.items then
    if b.done then return false end
    fill(b)
    if #b.items == 0 then return false end
  end
  b.m, b.sc = b.items[b.pos], b.items[b.pos + 1]
  b.s = tonumber(b.sc)
  b.pos = b.pos + 2
  return true
end
local heap = {}
local function before(x, y)
  if x.s ~= y.s then return x.s < y.s end
  return x.m < y.m
end
local function down(i)
  local size = #heap
  while true do
    local l, r, m = 2 * i, 2 * i + 1, i
    if l <= size and before(heap[l], heap[m]) then m = l end
    if r <= size and before(heap[r], heap[m]) then m = r end
    if m == i then return end
    heap[i], heap[m] = heap[m], heap[i]
    i = m
  end
end
for _, q in ipairs(qs) do
  local b = {q = q, off = 0, size = n, pos = 1, items = {}, done = false}
  if advance(b) then heap[#heap + 1] = b end
end
for i = math.floor(#heap / 2), 1, -1 do down(i) end
-- leased next; per queue how many of its first entries were read (all leave ready); held
-- per queue and task
local cands, gone, hold = {}, {}, {}
local nheld, more = 0, false
while #cands < n and #heap > 0 do
  local b = heap[1]
  local q, m = b.q, b.m
  local t = redis.call('HGET', P .. 'j:' .. string.sub(m, RANK_LEN + 1), 't')
  gone[q] = (gone[q] or 0) + 1
  if t and room[t] and room[t] <= 0 then  -- held back: moved aside, nothing else
    hold[q] = hold[q] or {}
    hold[q][t] = hold[q][t] or {}
    table.insert(hold[q][t], b.sc)
    table.insert(hold[q][t], m)
    nheld = nheld + 1
  else  -- (no task: gone or damaged, which the lease step below drops or quarantines)
    if t and room[t] then room[t] = room[t] - 1 end
    cands[#cands + 1] = {m, q}
  end
  if not advance(b) then
    heap[1] = heap[#heap]
    heap[#heap] = nil
  end
  if #heap > 0 then down(1) end
  if nheld >= budget and #cands < n and #heap > 0 then
    more = true
    break
  end
end
-- each queue's entries were read in order from its first: they leave ready by rank, which
-- costs less than by member (no lookup each)
for q, count in pairs(gone) do redis.call('ZREMRANGEBYRANK', qkey(q, 'ready'), 0, count - 1) end
for q, tasks in pairs(hold) do
  for t, entries in pairs(tasks) do
    for i = 1, #entries, 1000 do  -- unpack passes values on Lua's C stack: slices
      redis.call('ZADD', hkey(q, t), unpack(entries, i, math.min(i + 999, #entries)))
    end
    redis.call('SADD', qkey(q, 'held'), t)
  end
end
local out = {f17(now), '-', 0, 0, more and '1' or '0'}
local picks = {}
for i = 1, #cands do picks[i] = {string.sub(cands[i][1], RANK_LEN + 1), cands[i][2]} end
local taken = lease_picks(picks, qs, now, vis, sec, usec, out, room)
if taken < n and not more then
  -- the next due time: a delayed message, a lease expiring, or room coming back to a
  -- task whose first live lease runs out (an ack wakes a waiter itself)
  local due = next_due(qs)
  for t, left in pairs(room) do
    if left <= 0 then
      local head = redis.call('ZRANGE', P .. 'running:' .. t, 0, 0, 'WITHSCORES')
      if head[2] and (due == nil or tonumber(head[2]) < due) then due = tonumber(head[2]) end
    end
  end
  out[2] = due and f17(due) or ''
end
forget_empty()
return out
""".replace("RANK_LEN", str(RANK_LEN))

#: ARGV: P, budget, where to resume (queue index from 1, set number from 1, offset), the
#: number of tasks and their names, then the queue names (the caller's snapshot of
#: ``P queues``). Returns {done ('1' when every queue was read), where to resume (queue
#: index, set, offset), then per task: live leases, ready messages} for the part it read.
#:
#: Ready: a ready message, a held one, a due delayed one and an expired lease, as ``STATS``
#: counts them; running: a lease whose deadline is ahead. Nothing is ordered by task, so
#: the sets are walked (one ``HGET`` per message; a held set only counted), in calls of at
#: most ``budget`` hashes that resume by position: what claims and pushes move while the
#: calls go on may be counted twice or not at all, as a status line allows.
TASK_COUNTS = "#!lua flags=no-writes\n" + _COMMON + _HELD + r"""
local now = clock()
local limit = f17(now)
local budget = tonumber(ARGV[2])
local qi, set, off = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local nt = tonumber(ARGV[6])
local running, ready, index = {}, {}, {}
for i = 1, nt do
  index[ARGV[6 + i]] = i
  running[i], ready[i] = 0, 0
end
local spent = 0
local function task_of(id)
  spent = spent + 1
  return index[redis.call('HGET', P .. 'j:' .. id, 't') or '']
end
-- walk one set from offset off: nil when done, else the offset to resume at
local function walk(key, byscore, ranked, count)
  while true do
    if spent >= budget then return off end
    local step = math.min(256, budget - spent)
    local part
    if byscore then
      part = redis.call('ZRANGE', key, '-inf', limit, 'BYSCORE', 'LIMIT', off, step,
                        'WITHSCORES')
    else
      part = redis.call('ZRANGE', key, off, off + step - 1, 'WITHSCORES')
    end
    for i = 1, #part, 2 do
      local id = ranked and string.sub(part[i], RANK_LEN + 1) or part[i]
      count(task_of(id), tonumber(part[i + 1]))
    end
    off = off + #part / 2
    if #part < 2 * step then return nil end
  end
end
local function as_ready(i) if i then ready[i] = ready[i] + 1 end end
local function as_lease(i, deadline)
  if not i then return end
  if deadline > now then running[i] = running[i] + 1 else ready[i] = ready[i] + 1 end
end
local stop = nil
local first = 7 + nt
for k = first + qi - 1, #ARGV do
  local q = ARGV[k]
  if set == 1 then  -- held sets: counted, not read
    for _, t in ipairs(redis.call('SMEMBERS', qkey(q, 'held'))) do
      local i = index[t]
      if i then ready[i] = ready[i] + redis.call('ZCARD', hkey(q, t)) end
    end
    set, off = 2, 0
  end
  local sets = {{qkey(q, 'ready'), false, true, as_ready},
                {qkey(q, 'delayed'), true, false, as_ready},
                {qkey(q, 'leased'), false, false, as_lease}}
  while set <= 4 do
    local s = sets[set - 1]
    local at = walk(s[1], s[2], s[3], s[4])
    if at then
      stop = {k - first + 1, set, at}
      break
    end
    set, off = set + 1, 0
  end
  if stop then break end
  set, off = 1, 0
end
local out = stop and {'0', stop[1], stop[2], stop[3]} or {'1', 0, 0, 0}
for i = 1, nt do
  out[#out + 1] = running[i]
  out[#out + 1] = ready[i]
end
return out
""".replace("RANK_LEN", str(RANK_LEN))

"""The Lua scripts: every step that must be atomic runs as one script on the server.

Why scripts and not MULTI/WATCH: a claim reads (which messages are due, which is first) and
writes (lease, token) in one step; a script does that with no retry loop, and a worker that
dies between two commands cannot leave a message half claimed. Every script reads the clock
with ``TIME``, so lease deadlines and due times never depend on the clients' clocks: a
push sends a message's times as offsets from the producer's own clock reading (a delay, an
age), and ``PUSH`` stores them against the server's clock, so a job's due time and its place
in FIFO order are the server's, whatever the producer's clock says (see ``PUSH``).

Why ``#!lua`` (a shebang) on each: Redis 7 then checks ``maxmemory`` once, before a writing
script starts, instead of failing it at its first write past the limit with the writes
before it kept. A push chunk is therefore all or nothing, also when memory runs out.

Key layout (``P`` = ``<key_prefix>:<namespace>:``, see :mod:`.connection`)::

    P queues                  SET   every queue holding a message (claims over "every queue")
    P j:<id>                  HASH  one message: b body, q queue, p priority, c created_at,
                                    a available_at (both epoch secs, server clock; a moved
                                    by a retry or a delayed release, kept when promoted to
                                    ready), t task, f failures,
                                    d deliveries
                                    (absent until the first claim: a missing f or d
                                    reads as 0 everywhere),
                                    k token (while leased), r rank, s state (r|d|l),
                                    u the task whose limit counts this lease (absent if
                                    none: set by a limited claim, dropped by a requeue)
    P q:<queue>:ready         ZSET  score -priority, member rank = created µs + seq + id
                                    (equal scores sort by member: FIFO within a priority)
    P q:<queue>:delayed       ZSET  id by available_at (a retry delay or an ETA)
    P q:<queue>:leased        ZSET  id by lease deadline (never shared with delayed)
    P q:<queue>:held          SET   tasks with a held-back message in the queue
    P q:<queue>:held:<task>:<len(task)>
                              ZSET  the task's ready messages held back by its limit, as
                                    they were in ready (score -priority, member rank)
    P running:<task>          ZSET  id by lease deadline: the leases counted against the
                                    task's limit (live while the deadline is ahead)
    P seq, P wake, P reaper   the rank/token counter, the wake-up marker, the reaper lock
    P push:<batch>            STRING  last chunk index of a batch push stored (10 min TTL)
    P quarantine              ZSET  n of each quarantined message, by when (server clock)
    P quarantine:<n>          HASH  a damaged message's hash as found (renamed from P j:<id>)
                                    plus xi its id, xq its queue, xw why, xt when
    R r:<id>                  HASH  one job record: run, att, st, fn, u, d (JSON)
    R ri, R ri:s:<st>, R ri:t:<fn>   ZSETs of record ids by updated_at (all, status, task)
    R rx                      ZSET  <len(fn)>:<fn><id> of each final record with a TTL, by
                                    when it expires (ms, server clock): what removes its
                                    index entries once it is gone (:mod:`.record_scripts`)

Nothing is escaped: the prefix and namespace may hold no ``:`` and the namespace may not be
a first segment above (``settings.RESERVED_SEGMENTS``), or two apps' keys could meet.

A message hash that a step cannot read (a field missing, or not a number where one goes:
edited by hand, written by another tool) is quarantined by the script that meets it (claim,
promotion, requeue): its hash is moved aside whole, never run and never lost, and listed by
``nuvom status``; the rest of the batch goes on. A ready entry whose hash is gone altogether
is only dropped: nothing is left to keep.

Why ``P queues`` lists only queues that hold something: a claim or reap over every queue
walks it, so a name kept after its queue emptied (per-tenant or per-run queue names) would
cost every claim, every reaper tick and ``nuvom status`` for good. The invariant is kept
inside the scripts, so no push is ever left invisible to a worker serving every queue:
``PUSH`` adds a queue with its first message (and again after it was dropped); every script
that takes a message out of a queue's sets without putting it back in the same queue (ack,
settle, cancel, quarantine, a ready entry or a due message whose hash is gone) marks that
queue in ``emptied``, and ``forget_empty()`` at its end drops each marked queue that now has
no ready, delayed or leased entry and no held index (concurrency limits, below): those are
all a queue has (job records key on the task and the status, not the queue). Retries,
releases, extends and promotions (and a claim holding a message back) move a message
within its own queue, which is listed while the message is in it. Scripts are
atomic, so no push can fall between the check and the removal. ``REAP`` also drops listed
queues that hold nothing (names left by releases before this one).

A message keeps its token when its expired lease is moved back to ready: until another
claim takes it over (or ``CANCEL`` deletes it), its holder may still settle it (the fence
is the token). It is waiting all the same: ``PEEK`` says QUEUED, ``STATS`` counts it ready
and ``CANCEL`` deletes it as soon as the deadline has passed, moved or not, so a job whose
worker died or was stopped never reads RUNNING and an operator can stop it. What "the
deadline has passed" means is said once: a lease expired when its score in ``leased`` is
``<= now`` (server clock). ``promote()`` (claims, the reaper) and ``STATS`` select by that
bound, and ``PEEK`` and ``CANCEL`` ask ``lease_live()``, its negation for one message, so no
message is ever reaped as expired yet refused by cancel as held, or the reverse.

Concurrency limits: ``u``, ``q:<queue>:held``, the held sets and ``running:<task>`` are
explained in :mod:`.limit_scripts` (why held-back messages are moved aside, where every
script finds them, how a counted lease stops counting). ``q:<queue>:held:<task>:<len>``
ends with a number, so it never meets a key of another queue (those end with a word) and
reads as (queue, task) from the right: no two pairs share a key.

The job-record scripts and ``SETTLE`` are in :mod:`.record_scripts`; the scripts off a
job's path (``PEEK``, ``STATS``, ``CANCEL``, ``CLEAR``, ``REAP``) in :mod:`.admin_scripts`;
the Lua they are all assembled from in :mod:`.lua`. This module holds a job's path: its
push, its claim, and the steps of its lease (ack, retry and release, extend, quarantine).
"""

from __future__ import annotations

from nuvom_kernel.values import MAX_ETA
from nuvom_plugins_redis.limit_lua import _CLAIMING
from nuvom_plugins_redis.lua import _COMMON, _FENCED, _REQUEUE, RANK_LEN

#: How far (seconds) a producer's estimate of the server's clock may be from ``TIME`` and
#: still be used as a push's moment (``PUSH``): past it, the server's own clock is used and
#: the producer learns the offset again (its clock was stepped, or the push was slow).
REF_TOLERANCE = 1.0

#: ARGV: P, n (messages), batch ('' for a lone chunk), chunk index, ref, then the messages
#: in runs that share their routing: per run its head (count, queue, priority, delay, task),
#: then 3 values per message (id, age, body). A ``.map()`` chunk is one run: 3 arguments per
#: message instead of 8, and each argument costs the server a conversion into Lua (and the
#: client a packing) whatever its size.
#:
#: Times travel relative to the producer's clock reading at the push (``time.time()``, the
#: clock that stamped the message): ``delay`` = available_at - that reading (0 or less:
#: ready now), ``age`` = that reading - created_at. The script stores them against ``base``,
#: the push's moment on the server's clock: ``c`` = base - age, ``a`` = base + delay, so
#: due times and FIFO order are the server's, whatever the producer's clock says. ``base``
#: is the server's ``TIME``, or ``ref`` (the producer's estimate of it: its reading plus the
#: offset it learned from the server) when that is within REF_TOLERANCE seconds of it: so
#: all pushes of one process share one offset and keep its messages in the order its clock
#: made them (a per-call ``TIME`` would move each push by its own latency and reorder
#: messages made microseconds apart). A message is delayed only if its delay is positive
#: and its due time is past ``TIME``. Returns one 0/1 per message, then ``base`` (the
#: client learns the offset from it). The rank's created µs are worked out here, by the
#: same float arithmetic Python would use.
PUSH = "#!lua\n" + _COMMON + r"""
local batch, idx = ARGV[3], tonumber(ARGV[4])
local guard = P .. 'push:' .. batch
if batch ~= '' and idx > 0 then
  local last = redis.call('GET', guard)
  if last ~= tostring(idx - 1) and last ~= tostring(idx) then
    return redis.error_reply('SKIPPED chunk ' .. idx .. ' of this batch was not stored: ' ..
                             'an earlier chunk failed')
  end
end
local now = clock()
local n = tonumber(ARGV[2])
-- the push's moment on the server's clock (see above)
local base, ref = now, tonumber(ARGV[5])
if ref and math.abs(ref - now) <= REF_TOLERANCE then base = ref end
-- first pass, no writes: the runs (numbers checked) and every message's key and times
local runs, keys, micros, created = {}, {}, {}, {}
local at, i = 6, 0
while at <= #ARGV do
  local count, p, delay = tonumber(ARGV[at]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  if not count or count < 1 or not p or not delay or delay ~= delay
     or at + 4 + count * 3 > #ARGV then
    return redis.error_reply('BADARGS run at argument ' .. at .. ' of the chunk: count, ' ..
                             'priority and delay must be numbers; nothing stored')
  end
  local avail = math.min(base + delay, MAX_ETA)  -- the latest a push stores, as sent before
  local kind, state, score = 'ready', 'r', f17(-p)
  if delay > 0 and avail > now then
    kind, state, score = 'delayed', 'd', f17(avail)
  elseif avail > now then
    avail = now  -- ready now: never due later than the moment it was stored
  end
  runs[#runs + 1] = {at + 5, count, ARGV[at + 1], ARGV[at + 2], f17(avail), ARGV[at + 4],
                     kind, state, score}
  for j = 0, count - 1 do
    local arg = at + 5 + j * 3
    keys[i + j + 1] = P .. 'j:' .. ARGV[arg]
    local age = tonumber(ARGV[arg + 1])
    if not age or age ~= age or age == math.huge or age == -math.huge then
      return redis.error_reply('BADARGS message ' .. (i + j + 1) .. ' of the chunk: ' ..
                               'its age must be a finite number; nothing stored')
    end
    local c = base - age
    created[i + j + 1] = f17(c)
    -- created µs for the rank, as 17 digits (the largest double below 1e17 has 17)
    c = c * 1e6
    if c < 0 then c = 0 elseif c >= 1e17 then c = 99999999999999984 end
    micros[i + j + 1] = c
  end
  i = i + count
  at = at + 5 + count * 3
end
if i ~= n then
  return redis.error_reply('BADARGS the chunk holds ' .. i .. ' messages, not ' .. n)
end
-- unpack passes values on Lua's C stack (about 8,000 at most): slices of 1,000
local function exists_any()
  for s = 1, n, 1000 do
    if redis.call('EXISTS', unpack(keys, s, math.min(s + 999, n))) > 0 then return true end
  end
  return false
end
local check_each = n > 0 and exists_any()
local seq = redis.call('INCRBY', P .. 'seq', n) - n
local out, taken, sets, order = {}, {}, {}, {}
i = 0
for _, run in ipairs(runs) do
  local first, count, q, p, avail, t, kind, state, score = unpack(run)
  local key = qkey(q, kind)
  local members = sets[key]
  if not members then
    members = {}
    sets[key] = members
    order[#order + 1] = {key, q}
  end
  for arg = first, first + (count - 1) * 3, 3 do
    i = i + 1
    local id, jk = ARGV[arg], keys[i]
    if taken[id] or (check_each and redis.call('EXISTS', jk) == 1) then
      out[i] = 0
    else
      taken[id] = true
      local rank = string.format('%017d%012d', micros[i], seq + i) .. id
      redis.call('HSET', jk, 'b', ARGV[arg + 2], 'q', q, 'p', p, 'c', created[i],
                 'a', avail, 't', t, 'f', '0', 'r', rank, 's', state)
      members[#members + 1] = score
      members[#members + 1] = state == 'd' and id or rank
      out[i] = 1
    end
  end
end
local queues = {}  -- the queues that stored a message
for _, kq in ipairs(order) do
  local key, q = kq[1], kq[2]
  local members = sets[key]
  for s = 1, #members, 2000 do
    redis.call('ZADD', key, unpack(members, s, math.min(s + 1999, #members)))
  end
  if #members > 0 and not queues[q] then
    redis.call('SADD', P .. 'queues', q)
    queues[q] = true
  end
end
if next(queues) then wake() end
if batch ~= '' then redis.call('SET', guard, idx, 'PX', 600000) end
out[n + 1] = f17(base)
return out
""".replace("REF_TOLERANCE", repr(REF_TOLERANCE)).replace("MAX_ETA", repr(MAX_ETA))

#: ARGV: P, n, visibility secs, number of queues (-1: every queue), queue names...
#: Returns {now, next due time ('' if none, '-' if not looked up), entries dropped (a ready
#: id whose message is gone), messages quarantined (a hash without a field the claim needs,
#: or deliveries not a number), then 11 values per lease}. The client parses the fields it
#: gets and quarantines a message it cannot read (``QUARANTINE``): Lua checks only what it
#: must (presence, and the number it adds to), so a well-formed claim pays no extra call.
#: Two commands per job (HMGET, HSET): one queue pops with ZPOPMIN, several merge their
#: heads and remove what they took in one ZREM each; tokens come from one INCRBY and the
#: lease deadlines go in with one ZADD per queue. The next due time is only looked up when
#: the claim came back short (a full claim is followed by another claim, not by a wait).
CLAIM = "#!lua\n" + _COMMON + _CLAIMING + r"""
local now, sec, usec = clock()
local n, vis = tonumber(ARGV[2]), tonumber(ARGV[3])
local qs = queue_list(tonumber(ARGV[4]), 5)
local cands = {}
unhold_all(qs, n)  -- what other claimers' limits held back is ready to this one
if #qs == 1 then
  local q = qs[1]
  promote(q, now)
  local popped = redis.call('ZPOPMIN', qkey(q, 'ready'), n)
  for i = 1, #popped, 2 do cands[#cands + 1] = {0, popped[i], q} end
else
  for _, q in ipairs(qs) do
    promote(q, now)
    local head = redis.call('ZRANGE', qkey(q, 'ready'), 0, n - 1, 'WITHSCORES')
    for i = 1, #head, 2 do
      cands[#cands + 1] = {tonumber(head[i + 1]), head[i], q}
    end
  end
  table.sort(cands, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local chosen = {}
  for i = 1, math.min(n, #cands) do
    local q = cands[i][3]
    chosen[q] = chosen[q] or {}
    table.insert(chosen[q], cands[i][2])
  end
  for q, members in pairs(chosen) do redis.call('ZREM', qkey(q, 'ready'), unpack(members)) end
end
local out = {f17(now), '-', 0, 0}
local picks = {}
for i = 1, math.min(n, #cands) do
  picks[i] = {string.sub(cands[i][2], RANK_LEN + 1), cands[i][3]}
end
local taken = lease_picks(picks, qs, now, vis, sec, usec, out, nil)
if taken < n then
  local due = next_due(qs)
  out[2] = due and f17(due) or ''
end
forget_empty()
return out
""".replace("RANK_LEN", str(RANK_LEN))

#: ARGV: P, then (id, token) pairs. Deletes each message whose token still holds.
ACK = "#!lua\n" + _COMMON + _FENCED + r"""
local out = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  local h = held(id, ARGV[i + 1])
  if h then
    unlist(id, h)
    redis.call('DEL', P .. 'j:' .. id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
forget_empty()
return out
"""

#: ARGV: P, id, token, delay secs, '1' with a new body else '0', body. Retry counts a
#: failure; ARGV[7] == 'release' instead takes the claim back (deliveries - 1, no failure).
REQUEUE = "#!lua\n" + _COMMON + _FENCED + _REQUEUE + r"""
local now = clock()
local id = ARGV[2]
local h = held(id, ARGV[3])
if not h then return 0 end
local jk = P .. 'j:' .. id
if ARGV[7] == 'release' then
  redis.call('HINCRBY', jk, 'd', -1)
else
  redis.call('HINCRBY', jk, 'f', 1)
  if ARGV[5] == '1' then redis.call('HSET', jk, 'b', ARGV[6]) end
  if tonumber(ARGV[4]) <= 0 then redis.call('HSET', jk, 'a', f17(now)) end
end
requeue(id, h, tonumber(ARGV[4]), now)
forget_empty()
return 1
"""

#: ARGV: P, secs, then (id, token) pairs: each held lease now expires at now + secs.
EXTEND = "#!lua\n" + _COMMON + _FENCED + r"""
local now = clock()
local secs = tonumber(ARGV[2])
local at = f17(now + secs)
local out = {}
for i = 3, #ARGV, 2 do
  local id = ARGV[i]
  local h = held(id, ARGV[i + 1])
  if h then
    unlist(id, h)
    redis.call('HSET', P .. 'j:' .. id, 's', 'l')
    redis.call('ZADD', qkey(h[1], 'leased'), at, id)
    if h[5] then redis.call('ZADD', P .. 'running:' .. h[5], at, id) end  -- counts on
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
if secs <= 0 then wake() end
forget_empty()
return out
"""

#: ARGV: P, then (id, token, queue, why) per message: each message still held by that token
#: (just claimed, with a field the client could not parse) is quarantined. Returns how many.
QUARANTINE = "#!lua\n" + _COMMON + _FENCED + r"""
local now = clock()
local moved = 0
for i = 2, #ARGV, 4 do
  local id, q = ARGV[i], ARGV[i + 2]
  if held(id, ARGV[i + 1]) then
    redis.call('ZREM', qkey(q, 'leased'), id)
    quarantine(id, q, ARGV[i + 3], now)  -- out of P running:<task> too
    moved = moved + 1
  end
end
forget_empty()
return moved
"""


#: ARGV: P, id, token, why: a copy of the message's hash, if that token still holds it,
#: listed in P quarantine as QUARANTINE lists a moved one; the lease and the message are
#: left as they are (the kernel acks it after recording the job FAILED). Returns 1 if
#: copied. HGETALL, not COPY: COPY needs Redis 6.2.
COPY_TO_QUARANTINE = "#!lua\n" + _COMMON + _FENCED + r"""
local now = clock()
local id = ARGV[2]
local h = held(id, ARGV[3])
if not h then return 0 end
local n = redis.call('INCR', P .. 'seq')
local xk = P .. 'quarantine:' .. n
local fields = redis.call('HGETALL', P .. 'j:' .. id)
for i = 1, #fields, 1000 do  -- unpack() of more than ~8000 values overflows Lua's stack
  redis.call('HSET', xk, unpack(fields, i, math.min(i + 999, #fields)))
end
redis.call('HSET', xk, 'xi', id, 'xq', h[1], 'xw', ARGV[4], 'xt', f17(now))
redis.call('ZADD', P .. 'quarantine', now, n)
return 1
"""

"""Listing queued messages without claiming them (:meth:`RedisJobQueue.browse`).

A page is read by ``BROWSE``, a read-only script (``flags=no-writes``): it promotes, claims
and writes nothing, so a due delayed message or an expired lease is reported where it is,
in the state ``PEEK`` gives it, by the server's clock (``TIME``, like every script: times
match what ``claim`` and ``peek`` return). Only the page comes back, never a body.

Why a scan: nothing is ordered by ``created_at`` (``ready`` sorts by priority, then by a
rank that starts with the enqueue in µs; ``delayed`` by due time; ``leased`` by deadline),
and an index kept for an operator's command would cost every push, claim and ack. So a
page walks the queues' sets and keeps the best ``limit`` messages by ``(created_at, id)``.
The ready sets are cheap: a rank's first 17 digits are the enqueue in µs, rounded down by
the float arithmetic ``PUSH`` used, which bounds its ``created_at`` both ways. So ready
messages before the cursor are skipped by a binary search within each priority band, and
the rest of a band once its ranks pass the page's current last candidate, unread. A
delayed or leased message has only its id in its set: its hash is read (one ``HMGET``).
Measured on the dev box, one page of 100 on 100,000 messages of one queue: ~2 ms all ready
(~4 ms in three priority bands), ~0.3 s all delayed and ~0.4 s all leased, in 28 calls
of at most ~20 ms each; a page of 1,000: ~30 ms ready. Push, claim and ack pay nothing.

Why in slices of :data:`BUDGET`: Redis runs one script at a time, and reading 100,000
hashes in Lua takes about half a second to a second (measured on the dev box), a stall of
every worker and producer on the server. So one call does a bounded amount of work and
says where it stopped (queue, set, and the last entry's score and member); the client
calls again from there, passing the best page so far (so the next call skips what cannot
beat it), and merges. A small queue is one call, one round trip. Where a call resumes is
found by key, not index (``after_entry``): the sets change between calls, and an entry
that stays put keeps its key, so it is read exactly once. Per queue the sets are walked
delayed, leased, ready, then each task's held set (messages a concurrency limit holds back,
QUEUED like ready ones; tasks in byte order): a promotion (the reaper moving a due or
expired message to ready) and a claim holding a message back (ready to held) go from a set
read earlier to one read later, so they are never missed, at worst read twice, which the
merge folds by id. A lease's routine extension moves it later in ``leased``, so it too is
read at least once. A claim, ack or retry meanwhile may hide a message from the page, as
the kernel allows for messages claimed or removed while paging; so may a claim moving a
held message back to ready (room came back to its task: it is about to be claimed).

How ``created_at`` compares: it is stored as ``%.17g`` of a double (``PUSH``), which reads
back (``tonumber`` in Lua, ``float`` here) as exactly that double; the cursor carries
``repr`` of it, which reads back as the same double too. So the script compares doubles
exactly, and a page that ends inside a run of equal ``created_at`` pages on by id. Ids
(and queue names) compare byte by byte (``bytes_lt``): Lua's ``<`` on strings is ``strcoll``,
which follows the server's locale, while the order is Python's, code points (their UTF-8
bytes sort alike) — and Redis's own, for members with one score.

A damaged message (a field missing, or not a number where one goes: edited by hand, or its
hash gone under its set's entry) is skipped, never reported and never moved: quarantining
it is the claim's job, and a browse writes nothing. The script checks what Lua can; a value
Lua reads but Python does not (a hex number, a task that is not UTF-8) is sent back to the
script as an id to skip, and the page read again (a second scan only then).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from nuvom_kernel.models import JobStatus
from nuvom_kernel.views import QueuedJob, parse_cursor
from nuvom_plugins_redis.limit_lua import _HELD
from nuvom_plugins_redis.lua import _BYTE_ORDER, _COMMON, RANK_LEN

if TYPE_CHECKING:
    from nuvom_plugins_redis.inspection import QueueInspection

__all__ = ["BROWSE", "BUDGET", "read_page"]

#: Work per ``BROWSE`` call, in units of about a µs on the dev box: a set member looked at
#: costs 1, a hash read 5. About 20 ms of the server's time per call.
BUDGET = 20_000
#: The state letters ``BROWSE`` takes and returns (``PEEK``'s).
_LETTER = {JobStatus.RUNNING: "R", JobStatus.RETRYING: "T", JobStatus.QUEUED: "Q"}
_STATE = {v.encode(): k for k, v in _LETTER.items()}
#: Values per job in ``BROWSE``'s reply, and before them: more ('1'/'0'), then where to
#: resume (queue, set number, score, member, task of a held set).
_WIDTH, _HEAD = 10, 6

#: ARGV: P, the cursor's created_at ('' from the start) and id, the bound's (the page so
#: far's last when it is full, else ''), wanted state letters, limit, budget, where to
#: resume (queue, set number, score, member, task; '', 0, '', '', '' to start; set 4 is
#: the held set of that task, see :mod:`.scripts`), the number of ids to
#: skip and those ids, then the number of queues (-1: every queue) and their names.
#: Returns more ('1' if it stopped on its budget), where to resume, then per job found
#: (the best ``limit`` after the cursor and before the bound, in order): id, queue, task,
#: priority, created_at, available_at, failures, deliveries, state letter, lease deadline
#: ('' unless RUNNING), as stored: no number goes through a Lua double and back.
BROWSE = "#!lua flags=no-writes\n" + _COMMON + _HELD + _BYTE_ORDER + r"""
local now = clock()
local c0, id0 = tonumber(ARGV[2]), ARGV[3]
local want = {}
for ch in string.gmatch(ARGV[6], '.') do want[ch] = true end
local limit, budget = tonumber(ARGV[7]), tonumber(ARGV[8])
local pq, pk, ps, pm, pt = ARGV[9], tonumber(ARGV[10]), ARGV[11], ARGV[12], ARGV[13]
local nskip = tonumber(ARGV[14])
local skip = {}
for i = 1, nskip do skip[ARGV[14 + i]] = true end
local qs, seen = {}, {}
for _, q in ipairs(queue_list(tonumber(ARGV[15 + nskip]), 16 + nskip)) do
  if not seen[q] then
    seen[q] = true
    qs[#qs + 1] = q
  end
end
table.sort(qs, bytes_lt)
-- the page order: (created_at, id); an entry is {c, id, fields, queue, state, deadline}
local function before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return bytes_lt(a[2], b[2])
end
-- a ready rank's first 17 digits for created_at c, as PUSH wrote them: a bound both ways
local function micros(c)
  c = c * 1e6
  if c < 0 then c = 0 elseif c >= 1e17 then c = 99999999999999984 end
  return string.format('%017d', c)
end
local lo = c0 and micros(c0)  -- ranks below it are before the cursor
local cands, worst, hi = {}, nil, nil  -- ranks above hi are after worst, the page's last
if tonumber(ARGV[4]) then
  worst = {tonumber(ARGV[4]), ARGV[5]}
  hi = micros(worst[1])
end
local cut = limit * 2 + 64
local function keep(e)
  cands[#cands + 1] = e
  if #cands >= cut then  -- back to the best limit: what is after the last cannot be in
    table.sort(cands, before)
    for i = #cands, limit + 1, -1 do cands[i] = nil end
    worst = cands[limit]
    hi = micros(worst[1])
  end
end
-- the work done so far, and whether an entry was passed: a call stops on its budget only
-- after passing one, so each call moves on (a binary search alone does not)
local spent, moved = 0, false
local function tired() return moved and spent >= budget end
-- a message's entry, its fields (HMGET c t p a f d s k) checked; nil if one is missing or
-- not a number where one goes (damaged: skipped, see the module docs), if the id is to be
-- skipped, or if it is not after the cursor and before the page's current last
local function read(id, q)
  if skip[id] then return nil end
  spent = spent + 5
  local h = redis.call('HMGET', P .. 'j:' .. id, 'c', 't', 'p', 'a', 'f', 'd', 's', 'k')
  local c = tonumber(h[1])
  if not c or c ~= c then return nil end
  local e = {c, id, h, q}
  if c0 and not (c > c0 or (c == c0 and bytes_lt(id0, id))) then return nil end
  if worst and not before(e, worst) then return nil end
  h[5], h[6] = h[5] or '0', h[6] or '0'  -- no failure, no claim yet
  if not (h[2] and tonumber(h[3]) and tonumber(h[4]) and tonumber(h[5]) and tonumber(h[6]))
  then return nil end
  return e
end
-- the index of the first entry after (score s, member m) in key's order, m there or not
local function after_entry(key, s, m)
  local at = redis.call('ZSCORE', key, m)
  if at and tonumber(at) == tonumber(s) then return redis.call('ZRANK', key, m) + 1 end
  local a = redis.call('ZCOUNT', key, '-inf', '(' .. s)
  local b = redis.call('ZCOUNT', key, '-inf', s)
  while a < b do  -- the members at score s sort by their bytes
    local mid = math.floor((a + b) / 2)
    if bytes_lt(m, redis.call('ZRANGE', key, mid, mid)[1]) then b = mid else a = mid + 1 end
  end
  return a
end
-- entries per ZRANGE: no more than the budget can pay for (a hash read each)
local STEP = math.max(1, math.min(256, math.floor(budget / 8)))
-- each scan reads key from index idx on: nil when done, else the index to resume at
local function scan_ready(key, q, idx)
  local n = redis.call('ZCARD', key)
  while idx < n do
    if tired() then return idx end
    local band = redis.call('ZCOUNT', key, '-inf', redis.call('ZRANGE', key, idx, idx,
                                                                'WITHSCORES')[2])
    if lo then  -- the first of the band not before the cursor (ranks sort within a band)
      local a, b = idx, band
      while a < b do
        local mid = math.floor((a + b) / 2)
        spent = spent + 2
        if bytes_lt(string.sub(redis.call('ZRANGE', key, mid, mid)[1], 1, 17), lo) then
          a = mid + 1
        else
          b = mid
        end
      end
      idx = a
    end
    while idx < band and not tired() do
      for _, m in ipairs(redis.call('ZRANGE', key, idx, math.min(idx + STEP, band) - 1)) do
        if hi and bytes_lt(hi, string.sub(m, 1, 17)) then  -- the rest of the band is later
          idx, moved = band, true
          break
        end
        idx, moved = idx + 1, true
        spent = spent + 1
        local e = read(string.sub(m, RANK_LEN + 1), q)
        if e then  -- a ready message is QUEUED
          e[5], e[6] = 'Q', ''
          keep(e)
        end
      end
    end
  end
  return nil
end
local function scan_delayed(key, q, idx)
  local n = redis.call('ZCARD', key)
  while idx < n do
    if tired() then return idx end
    for _, id in ipairs(redis.call('ZRANGE', key, idx, idx + STEP - 1)) do
      idx, moved = idx + 1, true
      spent = spent + 1
      local e = read(id, q)
      if e then  -- PEEK's rule: RETRYING if a failure and its time is ahead, else QUEUED
        local h = e[3]
        e[5], e[6] = (h[7] == 'd' and tonumber(h[5]) > 0 and tonumber(h[4]) > now)
                     and 'T' or 'Q', ''
        if want[e[5]] then keep(e) end
      end
    end
  end
  return nil
end
local function scan_leased(key, q, idx)
  local n = redis.call('ZCARD', key)
  while idx < n do
    if tired() then return idx end
    local ls = redis.call('ZRANGE', key, idx, idx + STEP - 1, 'WITHSCORES')
    for i = 1, #ls, 2 do
      idx, moved = idx + 1, true
      spent = spent + 1
      -- RUNNING while the deadline (the score) is ahead, as lease_live() says for a
      -- message in state l with a token; an expired lease waits again: QUEUED
      local live = tonumber(ls[i + 1]) > now
      if want[live and 'R' or 'Q'] then
        local e = read(ls[i], q)
        if e and (not live or (e[3][7] == 'l' and e[3][8])) then
          e[5], e[6] = live and 'R' or 'Q', live and ls[i + 1] or ''
          keep(e)
        end
      end
    end
  end
  return nil
end
-- per queue, the sets a promotion (or a claim holding a message back) leaves before the
-- one it goes to (see the module docs); 4: each task's held set, tasks in byte order
local SETS = {{'delayed', scan_delayed, want.Q or want.T}, {'leased', scan_leased,
              want.Q or want.R}, {'ready', scan_ready, want.Q}, {'held', scan_ready, want.Q}}
local stop = nil
-- scan one set (task t's held set when k is 4), from where the last call stopped in it
local function visit(q, k, key, t)
  local idx = 0
  if q == pq and k == pk and t == pt and pm ~= '' then idx = after_entry(key, ps, pm) end
  if tired() then
    stop = {q, k, key, idx, t}
  else
    idx = SETS[k][2](key, q, idx)
    if idx then stop = {q, k, key, idx, t} end
  end
end
for _, q in ipairs(qs) do
  if pq == '' or not bytes_lt(q, pq) then
    for k = (q == pq) and pk or 1, 4 do
      if SETS[k][3] and k < 4 then
        visit(q, k, qkey(q, SETS[k][1]), '')
      elseif SETS[k][3] then
        local tasks = redis.call('SMEMBERS', qkey(q, 'held'))
        table.sort(tasks, bytes_lt)
        for _, t in ipairs(tasks) do
          if not (q == pq and k == pk and bytes_lt(t, pt)) then visit(q, k, hkey(q, t), t) end
          if stop then break end
        end
      end
      if stop then break end
    end
    if stop then break end
  end
end
local out = {'0', '', 0, '', '', ''}
if stop then
  out[1], out[2], out[3], out[6] = '1', stop[1], stop[2], stop[5]
  if stop[4] > 0 then  -- resume after the last entry read, by its key
    local last = redis.call('ZRANGE', stop[3], stop[4] - 1, stop[4] - 1, 'WITHSCORES')
    out[4], out[5] = last[2], last[1]
  end
end
table.sort(cands, before)
for i = 1, math.min(limit, #cands) do
  local e = cands[i]
  local h = e[3]
  for _, v in ipairs({e[2], e[4], h[2], h[3], h[1], h[4], h[5], h[6], e[5], e[6]}) do
    out[#out + 1] = v
  end
end
return out
""".replace("RANK_LEN", str(RANK_LEN))


def read_page(queue: QueueInspection, queues: Sequence[str] | None,
              states: Collection[JobStatus] | None, after: str | None, limit: int
              ) -> list[QueuedJob]:
    """One page (see :meth:`RedisJobQueue.browse` and the module docs).

    :raises ValueError: ``after`` is not a cursor ``browse`` returned.
    """
    cursor = None if after is None else parse_cursor(after, made_by="QueuedJob.cursor")
    letters = "".join(sorted({_LETTER[s] for s in (_LETTER if states is None else states)
                              if s in _LETTER}))
    if limit <= 0 or not letters or (queues is not None and not queues) or \
            (cursor is not None and cursor[0] != cursor[0]):  # nothing is after a NaN
        return []
    where: list[Any] = [-1] if queues is None else [len(queues), *queues]
    head: list[Any] = ["", ""] if cursor is None else [repr(cursor[0]), cursor[1]]
    skip: list[bytes] = []
    while True:
        jobs, damaged = _scan(queue, head, letters, limit, skip, where)
        if not damaged:
            return jobs
        skip += damaged  # and read again past them: a page holds `limit` if there are


def _scan(queue: QueueInspection, head: list[Any], letters: str, limit: int,
          skip: list[bytes], where: list[Any]) -> tuple[list[QueuedJob], list[bytes]]:
    """The page, from as many ``BROWSE`` calls as its budget takes, each resuming where the
    one before stopped and skipping what cannot beat the page so far; and the ids that
    Python could not read (see :func:`_jobs`)."""
    page: list[QueuedJob] = []
    damaged: list[bytes] = []
    bound: list[Any] = ["", ""]
    resume: list[Any] = ["", 0, "", "", ""]
    while True:
        reply = queue._run("BROWSE", [*head, *bound, letters, limit, BUDGET, *resume,
                                      len(skip), *skip, *where], "listing queued jobs")
        jobs, bad = _jobs(reply[_HEAD:])
        damaged += bad
        if jobs:  # merged by id: a promotion read twice is listed once, as last seen
            merged = {j.id: j for j in page} | {j.id: j for j in jobs}
            page = sorted(merged.values(), key=lambda j: (j.created_at, j.id))[:limit]
            if len(page) == limit:
                bound = [repr(page[-1].created_at), page[-1].id]
        if reply[0] != b"1":
            return page, damaged
        resume = list(reply[1:_HEAD])


def _jobs(values: Sequence[Any]) -> tuple[list[QueuedJob], list[bytes]]:
    """The jobs in ``BROWSE``'s reply, and the ids of those whose fields Lua read but
    Python cannot (skipped: see the module docs)."""
    jobs: list[QueuedJob] = []
    damaged: list[bytes] = []
    for i in range(0, len(values), _WIDTH):
        (job_id, queue, task, priority, created, available, failures, deliveries, state,
         deadline) = values[i:i + _WIDTH]
        try:
            jobs.append(QueuedJob(
                id=job_id.decode(), task=task.decode(), queue=queue.decode(),
                priority=int(priority), state=_STATE[state], created_at=float(created),
                available_at=float(available), failures=int(failures),
                deliveries=int(deliveries),
                lease_expires_at=float(deadline) if deadline else None))
        except (KeyError, UnicodeDecodeError, ValueError):
            damaged.append(bytes(job_id))
    return jobs, damaged

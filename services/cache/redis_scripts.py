"""Lua scripts of the shared tier; each runs atomically inside Redis.

Layout under the prefix P: `P e:<entry id>` a hash per entry (v value,
t tags joined by \\x1f, s stored-at ms, f fresh-until ms, x expires-at ms,
h value digest, d TTL seconds, n version); `P r:<route>` a sorted set of the
route's `key\\x1fvariant` members, all scored 0 so key and prefix lookups are
lexicographic ranges; `P t:<tag>` a set of entry ids; `P l:<entry id>` a fill
lease; `P seq` and `P log` the numbered invalidation log leases are checked
against; `P ver` the version counter of stores; `P aside:r:<route>` and
`P aside:t:<tag>` the index a hard purge of a whole route or tag is draining.
"""

# KEYS: lease, seq, entry. ARGV: token stem, lease timeout ms, now ms.
# Returns {1, token}, {0, ms the holder keeps the lease}, or {2, 0} when a
# fresh value landed since the caller looked (it must read it, not refill).
GRANT_LEASE = """
local fresh_until = redis.call('HGET', KEYS[3], 'f')
if fresh_until and tonumber(fresh_until) > tonumber(ARGV[3]) then
  return {2, 0}
end
local seq = redis.call('GET', KEYS[2]) or '0'
local token = ARGV[1] .. seq
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ARGV[2]) then
  return {1, token}
end
return {0, redis.call('PTTL', KEYS[1])}
"""

_REACHES = """
local function reaches(kind, r, arg, route, key, tagset)
  if kind == 'tag' then return tagset[arg] == true end
  if r ~= route then return false end
  if kind == 'key' then return key == arg end
  if kind == 'prefix' then return string.sub(key, 1, #arg) == arg end
  return true
end
local function extend(k, ms)
  if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, ms) end
end
"""

# KEYS: entry, lease, seq, log, route index, version, tag sets...
# ARGV: 1 token, 2 route, 3 key, 4 member, 5 entry id, 6 value, 7 tags joined,
# 8 now ms, 9 ttl s, 10 adapt ttl '1'/'0', 11 min ttl, 12 max ttl, 13 digest,
# 14 stale windows s, 15 keep one more ttl '1'/'0', 16 prefix, 17 channel,
# 18 origin.
STORE = (
    _REACHES
    + """
local token, route, key, id = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local tagset = {}
for t in string.gmatch(ARGV[7], '[^\\31]+') do tagset[t] = true end
if token ~= '' then
  if redis.call('GET', KEYS[2]) ~= token then return {'LEASE_LOST', 0, 0} end
  local since = tonumber(string.match(token, 'R(%d+)$'))
  local last = tonumber(redis.call('GET', KEYS[3]) or '0')
  local voided = false
  if last > since then
    local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    if #first == 0 or tonumber(first[2]) > since + 1 then
      voided = true
    else
      for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. since, '+inf')) do
        local kind, r, arg =
          string.match(m, '^%d+\\31([^\\31]*)\\31([^\\31]*)\\31(.*)$')
        if reaches(kind, r, arg, route, key, tagset) then voided = true break end
      end
    end
  end
  redis.call('DEL', KEYS[2])
  if voided then
    -- Wake the callers waiting on this fill so that one of them refills.
    redis.call('PUBLISH', ARGV[17], 'S\\31' .. ARGV[18] .. '\\31' .. '0\\31' .. id)
    return {'LEASE_VOIDED', 0, 0}
  end
end
local ttl = tonumber(ARGV[9])
local old = redis.call('HMGET', KEYS[1], 'h', 'd', 't')
if ARGV[10] == '1' and old[1] then
  local prev = tonumber(old[2])
  if old[1] == ARGV[13] then ttl = prev * 2 else ttl = math.floor(prev / 2) end
  -- Clamped both ways: prev may lie outside the bounds (a TTL override).
  ttl = math.min(tonumber(ARGV[12]), math.max(tonumber(ARGV[11]), ttl))
end
if old[3] then
  for t in string.gmatch(old[3], '[^\\31]+') do
    if not tagset[t] then redis.call('SREM', ARGV[16] .. 't:' .. t, id) end
  end
end
local extra = tonumber(ARGV[14])
if ARGV[15] == '1' then extra = math.max(extra, ttl) end
local retention = (ttl + extra) * 1000
local now = tonumber(ARGV[8])
local version = redis.call('INCR', KEYS[6])
redis.call('HSET', KEYS[1], 'v', ARGV[6], 't', ARGV[7], 's', ARGV[8],
  'f', now + ttl * 1000, 'x', now + retention, 'h', ARGV[13], 'd', ttl, 'n', version)
redis.call('PEXPIRE', KEYS[1], retention)
redis.call('ZADD', KEYS[5], 0, ARGV[4])
extend(KEYS[5], retention)
for i = 7, #KEYS do
  redis.call('SADD', KEYS[i], id)
  extend(KEYS[i], retention)
end
redis.call('PUBLISH', ARGV[17], table.concat({'S', ARGV[18], version, id}, '\\31'))
return {'OK', ttl, version}
"""
)

# Invalidations run in chunks so that purging a large route or tag never
# blocks Redis for long. The first call numbers the invalidation in the log
# (voiding leases at once), sets a hard purge of a whole route or tag aside
# (renaming its index, so new stores start a fresh one) and handles the first
# chunk; further calls handle one chunk each. The message goes out with the
# last chunk, so no replica re-reads an entry that is about to go. Most
# invalidations (a key, a small tag) take one call.
#
# The aside index is named by its route or tag, not by the purge. A purge cut
# off between chunks leaves there entries that the route index (or tag set)
# no longer names, so the first call of any later invalidation of that route
# (key, prefix or route) or tag answers {0, '', 0, 0} while it exists, without
# numbering anything: the caller drains it (INVALIDATE_NEXT with no message)
# and calls again. A retry thus finishes the job, and a purge overlapping a
# running one of the same index does not return before its entries are gone.
#
# ARGV of both: 1 kind, 2 route, 3 arg, 4 soft '1'/'0', 5 now ms, 6 prefix,
# 7 limit, 8 cursor ('' to start), 9 log capacity, 10 channel, 11 message
# ('' to publish none). Both return {entries reached, next cursor or '' when
# done, receivers of the message (0 until sent), the invalidation's number}.
_INVALIDATE_CHUNK_FUNCTION = """
local kind, route, arg, P = ARGV[1], ARGV[2], ARGV[3], ARGV[6]
local soft, now, limit = ARGV[4] == '1', tonumber(ARGV[5]), tonumber(ARGV[7])
local function chunk(source, cursor)
  local ids, next_cursor = {}, ''
  local function by_lex(first, last)
    -- A hard purge removes what it read, so it always starts from the front.
    if soft and cursor ~= '' then first = '(' .. cursor end
    local members = redis.call('ZRANGEBYLEX', source, first, last, 'LIMIT', 0, limit)
    for i, m in ipairs(members) do ids[i] = route .. '\\31' .. m end
    if soft and #members == limit then next_cursor = members[#members] end
    if not soft and #members == limit then next_cursor = '+' end
  end
  if kind == 'tag' and soft then
    if cursor == '' then cursor = '0' end
    local scan = redis.call('SSCAN', source, cursor, 'COUNT', limit)
    ids = scan[2]
    if scan[1] ~= '0' then next_cursor = scan[1] end
  elseif kind == 'tag' then
    ids = redis.call('SPOP', source, limit)
    if #ids == limit then next_cursor = '+' end
  elseif kind == 'key' then
    -- Members are `key\\x1fvariant`; ' ' is the byte after \\x1f.
    by_lex('[' .. arg .. '\\31', '(' .. arg .. ' ')
  elseif kind == 'prefix' then
    by_lex('[' .. arg, '(' .. arg .. '\\255')
  else
    by_lex('-', '+')
  end
  local count = 0
  for _, id in ipairs(ids) do
    local ek = P .. 'e:' .. id
    if soft then
      local f = redis.call('HGET', ek, 'f')
      if f then
        count = count + 1
        if tonumber(f) > now then redis.call('HSET', ek, 'f', ARGV[5]) end
      end
    else
      local t = redis.call('HGET', ek, 't')
      count = count + redis.call('DEL', ek)
      local r, m = string.match(id, '^([^\\31]*)\\31(.*)$')
      redis.call('ZREM', P .. 'r:' .. r, m)
      if t then
        for tg in string.gmatch(t, '[^\\31]+') do
          redis.call('SREM', P .. 't:' .. tg, id)
        end
      end
      if kind == 'route' then redis.call('ZREM', source, m) end
    end
  end
  return count, next_cursor
end
local function finish(count, next_cursor, seq)
  local receivers = 0
  if next_cursor == '' and ARGV[11] ~= '' then
    receivers = redis.call('PUBLISH', ARGV[10], ARGV[11])
  end
  return {count, next_cursor, receivers, seq}
end
"""

# KEYS: seq, log, route index, tag set, the aside index of the route (or tag).
INVALIDATE_FIRST = (
    _INVALIDATE_CHUNK_FUNCTION
    + """
if redis.call('EXISTS', KEYS[5]) == 1 then return {0, '', 0, 0} end
local seq = redis.call('INCR', KEYS[1])
redis.call('ZADD', KEYS[2], seq, table.concat({seq, kind, route, arg}, '\\31'))
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[9]) + 1))
local source = KEYS[3]
if kind == 'tag' then source = KEYS[4] end
if not soft and (kind == 'route' or kind == 'tag') then
  if redis.call('EXISTS', source) == 1 then redis.call('RENAME', source, KEYS[5]) end
  source = KEYS[5]
end
local count, next_cursor = chunk(source, '')
return finish(count, next_cursor, seq)
"""
)

# KEYS: the index the first call worked on (its aside key, if any), or an
# aside index to drain.
INVALIDATE_NEXT = (
    _INVALIDATE_CHUNK_FUNCTION
    + """
local count, next_cursor = chunk(KEYS[1], ARGV[8])
return finish(count, next_cursor, 0)
"""
)

# KEYS: route index, version. ARGV: 1 route, 2 now ms, 3 ttl s, 4 retention ms,
# 5 prefix, 6 channel, 7 origin, then (member, value, tags joined, digest)
# quadruples. The entries and indexes are those STORE writes; one version
# range, one index write, one expiry per index and one message per call keep a
# warm-up load cheap.
BULK_STORE = """
local route, now, ttl, retention, P = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4]), ARGV[5]
local count = (#ARGV - 7) / 4
local last = redis.call('INCRBY', KEYS[2], count)
local version = last - count
local members, keys, tag_keys = {}, {}, {}
local function extend(k)
  if redis.call('PTTL', k) < retention then redis.call('PEXPIRE', k, retention) end
end
for i = 8, #ARGV, 4 do
  version = version + 1
  local id = route .. '\\31' .. ARGV[i]
  local ek = P .. 'e:' .. id
  local tagset = {}
  for t in string.gmatch(ARGV[i + 2], '[^\\31]+') do tagset[t] = true end
  local old = redis.call('HGET', ek, 't')
  if old then
    for t in string.gmatch(old, '[^\\31]+') do
      if not tagset[t] then redis.call('SREM', P .. 't:' .. t, id) end
    end
  end
  redis.call('HSET', ek, 'v', ARGV[i + 1], 't', ARGV[i + 2], 's', ARGV[2],
    'f', now + ttl * 1000, 'x', now + retention, 'h', ARGV[i + 3], 'd', ttl,
    'n', version)
  redis.call('PEXPIRE', ek, retention)
  for t in pairs(tagset) do
    redis.call('SADD', P .. 't:' .. t, id)
    tag_keys[P .. 't:' .. t] = true
  end
  members[#members + 1] = 0
  members[#members + 1] = ARGV[i]
  keys[#keys + 1] = string.match(ARGV[i], '^(.*)\\31')
end
redis.call('ZADD', KEYS[1], unpack(members))
extend(KEYS[1])
for k in pairs(tag_keys) do extend(k) end
local message = table.concat({'M', ARGV[7], last - count + 1, route,
  table.concat(keys, '\\30')}, '\\31')
redis.call('PUBLISH', ARGV[6], message)
return count
"""

# KEYS: an index (a route's sorted set or a tag's set). ARGV: 1 cursor,
# 2 count, 3 what to put before a member to name its entry, 4 'z' or 's'.
# Drops members whose entry expired; returns {next cursor, members dropped}.
PRUNE_INDEX = """
local sorted = ARGV[4] == 'z'
local scan
if sorted then
  scan = redis.call('ZSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
else
  scan = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
end
local items, step, dropped = scan[2], 1, 0
if sorted then step = 2 end
for i = 1, #items, step do
  if redis.call('EXISTS', ARGV[3] .. items[i]) == 0 then
    if sorted then
      redis.call('ZREM', KEYS[1], items[i])
    else
      redis.call('SREM', KEYS[1], items[i])
    end
    dropped = dropped + 1
  end
end
return {scan[1], dropped}
"""

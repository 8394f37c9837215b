//! The Lua scripts of the Redis store: every change to more than one key is one of these,
//! atomic on the server. Each starts with [`LIB`]; `KEYS`/`ARGV` are listed per script.

use ::redis::Script;
use std::sync::LazyLock;

/// Functions every script starts with. Numbers go back to Redis through `s` (`%d`): Lua's own
/// number-to-string conversion (`..`, `tostring`) keeps only 14 digits.
const LIB: &str = r#"
local function s(n) return string.format('%d', n) end
local function held(v) return tonumber(string.match(v, '^(%-?%d+)')) or 0 end
local function ledger(stream, seqkey, at, kind, amount, cost, c)
  local seq = redis.call('INCR', seqkey)
  redis.call('XADD', stream, '*', 'seq', s(seq), 'at', at, 'kind', kind, 'amount', amount,
    'cost', cost, 'provider', c[1], 'model', c[2], 'input_tokens', c[3], 'output_tokens', c[4],
    'request_id', c[5], 'note', c[6])
end
local function usage(key, c, cost, billed)
  local f = c[1] .. '\31' .. c[2] .. '\31'
  for m, n in pairs({requests = 1, input = c[3], output = c[4], cost = cost, billed = billed}) do
    redis.call('HINCRBY', key, f .. m, n)
  end
end
local function sweep(key, res, now)
  local all = redis.call('HGETALL', res)
  local n, freed = 0, 0
  for i = 1, #all, 2 do
    local amt, exp = string.match(all[i + 1], '^(%-?%d+):(%d+)$')
    if exp and tonumber(exp) <= now then
      redis.call('HDEL', res, all[i]); n, freed = n + 1, freed + tonumber(amt)
    end
  end
  if n > 0 then redis.call('HINCRBY', key, 'reserved', s(-freed)) end
  return n
end
"#;

/// A script: [`LIB`], then `body`.
fn lua(body: &str) -> Script {
    Script::new(&format!("{LIB}{body}"))
}

/// `NAME = "body";` declares a static [`Script`] of [`LIB`] and the body, hashed on first use.
macro_rules! scripts {
    ($($(#[doc = $doc:literal])* $name:ident = $body:literal;)*) => {$(
        $(#[doc = $doc])*
        pub(super) static $name: LazyLock<Script> = LazyLock::new(|| lua($body));
    )*};
}

scripts! {
    /// KEYS key, keyhash, keys; ARGV id, name, policy, created, hash. 0 done, 1 id or 2 hash
    /// taken.
    CREATE = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
redis.call('HSET', KEYS[1], 'name', ARGV[2], 'policy', ARGV[3], 'disabled', '0',
  'revoked', '0', 'created', ARGV[4], 'balance', '0', 'reserved', '0', 'hash', ARGV[5])
redis.call('SET', KEYS[2], ARGV[1]); redis.call('SADD', KEYS[3], ARGV[1])
return 0
"#;

    /// KEYS keyhash; ARGV prefix. `{id, record, byok}` or nil.
    BY_HASH = r#"
local id = redis.call('GET', KEYS[1])
if not id then return false end
local rec = redis.call('HGETALL', ARGV[1] .. 'key:' .. id)
if #rec == 0 then return false end
return {id, rec, redis.call('HGETALL', ARGV[1] .. 'byok:' .. id)}
"#;

    /// KEYS keys; ARGV prefix, ids (none: every id). `{{id, record, byok providers}, ...}`.
    READ = r#"
local ids = {}
if #ARGV > 1 then for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
else ids = redis.call('SMEMBERS', KEYS[1]) end
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HGETALL', ARGV[1] .. 'key:' .. id)
  if #rec > 0 then out[#out + 1] = {id, rec, redis.call('HKEYS', ARGV[1] .. 'byok:' .. id)} end
end
return out
"#;

    /// KEYS key, byok; ARGV prefix, id, has name, name, has policy, policy, disabled (`0`, `1`,
    /// empty), revoke, byok op (`set`, `del`, empty), provider, sealed. 0 done, 1 no key.
    CHANGE = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'name', ARGV[4]) end
if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'policy', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'disabled', ARGV[7]) end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[1], 'revoked', '1')
  local map = ARGV[1] .. 'keyhash:' .. (redis.call('HGET', KEYS[1], 'hash') or '')
  if redis.call('GET', map) == ARGV[2] then redis.call('DEL', map) end
end
if ARGV[9] == 'set' then redis.call('HSET', KEYS[2], ARGV[10], ARGV[11])
elseif ARGV[9] == 'del' then redis.call('HDEL', KEYS[2], ARGV[10]) end
return 0
"#;

    /// KEYS key, ledger, ledgerseq; ARGV amount, at, note. `{1, balance}`, `{0}` no key.
    TOP_UP = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local bal = redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
ledger(KEYS[2], KEYS[3], ARGV[2], 'top-up', ARGV[1], '0', {'', '', '0', '0', '', ARGV[3]})
return {1, bal}
"#;

    /// KEYS key, res, resseq; ARGV amount, credit limit, now ms, lease expiry ms. `{1, n}` held,
    /// `{2, available}` short, `{0}` no key.
    RESERVE = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
sweep(KEYS[1], KEYS[2], tonumber(ARGV[3]))
local bal = tonumber(redis.call('HGET', KEYS[1], 'balance')) or 0
local res = tonumber(redis.call('HGET', KEYS[1], 'reserved')) or 0
local available = bal - res + tonumber(ARGV[2])
if tonumber(ARGV[1]) > available then return {2, available} end
local n = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[2], s(n), ARGV[1] .. ':' .. ARGV[4])
redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[1])
return {1, n}
"#;

    /// KEYS key, res, ledger, ledgerseq, usage; ARGV n, at, cost, provider, model, input,
    /// output, request id. 1 settled, 0 nothing open under that number.
    SETTLE = r#"
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local h = held(v)
local debit = math.max(0, math.min(tonumber(ARGV[3]), h))
redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('HINCRBY', KEYS[1], 'reserved', s(-h))
redis.call('HINCRBY', KEYS[1], 'balance', s(-debit))
local c = {ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ''}
ledger(KEYS[3], KEYS[4], ARGV[2], 'debit', s(-debit), ARGV[3], c)
usage(KEYS[5], c, ARGV[3], s(debit))
return 1
"#;

    /// KEYS key, res; ARGV n. 1 released, 0 nothing open under that number.
    RELEASE = r#"
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v or redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('HINCRBY', KEYS[1], 'reserved', s(-held(v)))
return 1
"#;

    /// KEYS key, ledger, ledgerseq, usage; ARGV at, cost, provider, model, input, output,
    /// request id. 1 recorded, 0 no key.
    RECORD = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local c = {ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ''}
ledger(KEYS[2], KEYS[3], ARGV[1], 'byok', '0', ARGV[2], c)
usage(KEYS[4], c, ARGV[2], '0')
return 1
"#;

    /// KEYS keys; ARGV prefix, now ms. How many expired reservations were released.
    RECOVER = r#"
local n, now = 0, tonumber(ARGV[2])
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. 'key:' .. id
  if redis.call('EXISTS', key) == 1 then n = n + sweep(key, ARGV[1] .. 'res:' .. id, now) end
end
return n
"#;

    /// KEYS hashes. Each one's HGETALL.
    HGETALLS = r#"
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"#;

    /// KEYS rate; ARGV now µs, interval µs, burst µs. `{1, 0}` allowed, `{0, retry µs}` not.
    RATE = r#"
local now, interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0') or 0, now)
if tat - now > burst then return {0, tat - now - burst} end
local new = tat + interval
redis.call('SET', KEYS[1], s(new), 'PX', s(math.floor((new - now) / 1000) + 1000))
return {1, 0}
"#;

    /// KEYS tpm; ARGV tokens.
    ADD_TOKENS = r#"
redis.call('INCRBY', KEYS[1], ARGV[1]); redis.call('EXPIRE', KEYS[1], 120)
return 1
"#;

    /// KEYS conc; ARGV now ms, ttl ms, limit, lease. 1 taken (or renewed), 0 full.
    ACQUIRE = r#"
local now, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if not redis.call('ZSCORE', KEYS[1], ARGV[4])
  and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], s(now + ttl), ARGV[4])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 1
"#;

    /// KEYS day; ARGV per day. 1 counted, 0 already at the limit.
    COUNT_DAY = r#"
if (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], 172800)
return 1
"#;
}

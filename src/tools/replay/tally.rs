//! Counting users and requests per rule, pool and move without a set per bucket.

use super::*;

// === counting ===

/// A line's user (see the module doc).
#[derive(Debug, Clone, Copy)]
pub(super) enum User {
    Uid(u64),
    Staff(u64),
}

/// Where a bucket's bit lies in a user's row: the live rules (then `default`), the
/// candidate's, the pools each sent the user to, and every from→to move.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) live_rules: usize,
    pub(super) cand_rules: usize,
    pub(super) pools: usize,
}

impl Layout {
    pub(super) fn live_rule(self, i: usize) -> usize {
        i
    }

    pub(super) fn cand_rule(self, i: usize) -> usize {
        self.live_rules + i
    }

    pub(super) fn live_pool(self, p: PoolId) -> usize {
        self.live_rules + self.cand_rules + p
    }

    pub(super) fn cand_pool(self, p: PoolId) -> usize {
        self.live_pool(self.pools) + p
    }

    pub(super) fn moved(self, from: PoolId, to: PoolId) -> usize {
        self.cand_pool(self.pools) + from * self.pools + to
    }

    pub(super) fn len(self) -> usize {
        self.moved(self.pools, 0)
    }
}

/// Every distinct user once, with one bit per bucket (rule, pool, move) that their lines
/// reached. A line then costs one hash lookup however many buckets it lands in, and the
/// distinct users per bucket are counted once, at the end. (A set per bucket meant five
/// inserts per line, and those were a third of the run time.)
#[derive(Debug)]
pub(super) struct Users {
    /// Row per uid; uids and staff uids apart, since the two id spaces may overlap.
    pub(super) uids: HashMap<u64, usize, IdHash>,
    /// Row per staff uid (of lines without a uid).
    pub(super) staff: HashMap<u64, usize, IdHash>,
    /// `words` per row, rows in the order users were first seen.
    pub(super) bits: Vec<u64>,
    pub(super) words: usize,
}

impl Users {
    pub(super) fn new(buckets: usize) -> Self {
        Self {
            uids: HashMap::default(),
            staff: HashMap::default(),
            bits: Vec::new(),
            words: buckets.div_ceil(64).max(1),
        }
    }

    /// The user's row, added on first sight.
    pub(super) fn row(&mut self, u: User) -> usize {
        let (map, id) = match u {
            User::Uid(id) => (&mut self.uids, id),
            User::Staff(id) => (&mut self.staff, id),
        };
        let next = self.bits.len() / self.words;
        let row = *map.entry(id).or_insert(next);
        if row == next {
            self.bits.resize(self.bits.len() + self.words, 0);
        }
        row
    }

    pub(super) fn set(&mut self, row: usize, bucket: usize) {
        if let Some(w) = self.bits.get_mut(row * self.words + bucket / 64) {
            *w |= 1 << (bucket % 64);
        }
    }

    pub(super) fn len(&self) -> u64 {
        (self.uids.len() + self.staff.len()) as u64
    }

    /// Distinct users per bucket.
    pub(super) fn per_bucket(&self, buckets: usize) -> Vec<u64> {
        let mut out = vec![0; buckets];
        for row in self.bits.chunks_exact(self.words) {
            for (w, &word) in row.iter().enumerate() {
                let mut m = word;
                while m != 0 {
                    if let Some(c) = out.get_mut(w * 64 + m.trailing_zeros() as usize) {
                        *c += 1;
                    }
                    m &= m - 1;
                }
            }
        }
        out
    }

    /// Users with at least one bucket in `buckets`.
    pub(super) fn any_of(&self, buckets: std::ops::Range<usize>) -> u64 {
        let hit = |row: &[u64]| buckets.clone().any(|b| row[b / 64] & (1 << (b % 64)) != 0);
        self.bits
            .chunks_exact(self.words)
            .filter(|r| hit(r))
            .count() as u64
    }
}

/// A hasher for u64 ids: a folded multiply instead of SipHash. The ids come from our own
/// log, not from an attacker choosing collisions.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// See [`IdHash`].
#[derive(Debug, Clone, Copy)]
pub(super) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, x: u64) {
        // The high and low halves of a 128-bit product: every input bit reaches the low
        // bits (the bucket) and the high bits (hashbrown's tag).
        let p = u128::from(self.0 ^ x) * 0x9e37_79b9_7f4a_7c15;
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

/// What one ruleset did to the decided lines, in requests.
#[derive(Debug)]
pub(super) struct Tally<'r> {
    pub(super) rules: &'r RuleSet,
    /// Per rule in file order, then `default`.
    pub(super) by_rule: Vec<u64>,
    /// Per global pool id, after the `pool_missing` fallback.
    pub(super) by_pool: Vec<u64>,
    /// Lines whose rule chose a pool their service does not define.
    pub(super) pool_missing: u64,
}

impl<'r> Tally<'r> {
    pub(super) fn new(rules: &'r RuleSet, pools: usize) -> Self {
        Self {
            rules,
            by_rule: vec![0; rules.len() + 1],
            by_pool: vec![0; pools],
            pool_missing: 0,
        }
    }

    /// The proxy's decision (`Shared::decide` without the clock and the guard), counted:
    /// the rule's index (`rules.len()` for the default) and the pool used.
    pub(super) fn decide(&mut self, cfg: &Config, info: &RequestInfo<'_>) -> (usize, PoolId) {
        let d = self.rules.decide(info);
        let defined = cfg.services[info.service]
            .pool_by_id
            .get(d.pool)
            .copied()
            .flatten()
            .is_some();
        let pool = if defined {
            d.pool
        } else {
            self.pool_missing += 1;
            STABLE
        };
        let rule = d.rule.unwrap_or(self.rules.len());
        if let Some(c) = self.by_rule.get_mut(rule) {
            *c += 1;
        }
        if let Some(c) = self.by_pool.get_mut(pool) {
            *c += 1;
        }
        (rule, pool)
    }
}

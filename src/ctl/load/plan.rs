//! What each load client does next: the operation mix (`create=1,publish=1,…`), a small seeded
//! random source, and the client's own volumes by state. Pure: no I/O, so the choice is
//! reproducible from `--seed` and unit-tested here.
//!
//! Invariant: an operation is only chosen when it applies (publish needs an unpublished volume,
//! stats and unpublish a published one, delete an unpublished one, create room under the
//! client's cap), so the driver sees the order of calls a CO would make, and the number of
//! volumes a client holds walks between 0 and its cap.

use std::fmt;
use std::str::FromStr;

/// One step of the mix, as a CO would take it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Publish,
    Stats,
    Unpublish,
    Delete,
}

impl Op {
    pub const ALL: [Op; 5] = [
        Op::Create,
        Op::Publish,
        Op::Stats,
        Op::Unpublish,
        Op::Delete,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Publish => "publish",
            Op::Stats => "stats",
            Op::Unpublish => "unpublish",
            Op::Delete => "delete",
        }
    }
}

/// Relative weights of the operations; 0 leaves one out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    weights: [u32; 5],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MixError {
    #[error("{0:?}: expected OP=WEIGHT with OP one of create, publish, stats, unpublish, delete")]
    BadPair(String),
    #[error("{0:?}: the weight must be a whole number from 0 to 1000")]
    BadWeight(String),
    #[error("{0}: given more than once")]
    Repeated(&'static str),
    #[error("create has no weight: no volume would ever be made")]
    NoCreate,
    #[error("delete has no weight while create has one: clients would stop at their cap")]
    NoDelete,
}

impl Mix {
    /// A CO's whole lifecycle, with stats as kubelet polls them (more often than the rest).
    pub const DEFAULT: &'static str = "create=1,publish=1,stats=2,unpublish=1,delete=1";

    pub fn weight(&self, op: Op) -> u32 {
        self.weights[op as usize]
    }

    /// Leave `op` out, as when the driver does not offer it (no GET_VOLUME_STATS).
    pub fn without(mut self, op: Op) -> Mix {
        self.weights[op as usize] = 0;
        self
    }
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(s: &str) -> Result<Self, MixError> {
        let mut weights = [0u32; 5];
        let mut seen = [false; 5];
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = pair
                .split_once('=')
                .ok_or_else(|| MixError::BadPair(pair.into()))?;
            let op = Op::ALL
                .into_iter()
                .find(|op| op.name() == name.trim())
                .ok_or_else(|| MixError::BadPair(pair.into()))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .ok()
                .filter(|w| *w <= 1000)
                .ok_or_else(|| MixError::BadWeight(pair.into()))?;
            if std::mem::replace(&mut seen[op as usize], true) {
                return Err(MixError::Repeated(op.name()));
            }
            weights[op as usize] = weight;
        }
        if weights[Op::Create as usize] == 0 {
            return Err(MixError::NoCreate);
        }
        if weights[Op::Delete as usize] == 0 {
            return Err(MixError::NoDelete);
        }
        Ok(Mix { weights })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = Op::ALL
            .iter()
            .filter(|op| self.weight(**op) > 0)
            .map(|op| format!("{}={}", op.name(), self.weight(*op)))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// splitmix64: enough randomness to pick operations, reproducible from a seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`); the modulo bias is negligible for the small `n` used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A client's volumes: `idle` are created and not published, `published` are mounted.
#[derive(Debug)]
pub struct Pool<V> {
    pub idle: Vec<V>,
    pub published: Vec<V>,
    cap: usize,
}

impl<V> Pool<V> {
    pub fn new(cap: usize) -> Pool<V> {
        Pool {
            idle: Vec::new(),
            published: Vec::new(),
            cap: cap.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.idle.len() + self.published.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn applies(&self, op: Op) -> bool {
        match op {
            Op::Create => self.len() < self.cap,
            Op::Publish | Op::Delete => !self.idle.is_empty(),
            Op::Stats | Op::Unpublish => !self.published.is_empty(),
        }
    }

    /// The next operation by weight among those that apply. Create or delete always applies
    /// (the pool is below its cap, or holds a volume that is idle or can be unpublished), so
    /// this never comes back empty for a valid mix; `None` only for a mix that cannot move.
    pub fn choose(&self, mix: &Mix, rng: &mut Rng) -> Option<Op> {
        let mut candidates: Vec<(Op, u32)> = Op::ALL
            .into_iter()
            .filter(|op| mix.weight(*op) > 0 && self.applies(*op))
            .map(|op| (op, mix.weight(op)))
            .collect();
        if candidates.is_empty() && !self.published.is_empty() {
            // Full, all published, and unpublish weighted 0: unpublish anyway, or the client
            // would stall for ever.
            candidates.push((Op::Unpublish, 1));
        }
        let total: u64 = candidates.iter().map(|(_, w)| u64::from(*w)).sum();
        if total == 0 {
            return None;
        }
        let mut pick = rng.below(total);
        for (op, w) in candidates {
            if pick < u64::from(w) {
                return Some(op);
            }
            pick -= u64::from(w);
        }
        None
    }

    /// Take a random volume out of `idle` (publish, delete) or `published` (stats, unpublish).
    pub fn take(&mut self, published: bool, rng: &mut Rng) -> Option<V> {
        let list = if published {
            &mut self.published
        } else {
            &mut self.idle
        };
        if list.is_empty() {
            return None;
        }
        let i = rng.below(list.len() as u64) as usize;
        Some(list.swap_remove(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mix_parses_and_prints_back() {
        let mix: Mix = Mix::DEFAULT.parse().unwrap();
        assert_eq!(mix.weight(Op::Stats), 2);
        assert_eq!(mix.to_string(), Mix::DEFAULT);
    }

    #[test]
    fn bad_mixes_are_refused_with_the_reason() {
        assert!(matches!("create".parse::<Mix>(), Err(MixError::BadPair(_))));
        assert!(matches!(
            "create=1,mount=1".parse::<Mix>(),
            Err(MixError::BadPair(_))
        ));
        assert!(matches!(
            "create=x,delete=1".parse::<Mix>(),
            Err(MixError::BadWeight(_))
        ));
        assert!(matches!(
            "create=1001,delete=1".parse::<Mix>(),
            Err(MixError::BadWeight(_))
        ));
        assert_eq!(
            "create=1,create=2,delete=1".parse::<Mix>(),
            Err(MixError::Repeated("create"))
        );
        assert_eq!("delete=1".parse::<Mix>(), Err(MixError::NoCreate));
        assert_eq!("create=1".parse::<Mix>(), Err(MixError::NoDelete));
    }

    #[test]
    fn only_operations_that_apply_are_chosen() {
        let mix: Mix = Mix::DEFAULT.parse().unwrap();
        let mut rng = Rng::new(7);
        let mut pool: Pool<u32> = Pool::new(3);
        for _ in 0..100 {
            assert_eq!(pool.choose(&mix, &mut rng), Some(Op::Create));
        }
        pool.idle.extend([1, 2, 3]);
        for _ in 0..200 {
            let op = pool.choose(&mix, &mut rng).unwrap();
            assert!(
                matches!(op, Op::Publish | Op::Delete),
                "{op:?} on a full idle pool"
            );
        }
        pool.published.append(&mut pool.idle);
        for _ in 0..200 {
            let op = pool.choose(&mix, &mut rng).unwrap();
            assert!(
                matches!(op, Op::Stats | Op::Unpublish),
                "{op:?}, all published"
            );
        }
    }

    #[test]
    fn a_mix_without_unpublish_still_frees_a_full_published_pool() {
        let mix: Mix = "create=1,publish=1,delete=1".parse().unwrap();
        let mut pool: Pool<u32> = Pool::new(1);
        pool.published.push(1);
        assert_eq!(pool.choose(&mix, &mut Rng::new(1)), Some(Op::Unpublish));
    }

    #[test]
    fn weights_set_the_share_of_each_operation() {
        let mix: Mix = "create=1,publish=3,delete=1".parse().unwrap();
        let mut rng = Rng::new(42);
        let mut pool: Pool<u32> = Pool::new(10);
        pool.idle.push(1);
        let publishes = (0..10_000)
            .filter(|_| pool.choose(&mix, &mut rng) == Some(Op::Publish))
            .count();
        // 3 of 5 expected: 6000, within a margin no fair seed misses.
        assert!((5600..6400).contains(&publishes), "{publishes}");
    }

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let a: Vec<u64> = (0..5)
            .scan(Rng::new(9), |r, _| Some(r.next_u64()))
            .collect();
        let b: Vec<u64> = (0..5)
            .scan(Rng::new(9), |r, _| Some(r.next_u64()))
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            a,
            (0..5)
                .scan(Rng::new(10), |r, _| Some(r.next_u64()))
                .collect::<Vec<_>>()
        );
    }
}

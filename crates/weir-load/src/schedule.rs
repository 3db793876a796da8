//! The open-loop schedule: when each request is due and which mix entry it is.
//!
//! Slots are computed from the run's start, never from when the previous request went out,
//! so a slow server cannot slow the schedule down (the coordinated-omission trap of closed
//! loops). Evenly spaced slots are `i / rate`; Poisson slots add exponential gaps
//! `-ln(1 - u) / rate` drawn from a seeded xoshiro256++ generator, so a run can be repeated
//! slot for slot with the same `--seed`.

use std::time::Duration;

/// A small, fast, seedable PRNG (xoshiro256++, seeded through splitmix64). Not for
/// cryptography; good enough for arrival times and mix picks.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole sequence is fixed by `seed`.
    pub fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// An exponential variate with the given rate (mean `1 / rate`).
    pub fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.next_f64()).ln() / rate
    }
}

/// How slots are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Evenly spaced: slot `i` at `i / rate`.
    Constant,
    /// A Poisson process: exponential gaps with mean `1 / rate`.
    Poisson,
}

/// When the measured part of a schedule ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// After this many seconds of measured slots (following the warmup).
    Duration(f64),
    /// After this many measured slots (following the warmup).
    Count(u64),
}

/// One due request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slot {
    /// Due time, from the start of the run.
    pub at: Duration,
    /// Index of the mix entry to send.
    pub entry: usize,
    /// Whether the slot falls in the warmup (measured, but reported apart).
    pub warmup: bool,
}

/// Picks mix entries by weight.
#[derive(Debug, Clone)]
pub struct Picker {
    cumulative: Vec<f64>,
    rng: Rng,
}

impl Picker {
    /// A picker over `weights` (all positive), seeded.
    pub fn new(weights: &[f64], seed: u64) -> Picker {
        let mut acc = 0.0;
        let cumulative = weights
            .iter()
            .map(|w| {
                acc += w;
                acc
            })
            .collect();
        Picker {
            cumulative,
            rng: Rng::new(seed ^ 0x5bd1_e995_0000_0001),
        }
    }

    /// The next entry index.
    pub fn pick(&mut self) -> usize {
        if self.cumulative.len() <= 1 {
            return 0;
        }
        let total = *self
            .cumulative
            .last()
            .expect("checked: more than one weight");
        let x = self.rng.next_f64() * total;
        self.cumulative
            .partition_point(|&c| c <= x)
            .min(self.cumulative.len() - 1)
    }
}

/// The open-loop schedule, an iterator of [`Slot`]s in time order.
#[derive(Debug, Clone)]
pub struct Schedule {
    rate: f64,
    arrivals: Arrivals,
    rng: Rng,
    picker: Picker,
    warmup: f64,
    limit: Limit,
    i: u64,
    t: f64,
    measured: u64,
}

impl Schedule {
    /// A schedule at `rate` requests/s, with `warmup` seconds of warmup slots first.
    pub fn new(
        rate: f64,
        arrivals: Arrivals,
        seed: u64,
        weights: &[f64],
        warmup: f64,
        limit: Limit,
    ) -> Schedule {
        let mut s = Schedule {
            rate,
            arrivals,
            rng: Rng::new(seed),
            picker: Picker::new(weights, seed),
            warmup,
            limit,
            i: 0,
            t: 0.0,
            measured: 0,
        };
        if arrivals == Arrivals::Poisson {
            s.t = s.rng.exp(rate);
        }
        s
    }

    /// How many measured slots the schedule holds, when that is known ahead (evenly
    /// spaced, or a count); an estimate for Poisson durations.
    pub fn expected_measured(&self) -> u64 {
        match self.limit {
            Limit::Count(n) => n,
            Limit::Duration(d) => (d * self.rate).ceil() as u64,
        }
    }

    /// The nominal length of the measured window, in seconds.
    pub fn measured_window(&self) -> f64 {
        match self.limit {
            Limit::Count(n) => n as f64 / self.rate,
            Limit::Duration(d) => d,
        }
    }
}

impl Iterator for Schedule {
    type Item = Slot;

    fn next(&mut self) -> Option<Slot> {
        let t = self.t;
        let warmup = t < self.warmup;
        if !warmup {
            match self.limit {
                Limit::Duration(d) if t >= self.warmup + d => return None,
                Limit::Count(n) if self.measured >= n => return None,
                _ => {}
            }
            self.measured += 1;
        }
        self.i += 1;
        self.t = match self.arrivals {
            Arrivals::Constant => self.i as f64 / self.rate,
            Arrivals::Poisson => self.t + self.rng.exp(self.rate),
        };
        Some(Slot {
            at: Duration::from_secs_f64(t),
            entry: self.picker.pick(),
            warmup,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_counts_and_times() {
        let s: Vec<Slot> = Schedule::new(
            100.0,
            Arrivals::Constant,
            1,
            &[1.0],
            0.0,
            Limit::Duration(2.0),
        )
        .collect();
        assert_eq!(s.len(), 200);
        assert_eq!(s[0].at, Duration::ZERO);
        assert_eq!(s[1].at, Duration::from_millis(10));
        assert_eq!(s[199].at, Duration::from_millis(1990));
        assert!(s.iter().all(|x| !x.warmup && x.entry == 0));

        let s: Vec<Slot> =
            Schedule::new(10.0, Arrivals::Constant, 1, &[1.0], 1.0, Limit::Count(25)).collect();
        assert_eq!(s.iter().filter(|x| x.warmup).count(), 10);
        assert_eq!(s.iter().filter(|x| !x.warmup).count(), 25);
        assert_eq!(s[10].at, Duration::from_secs(1));
    }

    #[test]
    fn poisson_is_seeded_and_has_the_right_mean() {
        let a: Vec<Slot> = Schedule::new(
            1000.0,
            Arrivals::Poisson,
            42,
            &[1.0],
            0.0,
            Limit::Duration(10.0),
        )
        .collect();
        let b: Vec<Slot> = Schedule::new(
            1000.0,
            Arrivals::Poisson,
            42,
            &[1.0],
            0.0,
            Limit::Duration(10.0),
        )
        .collect();
        let c: Vec<Slot> = Schedule::new(
            1000.0,
            Arrivals::Poisson,
            43,
            &[1.0],
            0.0,
            Limit::Duration(10.0),
        )
        .collect();
        assert_eq!(a, b, "same seed, same slots");
        assert_ne!(a, c, "another seed, other slots");
        // 10000 expected; sd 100: 5 sd either side.
        assert!((9500..=10500).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at));
        // Exponential gaps: about 63% are shorter than the mean.
        let short = a
            .windows(2)
            .filter(|w| w[1].at - w[0].at < Duration::from_millis(1))
            .count() as f64
            / a.len() as f64;
        assert!((0.60..0.66).contains(&short), "{short}");
        let n: Vec<Slot> =
            Schedule::new(50.0, Arrivals::Poisson, 7, &[1.0], 0.0, Limit::Count(123)).collect();
        assert_eq!(n.len(), 123);
    }

    #[test]
    fn mix_picks_follow_weights() {
        let mut p = Picker::new(&[98.0, 2.0], 9);
        let mut counts = [0u32; 2];
        for _ in 0..100_000 {
            counts[p.pick()] += 1;
        }
        assert!((1700..2300).contains(&counts[1]), "{counts:?}");
        let mut one = Picker::new(&[5.0], 1);
        assert_eq!(one.pick(), 0);
    }
}

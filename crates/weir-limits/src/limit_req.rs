//! NGINX's `limit_req`, exactly: a leaky bucket per key, in NGINX's integer arithmetic.
//!
//! This is a pure state machine on a millisecond clock the caller gives, transcribed from
//! nginx's `src/http/modules/ngx_http_limit_req_module.c`:
//!
//! - the rate is kept times 1000 (`"10r/s"` is 10000, `"600r/m"` is `600 * 1000 / 60` =
//!   10000, `"1r/m"` is 16), and so are `burst` and `delay` (`burst = 5` is 5000);
//! - a bucket holds `excess` (thousandths of a request) and `last` (ms). A request sees
//!   `excess = max(0, bucket.excess - rate * ms / 1000 + 1000)` where `ms = now - last`
//!   (clamped: below -60000 it is 1, otherwise below 0 it is 0);
//! - `excess > burst`: refused (`NGX_BUSY`), nothing is written;
//! - otherwise the bucket takes `excess`, and `last = now` only when `ms != 0`;
//! - a new key's bucket starts at `excess = 0` (its first request costs nothing);
//! - the request is delayed by `(excess - delay) * 1000 / rate` ms when `excess > delay`,
//!   where `delay` is 0 by default, `N * 1000` with `delay = N`, and infinite with
//!   `nodelay`.
//!
//! Several zones on one request ([`check`]): every zone but the last is looked up without
//! being charged (`ngx_http_limit_req_lookup(..., account = 0)`: a new key gets a bucket
//! with `excess = 0, last = 0`); the last is looked up and charged; the first zone whose
//! excess is over its burst refuses the request, and then no zone is charged (the earlier
//! ones are only unlocked). When none refuses, the earlier zones are charged afterwards, from
//! the last but one down to the first (`ngx_http_limit_req_account`), each recomputing its
//! excess, and the request's delay is the largest of the zones' delays (a later zone in
//! that order replaces the current one only when its delay is strictly larger). A zone
//! whose key is empty is skipped, which is what NGINX's order amounts to.
//!
//! One difference, on purpose: NGINX also frees at most two idle, drained buckets of a zone
//! whenever it creates a new one (`ngx_http_limit_req_expire`); weir's stores forget keys
//! only by `max_keys` (memory) or by a TTL after which the bucket is fully drained (Redis),
//! and a forgotten bucket behaves as a drained one except at rates under 1r/s, where NGINX's
//! 60-second idle rule can forgive a partly drained bucket.

use std::time::Duration;

use weir_config::Rate;

/// `delay` of a rule with `nodelay`: no excess is ever delayed.
pub const NODELAY: u64 = u64::MAX;

/// How a zone treats requests within its burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DelayMode {
    /// Neither `nodelay` nor `delay`: every excess request is delayed.
    All,
    /// `nodelay`: none is delayed.
    NoDelay,
    /// `delay = N`: the first N excess requests at once, the rest of the burst delayed.
    After(u64),
}

/// One zone's parameters in NGINX's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// Requests per second times 1000.
    pub rate: u64,
    /// `burst` times 1000.
    pub burst: u64,
    /// `delay` times 1000 ([`NODELAY`] for `nodelay`).
    pub delay: u64,
}

impl Rule {
    /// The rule of `rate`, `burst` and a delay mode.
    pub fn new(rate: Rate, burst: u64, mode: DelayMode) -> Rule {
        Rule {
            rate: rate.per_sec_x1000().max(1),
            burst: burst.saturating_mul(1000),
            delay: match mode {
                DelayMode::All => 0,
                DelayMode::NoDelay => NODELAY,
                DelayMode::After(n) => n.saturating_mul(1000),
            },
        }
    }

    /// The delay for a request that left the bucket at `excess` (0: none).
    pub fn delay_ms(&self, excess: u64) -> u64 {
        if excess <= self.delay {
            0
        } else {
            ((u128::from(excess - self.delay) * 1000) / u128::from(self.rate)) as u64
        }
    }

    /// For a refused request seen at `excess` (over the burst): how long until the bucket
    /// would admit the same request, in whole seconds, at least 1.
    pub fn retry_after(&self, excess: u64) -> Duration {
        let over = u128::from(excess.saturating_sub(self.burst));
        let ms = (over * 1000).div_ceil(u128::from(self.rate));
        Duration::from_secs(ms.div_ceil(1000).max(1) as u64)
    }

    /// Requests that could follow at once without being refused, after one that left the
    /// bucket at `excess`.
    pub fn remaining(&self, excess: u64) -> u64 {
        self.burst.saturating_sub(excess) / 1000
    }

    /// Whole seconds until a bucket at `excess` has drained to empty.
    pub fn reset_secs(&self, excess: u64) -> u64 {
        let ms = (u128::from(excess) * 1000).div_ceil(u128::from(self.rate));
        ms.div_ceil(1000) as u64
    }

    /// Milliseconds after which a bucket left at `excess` is fully drained, so that
    /// forgetting it changes nothing (a forgotten key starts at `excess = 0`, as a drained
    /// one would: `excess + 1000 - rate * ms / 1000 <= 0`).
    pub fn idle_ttl_ms(&self, excess: u64) -> u64 {
        ((u128::from(excess) + 1000) * 1000).div_ceil(u128::from(self.rate)) as u64
    }
}

/// One key's state: NGINX's `ngx_http_limit_req_node_t` less its bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Bucket {
    /// Excess in thousandths of a request.
    pub excess: u64,
    /// When it was last charged (ms on the caller's clock; 0 for a bucket created by a
    /// lookup that did not charge it).
    pub last: u64,
}

/// NGINX's `ms` between `now` and `last`, clamped as nginx clamps it.
fn elapsed(now: u64, last: u64) -> u64 {
    let ms = now.wrapping_sub(last) as i64;
    if ms < -60_000 {
        1
    } else if ms < 0 {
        0
    } else {
        ms as u64
    }
}

/// The excess a request sees: `max(0, excess - rate * ms / 1000 + 1000)`, and `ms`.
pub fn drain(b: Bucket, rule: &Rule, now: u64) -> (u64, u64) {
    let ms = elapsed(now, b.last);
    let leaked = u128::from(rule.rate) * u128::from(ms) / 1000;
    let excess = (u128::from(b.excess) + 1000).saturating_sub(leaked);
    (excess.min(u128::from(u64::MAX)) as u64, ms)
}

/// What a lookup found (`ngx_http_limit_req_lookup`'s return codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// `NGX_BUSY`: over the burst; nothing was written.
    Busy {
        /// The excess the request would have left.
        excess: u64,
    },
    /// `NGX_OK`: charged (the last zone).
    Ok {
        /// The excess it left.
        excess: u64,
    },
    /// `NGX_AGAIN`: within the burst, not charged yet (an earlier zone).
    Again,
}

/// `ngx_http_limit_req_lookup` on one key's slot (`None`: the key is new).
pub fn lookup(slot: &mut Option<Bucket>, rule: &Rule, now: u64, account: bool) -> Lookup {
    match slot {
        None => {
            *slot = Some(Bucket {
                excess: 0,
                last: if account { now } else { 0 },
            });
            if account {
                Lookup::Ok { excess: 0 }
            } else {
                Lookup::Again
            }
        }
        Some(b) => {
            let (excess, ms) = drain(*b, rule, now);
            if excess > rule.burst {
                return Lookup::Busy { excess };
            }
            if !account {
                return Lookup::Again;
            }
            b.excess = excess;
            if ms != 0 {
                b.last = now;
            }
            Lookup::Ok { excess }
        }
    }
}

/// `ngx_http_limit_req_account`'s step for one earlier zone: charge it and return the
/// excess it left. A slot lost in between (evicted) is charged as a new key.
pub fn account(slot: &mut Option<Bucket>, rule: &Rule, now: u64) -> u64 {
    let b = slot.get_or_insert(Bucket { excess: 0, last: 0 });
    let (excess, ms) = drain(*b, rule, now);
    if ms != 0 {
        b.last = now;
    }
    b.excess = excess;
    excess
}

/// The verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go on now.
    Admit,
    /// Go on after this long (NGINX's delayed request).
    Delay(Duration),
    /// Refused; the bucket would admit it again after `retry_after` (whole seconds, at
    /// least 1).
    Refuse {
        /// Whole seconds, at least 1.
        retry_after: Duration,
    },
}

/// The verdict of a list of zones and which zone it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Admit, delay or refuse.
    pub verdict: Verdict,
    /// Index (in the list checked) of the zone that refused, or that set the delay; when
    /// admitted at once, the zone with the fewest requests remaining (for the RateLimit
    /// header). `None` when no zone was checked.
    pub zone: Option<usize>,
    /// That zone's excess (thousandths of a request).
    pub excess: u64,
}

impl Decision {
    /// Nothing was checked (every key empty).
    pub const NONE: Decision = Decision {
        verdict: Verdict::Admit,
        zone: None,
        excess: 0,
    };

    /// The decision of a refusal by zone `zone` seen at `excess`.
    pub fn refused(rules: &[Rule], zone: usize, excess: u64) -> Decision {
        Decision {
            verdict: Verdict::Refuse {
                retry_after: rules[zone].retry_after(excess),
            },
            zone: Some(zone),
            excess,
        }
    }

    /// The decision once every zone was charged, leaving `excesses` (one per zone, in
    /// order): NGINX's delay rule (the last zone first, then the others from the last but
    /// one down, each replacing only with a strictly larger delay).
    pub fn charged(rules: &[Rule], excesses: &[u64]) -> Decision {
        let n = excesses.len();
        if n == 0 {
            return Decision::NONE;
        }
        let mut zone = n - 1;
        let mut max_delay = rules[zone].delay_ms(excesses[zone]);
        for i in (0..n - 1).rev() {
            let d = rules[i].delay_ms(excesses[i]);
            if d > max_delay {
                max_delay = d;
                zone = i;
            }
        }
        if max_delay == 0 {
            // the zone closest to refusing, for the RateLimit header
            zone = (0..n)
                .rev()
                .min_by_key(|&i| rules[i].remaining(excesses[i]))
                .unwrap_or(n - 1);
            return Decision {
                verdict: Verdict::Admit,
                zone: Some(zone),
                excess: excesses[zone],
            };
        }
        Decision {
            verdict: Verdict::Delay(Duration::from_millis(max_delay)),
            zone: Some(zone),
            excess: excesses[zone],
        }
    }
}

/// Access to the buckets of the zones being checked, one key per zone; `with` runs `f` on
/// zone `i`'s slot under whatever lock the store needs.
pub trait Buckets {
    /// Runs `f` on the slot of zone `i`'s key (`None` when the key is unknown; leaving
    /// `Some` stores it).
    fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Option<Bucket>) -> R) -> R;
}

/// Checks one request against `rules` (one per zone, in the route's order) as NGINX's
/// handler does. `now` is read before each step (NGINX reads its cached clock).
pub fn check(buckets: &mut impl Buckets, rules: &[Rule], mut now: impl FnMut() -> u64) -> Decision {
    let n = rules.len();
    if n == 0 {
        return Decision::NONE;
    }
    let mut last_excess = 0;
    for (i, rule) in rules.iter().enumerate() {
        let t = now();
        match buckets.with(i, |slot| lookup(slot, rule, t, i == n - 1)) {
            Lookup::Busy { excess } => return Decision::refused(rules, i, excess),
            Lookup::Ok { excess } => last_excess = excess,
            Lookup::Again => {}
        }
    }
    let mut excesses = vec![0; n];
    excesses[n - 1] = last_excess;
    for i in (0..n - 1).rev() {
        let t = now();
        excesses[i] = buckets.with(i, |slot| account(slot, &rules[i], t));
    }
    Decision::charged(rules, &excesses)
}

/// Buckets held in a plain vector: the reference model the tests and the parity tool use.
#[derive(Debug, Default, Clone)]
pub struct VecBuckets(pub Vec<Option<Bucket>>);

impl Buckets for VecBuckets {
    fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Option<Bucket>) -> R) -> R {
        f(&mut self.0[i])
    }
}

/// The IETF httpapi RateLimit headers (draft-ietf-httpapi-ratelimit-headers) for one zone:
/// `RateLimit-Policy: "zone";q=COUNT;w=WINDOW` and `RateLimit: "zone";r=REMAINING;t=RESET`.
/// `r` is how many requests could follow at once without a refusal; `t` is the seconds
/// until the bucket is empty, or, for a refusal, Retry-After.
pub fn ratelimit_headers(
    zone: &str,
    rate: Rate,
    rule: &Rule,
    decision: &Decision,
) -> (String, String) {
    let policy = format!("\"{zone}\";q={};w={}", rate.count, rate.window_secs());
    let (r, t) = match decision.verdict {
        Verdict::Refuse { retry_after } => (0, retry_after.as_secs()),
        _ => (
            rule.remaining(decision.excess),
            rule.reset_secs(decision.excess),
        ),
    };
    (policy, format!("\"{zone}\";r={r};t={t}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_config::units::parse_rate;

    fn rule(rate: &str, burst: u64, mode: DelayMode) -> Rule {
        Rule::new(parse_rate(rate).unwrap(), burst, mode)
    }

    /// One zone, one key: the verdicts at the given times (ms).
    fn run(rule: Rule, times: &[u64]) -> Vec<Verdict> {
        let mut b = VecBuckets(vec![None]);
        times
            .iter()
            .map(|&t| check(&mut b, &[rule], || t).verdict)
            .collect()
    }

    const T0: u64 = 1_000_000_000;
    const A: Verdict = Verdict::Admit;
    fn d(ms: u64) -> Verdict {
        Verdict::Delay(Duration::from_millis(ms))
    }
    fn r(s: u64) -> Verdict {
        Verdict::Refuse {
            retry_after: Duration::from_secs(s),
        }
    }

    #[test]
    fn units_are_nginx_s() {
        assert_eq!(
            rule("10r/s", 5, DelayMode::All),
            Rule {
                rate: 10_000,
                burst: 5000,
                delay: 0
            }
        );
        assert_eq!(rule("600r/m", 0, DelayMode::NoDelay).rate, 10_000);
        assert_eq!(
            rule("1r/m", 0, DelayMode::After(3)),
            Rule {
                rate: 16,
                burst: 0,
                delay: 3000
            }
        );
    }

    #[test]
    fn burst_zero_admits_one_per_interval() {
        // 10r/s: one request per 100 ms; the first one of a key is free
        let v = run(
            rule("10r/s", 0, DelayMode::NoDelay),
            &[T0, T0, T0 + 50, T0 + 100, T0 + 199, T0 + 200],
        );
        assert_eq!(v, [A, r(1), r(1), A, r(1), A]);
    }

    #[test]
    fn nodelay_serves_the_burst_at_once_then_refuses() {
        let rl = rule("10r/s", 3, DelayMode::NoDelay);
        let v = run(rl, &[T0, T0, T0, T0, T0, T0 + 100, T0 + 100]);
        // first free (0), then 1000, 2000, 3000 (= burst) admitted, 4000 refused
        assert_eq!(v, [A, A, A, A, r(1), A, r(1)]);
    }

    #[test]
    fn plain_burst_is_delayed_by_excess_over_rate() {
        let rl = rule("10r/s", 3, DelayMode::All);
        let v = run(rl, &[T0, T0, T0, T0, T0]);
        assert_eq!(v, [A, d(100), d(200), d(300), r(1)]);
    }

    #[test]
    fn delay_n_is_two_stage() {
        // burst 5, delay 2: excess up to 2000 at once, 3000..5000 delayed by the part over 2000
        let rl = rule("10r/s", 5, DelayMode::After(2));
        let v = run(rl, &[T0, T0, T0, T0, T0, T0, T0, T0]);
        assert_eq!(v, [A, A, A, d(100), d(200), d(300), r(1), r(1)]);
    }

    #[test]
    fn per_minute_rate_and_its_rounding() {
        // 600r/m is 10000 per s x1000, as 10r/s
        let a = run(
            rule("600r/m", 0, DelayMode::NoDelay),
            &[T0, T0 + 99, T0 + 100],
        );
        assert_eq!(a, [A, r(1), A]);
        // 1r/m is 16 (not 16.67): 1000 drains in 62500 ms, not 60000
        let rl = rule("1r/m", 0, DelayMode::NoDelay);
        let v = run(rl, &[T0, T0 + 60_000, T0 + 62_499, T0 + 62_500]);
        assert_eq!(v[0], A);
        assert!(matches!(v[1], Verdict::Refuse { .. }));
        assert!(matches!(v[2], Verdict::Refuse { .. }));
        assert_eq!(v[3], A);
        // retry-after at T0+60000: 40 thousandths over at 16 per s -> 2500 ms -> 3 s
        assert_eq!(v[1], r(3));
    }

    #[test]
    fn last_moves_only_when_time_passed_and_partial_drain() {
        let rl = rule("10r/s", 5, DelayMode::NoDelay);
        let mut b = VecBuckets(vec![None]);
        check(&mut b, &[rl], || T0);
        check(&mut b, &[rl], || T0);
        assert_eq!(
            b.0[0],
            Some(Bucket {
                excess: 1000,
                last: T0
            })
        );
        check(&mut b, &[rl], || T0 + 30);
        // 1000 - 10000 * 30 / 1000 + 1000 = 1700
        assert_eq!(
            b.0[0],
            Some(Bucket {
                excess: 1700,
                last: T0 + 30
            })
        );
        // a clock that goes back a little counts as 0 ms, far back as 1 ms
        check(&mut b, &[rl], || T0 + 20);
        assert_eq!(
            b.0[0],
            Some(Bucket {
                excess: 2700,
                last: T0 + 30
            })
        );
        let mut b = VecBuckets(vec![Some(Bucket {
            excess: 1500,
            last: T0,
        })]);
        check(&mut b, &[rl], || T0 - 70_000);
        assert_eq!(
            b.0[0],
            Some(Bucket {
                excess: 2490,
                last: T0 - 70_000
            })
        );
    }

    #[test]
    fn refusal_retry_after_is_whole_seconds_until_admitted() {
        // 1r/s, burst 0: a second request 100 ms later is 900 over -> 900 ms -> 1 s
        let v = run(rule("1r/s", 0, DelayMode::NoDelay), &[T0, T0 + 100]);
        assert_eq!(v[1], r(1));
        // 6r/m (rate 100), burst 0, second request at once: 1000 over -> 10 s
        let v = run(rule("6r/m", 0, DelayMode::NoDelay), &[T0, T0]);
        assert_eq!(v[1], r(10));
        // and it is admitted exactly then, not before
        let v = run(
            rule("6r/m", 0, DelayMode::NoDelay),
            &[T0, T0 + 9_999, T0 + 10_000],
        );
        assert_eq!(v[2], A);
    }

    #[test]
    fn several_zones_nginx_order() {
        // zone 0: 10r/s burst 5 (delayed); zone 1 (last): 100r/s burst 1 nodelay
        let z0 = rule("10r/s", 5, DelayMode::All);
        let z1 = rule("100r/s", 1, DelayMode::NoDelay);
        let rules = [z0, z1];
        let mut b = VecBuckets(vec![None, None]);
        // first request: both new; zone 0 created uncharged then charged from last = 0
        let d1 = check(&mut b, &rules, || T0);
        assert_eq!(d1.verdict, A);
        assert_eq!(
            b.0[0],
            Some(Bucket {
                excess: 0,
                last: T0
            })
        );
        assert_eq!(
            b.0[1],
            Some(Bucket {
                excess: 0,
                last: T0
            })
        );
        // second at once: zone 1 at 1000 (= burst, ok), zone 0 at 1000 -> delayed 100 ms by zone 0
        let d2 = check(&mut b, &rules, || T0);
        assert_eq!(d2.verdict, d(100));
        assert_eq!(d2.zone, Some(0));
        // third at once: zone 1 would be 2000 > 1000: refused by zone 1, zone 0 NOT charged
        let d3 = check(&mut b, &rules, || T0);
        assert_eq!(d3.verdict, r(1));
        assert_eq!(d3.zone, Some(1));
        assert_eq!(
            b.0[0],
            Some(Bucket {
                excess: 1000,
                last: T0
            })
        );
        // a refusal by the first zone leaves the last one untouched too
        let mut b = VecBuckets(vec![
            Some(Bucket {
                excess: 5000,
                last: T0,
            }),
            Some(Bucket {
                excess: 0,
                last: T0 - 10_000,
            }),
        ]);
        let d4 = check(&mut b, &rules, || T0);
        assert_eq!(d4.zone, Some(0));
        assert!(matches!(d4.verdict, Verdict::Refuse { .. }));
        assert_eq!(
            b.0[1],
            Some(Bucket {
                excess: 0,
                last: T0 - 10_000
            })
        );
    }

    #[test]
    fn several_zones_largest_delay_wins_ties_keep_the_last() {
        let z = rule("10r/s", 5, DelayMode::All);
        let rules = [z, z, z];
        let mut b = VecBuckets(vec![None; 3]);
        check(&mut b, &rules, || T0);
        let dd = check(&mut b, &rules, || T0);
        assert_eq!(dd.verdict, d(100));
        assert_eq!(dd.zone, Some(2), "equal delays: the last zone's stands");
        let dec = Decision::charged(&rules, &[3000, 1000, 2000]);
        assert_eq!((dec.verdict, dec.zone), (d(300), Some(0)));
    }

    #[test]
    fn headers_follow_the_draft() {
        let rate = parse_rate("10r/s").unwrap();
        let rl = Rule::new(rate, 5, DelayMode::NoDelay);
        let dec = Decision {
            verdict: A,
            zone: Some(0),
            excess: 2000,
        };
        assert_eq!(
            ratelimit_headers("per_ip", rate, &rl, &dec),
            (
                "\"per_ip\";q=10;w=1".to_owned(),
                "\"per_ip\";r=3;t=1".to_owned()
            )
        );
        let dec = Decision::refused(&[rl], 0, 6000);
        assert_eq!(
            ratelimit_headers("per_ip", rate, &rl, &dec).1,
            "\"per_ip\";r=0;t=1"
        );
        let rate = parse_rate("600r/m").unwrap();
        assert_eq!(
            ratelimit_headers("z", rate, &rl, &dec).0,
            "\"z\";q=600;w=60"
        );
    }

    #[test]
    fn idle_ttl_is_where_forgetting_changes_nothing() {
        let rl = rule("10r/s", 5, DelayMode::All);
        for excess in [0, 1, 999, 1000, 4321, 5000] {
            let ttl = rl.idle_ttl_ms(excess);
            let b = Bucket { excess, last: T0 };
            assert_eq!(drain(b, &rl, T0 + ttl).0, 0, "{excess}");
            assert!(drain(b, &rl, T0 + ttl - 1).0 > 0, "{excess}");
        }
    }
}

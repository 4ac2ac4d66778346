//! The pure parts of a watch loop: index bookkeeping, error backoff, the rate limit of
//! blocking queries that return without progress, and the per-request timeout.

use std::time::{Duration, Instant};

/// Consul's largest `wait`; longer ones are capped by the server.
pub const MAX_WAIT: Duration = Duration::from_secs(600);

/// Time allowed on top of `wait + wait/16` before a request is given up as timed out: the
/// server's own answer time, plus a slow network.
pub const REQUEST_MARGIN: Duration = Duration::from_secs(10);

/// What the watch does with the `X-Consul-Index` of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStep {
    /// The index to send next time (0 = a plain read that returns at once).
    pub next: u64,
    /// The index went backwards (a snapshot restore, a new cluster): the watch starts over.
    pub reset: bool,
    /// The answer brings no newer index than the one asked with: the query returned without
    /// progress (its `wait` ran out, or the server does not block).
    pub unchanged: bool,
}

/// Consul's rules for the index (`features/blocking`): an index lower than the last one means
/// the state was replaced, so the watch resets to 0 (a full read); an index of 0 is never
/// used for blocking (a query with `index=0` returns at once), so it counts as 1.
pub fn index_step(previous: u64, returned: u64) -> IndexStep {
    if returned < previous {
        return IndexStep {
            next: 0,
            reset: true,
            unchanged: false,
        };
    }
    let next = returned.max(1);
    IndexStep {
        next,
        reset: false,
        unchanged: previous != 0 && next == previous,
    }
}

/// The timeout of one request: the server may hold a blocking query for `wait` plus a random
/// jitter of up to `wait/16`; the margin covers the answer itself and the network.
pub fn request_timeout(wait: Duration) -> Duration {
    let wait = wait.min(MAX_WAIT);
    wait + wait / 16 + REQUEST_MARGIN
}

/// `wait` as Consul's query parameter (a Go duration): whole seconds when it is, else ms.
pub fn wait_param(wait: Duration) -> String {
    let wait = wait.min(MAX_WAIT);
    if wait.subsec_millis() == 0 {
        format!("{}s", wait.as_secs().max(1))
    } else {
        format!("{}ms", wait.as_millis())
    }
}

/// Exponential backoff after failed requests: 100 ms, doubling to 30 s; each delay is
/// jittered by ±50% (see [`jittered`]) so that many watches failing together (Consul
/// restarting) do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub const BASE: Duration = Duration::from_millis(100);
    pub const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff { next: Self::BASE }
    }

    /// The delay (before jitter) for this failure; the next one doubles, up to [`Self::MAX`].
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (d * 2).min(Self::MAX);
        d
    }

    /// A success: the next failure starts again at [`Self::BASE`].
    pub fn reset(&mut self) {
        self.next = Self::BASE;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// `delay` scaled by a factor in [0.5, 1.5), `unit` being a random number in [0, 1).
pub fn jittered(delay: Duration, unit: f64) -> Duration {
    delay.mul_f64(0.5 + unit.clamp(0.0, 1.0))
}

/// `delay` with a random ±50% jitter.
pub fn jitter(delay: Duration) -> Duration {
    jittered(delay, rand::random::<f64>())
}

/// The rate limit of a watch loop whose blocking queries come back without progress (an
/// index equal to the one sent): a server that does not block, or one that is broken, must
/// not turn the loop into a busy loop.
///
/// A token bucket of [`Self::BURST`] (2) tokens; a query that returned without progress
/// spends one. The bucket refills one token per `interval`, which starts at 1 s. When the
/// bucket is empty the loop waits for the next token, and each such wait doubles `interval`
/// (1, 2, 4, 8 s, then 15 s at most): a loop that keeps returning at once settles at one
/// query every 15 s. A loop that answers normally never waits: a query that blocked for
/// `wait` (≥ 1 s) refills the token it spends, and once the bucket is full again `interval`
/// is back to 1 s. A query that brings a new index refills the bucket at once.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    tokens: f64,
    interval: Duration,
    /// The time up to which tokens have been counted (may be in the future while a wait runs).
    counted_to: Instant,
}

impl RateLimiter {
    pub const BURST: f64 = 2.0;
    pub const FIRST_INTERVAL: Duration = Duration::from_secs(1);
    pub const MAX_INTERVAL: Duration = Duration::from_secs(15);

    pub fn new(now: Instant) -> RateLimiter {
        RateLimiter {
            tokens: Self::BURST,
            interval: Self::FIRST_INTERVAL,
            counted_to: now,
        }
    }

    /// A query made progress: the loop is doing useful work.
    pub fn progress(&mut self, now: Instant) {
        self.tokens = Self::BURST;
        self.interval = Self::FIRST_INTERVAL;
        self.counted_to = self.counted_to.max(now);
    }

    /// A query returned without progress: how long to wait before the next one.
    pub fn no_progress(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Duration::ZERO;
        }
        let wait = self.interval.mul_f64(1.0 - self.tokens);
        // The token that arrives at the end of the wait is spent by the next query.
        self.tokens = 0.0;
        self.counted_to = now + wait;
        self.interval = (self.interval * 2).min(Self::MAX_INTERVAL);
        wait
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.counted_to);
        self.counted_to = self.counted_to.max(now);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() / self.interval.as_secs_f64()).min(Self::BURST);
        if self.tokens >= Self::BURST {
            self.interval = Self::FIRST_INTERVAL;
        }
    }

    #[cfg(test)]
    fn interval(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_goes_backwards_resets_to_zero() {
        let s = index_step(100, 40);
        assert_eq!(
            s,
            IndexStep {
                next: 0,
                reset: true,
                unchanged: false
            }
        );
    }

    #[test]
    fn index_zero_counts_as_one() {
        assert_eq!(index_step(0, 0).next, 1);
        assert!(!index_step(0, 0).reset);
        // From 1, a 0 is lower: a reset, as the rule says.
        assert!(index_step(1, 0).reset);
    }

    #[test]
    fn index_forward_and_unchanged() {
        let s = index_step(10, 12);
        assert_eq!((s.next, s.reset, s.unchanged), (12, false, false));
        let s = index_step(12, 12);
        assert_eq!((s.next, s.reset, s.unchanged), (12, false, true));
        // The first read (index 0) is never "without progress".
        assert!(!index_step(0, 5).unchanged);
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new();
        let seq: Vec<u64> = (0..12).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(&seq[..6], &[100, 200, 400, 800, 1600, 3200]);
        assert_eq!(seq[9], 30_000);
        assert_eq!(seq[11], 30_000);
        b.reset();
        assert_eq!(b.next_delay(), Backoff::BASE);
    }

    #[test]
    fn jitter_stays_within_half_either_side() {
        let d = Duration::from_secs(2);
        assert_eq!(jittered(d, 0.0), Duration::from_secs(1));
        assert!(jittered(d, 0.999_999) < Duration::from_secs(3));
        for _ in 0..1000 {
            let j = jitter(d);
            assert!(
                j >= Duration::from_secs(1) && j < Duration::from_secs(3),
                "{j:?}"
            );
        }
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_slows_to_fifteen_seconds() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(t0);
        // Burst of 2 at once.
        assert_eq!(r.no_progress(t0), Duration::ZERO);
        assert_eq!(r.no_progress(t0), Duration::ZERO);
        // Then waits that grow 1, 2, 4, 8, 15, 15 s for a loop that keeps returning at once.
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let w = r.no_progress(now);
            waits.push(w.as_secs());
            now += w; // the next query returns the moment it is made
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 15, 15, 15]);
        assert_eq!(r.interval(), RateLimiter::MAX_INTERVAL);
    }

    #[test]
    fn rate_limiter_does_not_slow_a_loop_that_blocks() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(t0);
        let mut now = t0;
        for _ in 0..100 {
            now += Duration::from_secs(1); // each query blocked for its 1 s wait
            assert_eq!(r.no_progress(now), Duration::ZERO);
        }
    }

    #[test]
    fn rate_limiter_recovers_after_calm_and_on_progress() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(t0);
        r.no_progress(t0);
        r.no_progress(t0);
        let w = r.no_progress(t0);
        assert_eq!(w, Duration::from_secs(1));
        let now = t0 + w;
        assert_eq!(r.no_progress(now), Duration::from_secs(2));
        // Progress refills the bucket and the interval.
        r.progress(now + Duration::from_secs(2));
        assert_eq!(r.interval(), RateLimiter::FIRST_INTERVAL);
        let now = now + Duration::from_secs(2);
        assert_eq!(r.no_progress(now), Duration::ZERO);
        assert_eq!(r.no_progress(now), Duration::ZERO);
        // A long calm (e.g. a query that blocked 5 min) refills it too.
        let _ = r.no_progress(now);
        let later = now + Duration::from_secs(300);
        assert_eq!(r.no_progress(later), Duration::ZERO);
        assert_eq!(r.interval(), RateLimiter::FIRST_INTERVAL);
    }

    #[test]
    fn request_timeout_covers_wait_and_server_jitter() {
        let wait = Duration::from_secs(300);
        let t = request_timeout(wait);
        assert!(t > wait + wait / 16);
        assert_eq!(t, wait + wait / 16 + REQUEST_MARGIN);
        // Capped like the server caps wait.
        assert_eq!(
            request_timeout(Duration::from_secs(3600)),
            request_timeout(MAX_WAIT)
        );
    }

    #[test]
    fn wait_param_is_a_go_duration() {
        assert_eq!(wait_param(Duration::from_secs(300)), "300s");
        assert_eq!(wait_param(Duration::from_millis(1500)), "1500ms");
        assert_eq!(wait_param(Duration::from_secs(7200)), "600s");
    }
}

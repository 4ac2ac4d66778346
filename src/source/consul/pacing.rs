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

/// The state of one blocking-query loop, by Consul's rules: the index to ask with (none
/// before the first answer and after a failure — a plain read answers at once, so it tells at
/// once whether Consul is back and catches up on what was missed), the index reset, the rate
/// limit of answers without progress, the backoff after errors, and logs that say a run of
/// identical failures once. The source's watches and the Consul leaf watches run it.
pub struct BlockingQuery {
    endpoint: String,
    index: u64,
    backoff: Backoff,
    limiter: RateLimiter,
    failing: bool,
    logged_error: Option<String>,
}

impl BlockingQuery {
    /// `endpoint` names the query in logs.
    pub fn new(endpoint: &str) -> BlockingQuery {
        BlockingQuery {
            endpoint: endpoint.to_owned(),
            index: 0,
            backoff: Backoff::new(),
            limiter: RateLimiter::new(Instant::now()),
            failing: false,
            logged_error: None,
        }
    }

    /// The index to block on, if any.
    pub fn index(&self) -> Option<u64> {
        (!self.failing && self.index != 0).then_some(self.index)
    }

    /// Records an answer carrying `returned` as `X-Consul-Index` (none: the endpoint does not
    /// block): the next index, the end of a run of failures. Returns the index step.
    pub fn answered(&mut self, returned: Option<u64>) -> Option<IndexStep> {
        let step = returned.map(|r| index_step(self.index, r));
        if step.is_some_and(|s| s.reset) {
            tracing::info!(
                endpoint = %self.endpoint,
                previous = self.index,
                returned,
                "X-Consul-Index went backwards; reading from index 0 again"
            );
        }
        if self.logged_error.take().is_some() {
            tracing::info!(endpoint = %self.endpoint, "Consul answers again");
        }
        self.failing = false;
        self.backoff.reset();
        self.index = step.map_or(0, |s| s.next);
        step
    }

    /// The index the next query asks with (0: a plain read).
    pub fn next_index(&self) -> u64 {
        self.index
    }

    /// How long to wait after an answer: nothing after progress, the rate limit's pause after
    /// an answer without progress, `unindexed` after an answer without an index.
    pub fn pause(&mut self, step: Option<IndexStep>, unindexed: Duration) -> Duration {
        let now = Instant::now();
        match step {
            None => unindexed,
            Some(s) if s.unchanged => self.limiter.no_progress(now),
            Some(_) => {
                self.limiter.progress(now);
                Duration::ZERO
            }
        }
    }

    /// Records a failure, logged once per run of identical ones (`kept` says what keeps
    /// serving meanwhile). Returns whether it starts a run of failures, and the jittered
    /// backoff to wait before the next attempt.
    pub fn failed(&mut self, error: &super::api::FetchError, kept: &str) -> (bool, Duration) {
        let text = error.to_string();
        if self.logged_error.as_deref() != Some(text.as_str()) {
            if error.is_forbidden() {
                tracing::error!("{text}");
            } else {
                tracing::warn!("{text}; retrying, {kept}");
            }
        }
        self.logged_error = Some(text);
        let first = !self.failing;
        self.failing = true;
        (first, jitter(self.backoff.next_delay()))
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

    #[test]
    fn blocking_query_follows_the_index_and_failures() {
        use super::super::api::FetchError;
        let mut q = BlockingQuery::new("/v1/catalog/services");
        assert_eq!(q.index(), None, "the first read does not block");
        let step = q.answered(Some(5)).unwrap();
        assert!(!step.reset && !step.unchanged);
        assert_eq!(q.index(), Some(5));
        assert_eq!(q.pause(Some(step), Duration::from_secs(9)), Duration::ZERO);
        // No progress: the rate limit allows a burst, then pauses.
        let same = q.answered(Some(5)).unwrap();
        assert!(same.unchanged);
        // An index going backwards: read from 0 again.
        let back = q.answered(Some(3)).unwrap();
        assert!(back.reset);
        assert_eq!(q.index(), None);
        assert_eq!(q.next_index(), 0);
        q.answered(Some(7));
        // A failure: the next read is plain, the first of a run says so, backoff grows.
        let e = FetchError::Transport {
            endpoint: "/v1/catalog/services".into(),
            detail: "connection refused".into(),
        };
        let (first, d1) = q.failed(&e, "the last good data is kept");
        assert!(first);
        assert_eq!(q.index(), None);
        let (again, _) = q.failed(&e, "the last good data is kept");
        assert!(!again);
        let (_, d3) = q.failed(&e, "the last good data is kept");
        assert!(d3 > d1 / 2, "{d1:?} then {d3:?}");
        // An answer ends the run and blocks on its index again.
        q.answered(Some(8));
        assert_eq!(q.index(), Some(8));
        assert_eq!(
            q.pause(None, Duration::from_secs(9)),
            Duration::from_secs(9)
        );
    }
}

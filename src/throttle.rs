//! Rate limits for log lines that an outsider can repeat at will (failed
//! logins, refused peers, failing accepts): the first line is written, the
//! next ones at most once per interval, each saying how many were held back.
//! Metrics still count every one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One kind of repeated line.
pub struct Throttle {
    every: Duration,
    started: Instant,
    /// When the next line may be written, in milliseconds since `started`.
    next_ms: AtomicU64,
    held: AtomicU64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            started: Instant::now(),
            next_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were
    /// held back since the last; `None` (and one more held) otherwise.
    pub fn check(&self) -> Option<u64> {
        let now = self.started.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        let due = now >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now + self.every.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if due {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Whether a line may be written now.
    pub fn allow(&self) -> bool {
        self.check().is_some()
    }
}

/// The node's throttled lines, one interval for all (10 s).
pub struct Throttles {
    pub accept_failed: Throttle,
    pub client_refused: Throttle,
    pub peer_refused: Throttle,
}

impl Default for Throttles {
    fn default() -> Self {
        let every = Duration::from_secs(10);
        Self {
            accept_failed: Throttle::new(Duration::from_secs(1)),
            client_refused: Throttle::new(every),
            peer_refused: Throttle::new(every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_goes_then_one_per_interval_with_the_count_held() {
        let t = Throttle::new(Duration::from_millis(200));
        assert_eq!(t.check(), Some(0));
        for _ in 0..5 {
            assert_eq!(t.check(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(t.check(), Some(5));
        assert_eq!(t.check(), None);
    }
}

//! Rate limiting for repeated warnings, so a client that keeps sending
//! garbage cannot flood the log.

use std::cell::Cell;
use std::time::{Duration, Instant};

/// Allows up to `max_per_window` log lines per window and counts the rest.
pub struct LogLimit {
    window: Duration,
    max_per_window: u32,
    window_start: Cell<Option<Instant>>,
    logged: Cell<u32>,
    suppressed: Cell<u64>,
}

impl LogLimit {
    pub const fn new(window: Duration, max_per_window: u32) -> LogLimit {
        LogLimit {
            window,
            max_per_window,
            window_start: Cell::new(None),
            logged: Cell::new(0),
            suppressed: Cell::new(0),
        }
    }

    /// Returns Some(lines suppressed since the last allowed one) when this
    /// line may be logged, None when it should be dropped.
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let expired = self.window_start.get().is_none_or(|start| now.duration_since(start) >= self.window);
        if expired {
            self.window_start.set(Some(now));
            self.logged.set(0);
        }
        if self.logged.get() >= self.max_per_window {
            self.suppressed.set(self.suppressed.get() + 1);
            return None;
        }
        self.logged.set(self.logged.get() + 1);
        Some(self.suppressed.replace(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_past_the_limit_are_counted() {
        let limit = LogLimit::new(Duration::from_secs(1), 2);
        let start = Instant::now();
        assert_eq!(limit.allow(start), Some(0));
        assert_eq!(limit.allow(start), Some(0));
        assert_eq!(limit.allow(start), None);
        assert_eq!(limit.allow(start), None);
        assert_eq!(limit.allow(start + Duration::from_secs(2)), Some(2));
    }
}

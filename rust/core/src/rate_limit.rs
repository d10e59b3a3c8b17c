//! Rate limits for warnings that can repeat at the rate of commands (a misconfiguration seen
//! by every write): the first goes out at once, then at most one per interval, each counting
//! what was held back since the previous one.

use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// At most one warning per `every`; the ones in between are counted.
pub struct WarnLimit {
    every: Duration,
    /// When the last warning went out, and how many were held back since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl WarnLimit {
    /// A limit of one warning per `every`.
    pub fn new(every: Duration) -> Self {
        WarnLimit { every, state: Mutex::new((None, 0)) }
    }

    /// `Some(held_back)` when a warning may go out now (`held_back`: how many were held back
    /// since the previous one); `None` when this one is to be held back (and counted).
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock();
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let held_back = std::mem::take(&mut state.1);
                state.0 = Some(now);
                Some(held_back)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_goes_out_then_one_per_interval_counting_the_rest() {
        let limit = WarnLimit::new(Duration::from_millis(200));
        assert_eq!(limit.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(limit.admit(), None);
        }
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.admit(), Some(5));
        assert_eq!(limit.admit(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.admit(), Some(1));
    }
}

//! The receiver's sliding window over packet counters (seed 003 §3.2: a
//! window of 2048, counters outside it or seen before are refused). A
//! bitmap of the last [`WINDOW`] counters below the highest accepted one,
//! as RFC 6479 describes for IPsec.

/// Counters tracked below the highest accepted one.
pub const WINDOW: u64 = 2048;
const WORDS: usize = (WINDOW / 64) as usize;

/// Which counters of a session were accepted.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted so far (meaningful once `any`).
    top: u64,
    any: bool,
    /// Bit `c % WINDOW` set: counter `c` (within the window) was seen.
    bits: [u64; WORDS],
}

/// Why a counter is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replay {
    /// Seen before.
    Duplicate,
    /// Older than the window.
    TooOld,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            top: 0,
            any: false,
            bits: [0; WORDS],
        }
    }
}

impl ReplayWindow {
    /// Whether `counter` would be accepted (without recording it: check,
    /// authenticate the packet, then [`ReplayWindow::accept`]).
    pub fn check(&self, counter: u64) -> Result<(), Replay> {
        if !self.any || counter > self.top {
            return Ok(());
        }
        if self.top - counter >= WINDOW {
            return Err(Replay::TooOld);
        }
        if self.bit(counter) {
            return Err(Replay::Duplicate);
        }
        Ok(())
    }

    /// Record `counter` as received (after its tag verified).
    pub fn accept(&mut self, counter: u64) -> Result<(), Replay> {
        self.check(counter)?;
        if !self.any {
            self.any = true;
            self.top = counter;
        } else if counter > self.top {
            // Clear the bits of the counters the window slides past.
            let gap = counter - self.top;
            if gap >= WINDOW {
                self.bits = [0; WORDS];
            } else {
                for c in self.top + 1..counter {
                    self.clear(c);
                }
            }
            self.top = counter;
        }
        self.set(counter);
        Ok(())
    }

    fn slot(c: u64) -> (usize, u64) {
        let i = c % WINDOW;
        ((i / 64) as usize, 1 << (i % 64))
    }

    fn bit(&self, c: u64) -> bool {
        let (w, m) = Self::slot(c);
        self.bits[w] & m != 0
    }

    fn set(&mut self, c: u64) {
        let (w, m) = Self::slot(c);
        self.bits[w] |= m;
    }

    fn clear(&mut self, c: u64) {
        let (w, m) = Self::slot(c);
        self.bits[w] &= !m;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_out_of_order_duplicates_and_old() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.accept(0), Ok(()));
        assert_eq!(w.accept(0), Err(Replay::Duplicate));
        assert_eq!(w.accept(5), Ok(()));
        // Reordered within the window: accepted once.
        assert_eq!(w.accept(3), Ok(()));
        assert_eq!(w.accept(3), Err(Replay::Duplicate));
        assert_eq!(w.accept(4), Ok(()));
        // A jump; what fell out of the window is too old, what is inside
        // and unseen is fine.
        assert_eq!(w.accept(5 + WINDOW), Ok(()));
        assert_eq!(w.check(5), Err(Replay::TooOld));
        assert_eq!(w.check(6), Ok(()));
        assert_eq!(w.accept(6), Ok(()));
        assert_eq!(w.accept(6), Err(Replay::Duplicate));
        // A jump past the whole window forgets everything below it.
        assert_eq!(w.accept(10 * WINDOW), Ok(()));
        assert_eq!(w.check(9 * WINDOW), Err(Replay::TooOld));
        assert_eq!(w.check(10 * WINDOW - 1), Ok(()));
        assert_eq!(w.check(10 * WINDOW), Err(Replay::Duplicate));
    }

    #[test]
    fn matches_a_set_model() {
        // Against the obvious model: a set of seen counters and the top.
        let mut w = ReplayWindow::default();
        let mut seen = std::collections::HashSet::new();
        let mut top: Option<u64> = None;
        let mut x: u64 = 12345;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let base = top.unwrap_or(0);
            let c = (base + (x % 64)).saturating_sub((x >> 8) % 2600);
            let want = match top {
                Some(t) if c <= t && t - c >= WINDOW => Err(Replay::TooOld),
                _ if seen.contains(&c) => Err(Replay::Duplicate),
                _ => Ok(()),
            };
            assert_eq!(w.accept(c), want, "counter {c}, top {top:?}");
            if want.is_ok() {
                seen.insert(c);
                top = Some(top.map_or(c, |t| t.max(c)));
            }
        }
    }
}

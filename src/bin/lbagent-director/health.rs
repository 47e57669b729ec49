//! Rise and fall: a target's verdict changes only after `rise` successful checks in a row
//! (down to up) or `fall` failed checks in a row (up to down), like keepalived's retries and
//! HAProxy's rise/fall. A check succeeds when the agent says the server should receive new
//! connections (state up, weight above 0); every other answer and every failure to answer
//! counts against it.

/// The verdict of one target and the streak that may change it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    up: bool,
    /// Consecutive checks that disagree with `up`.
    streak: u32,
}

impl Health {
    /// Starts at `up`, with no streak.
    pub fn new(up: bool) -> Health {
        Health { up, streak: 0 }
    }

    /// The verdict: true while the real server should receive traffic.
    pub fn is_up(self) -> bool {
        self.up
    }

    /// Sets the verdict at once (what the agent itself says about the server needs no
    /// confirmation). Returns 1 when the verdict flips, like `record`.
    pub fn set(&mut self, up: bool) -> Option<u32> {
        self.streak = 0;
        if self.up == up {
            return None;
        }
        self.up = up;
        Some(1)
    }

    /// Records one check. Returns the number of checks that made the verdict flip when it
    /// does (then `is_up` has changed), `None` otherwise.
    pub fn record(&mut self, success: bool, rise: u32, fall: u32) -> Option<u32> {
        if success == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed {
            return None;
        }
        let checks = self.streak;
        self.up = !self.up;
        self.streak = 0;
        Some(checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut h = Health::new(false);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None, "a failure breaks the streak");
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(2));
        assert!(h.is_up());
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), None);
        for _ in 0..2 {
            assert_eq!(h.record(false, 2, 3), None);
        }
        assert_eq!(h.record(false, 2, 3), Some(3));
        assert!(!h.is_up());
        // rise = fall = 1: every check decides.
        assert_eq!(h.record(true, 1, 1), Some(1));
        assert_eq!(h.record(false, 1, 1), Some(1));
        // The agent's own word is taken at once, and ends any streak.
        let mut h = Health::new(true);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.set(false), Some(1));
        assert_eq!(h.set(false), None);
        assert_eq!(h.set(true), Some(1));
        assert!(h.is_up());
    }
}

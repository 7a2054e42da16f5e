//! Which input a task takes next (spec §4).
//!
//! The task takes the buffered head with the smallest event time; ties go
//! to rates, then deals, then metering (then log order, which each input
//! keeps by itself). A head with no usable time (an undecodable record
//! included) is taken as soon as it is a head. The task waits while an
//! input has no head unless that input is known to be caught up to its end.

use crate::events::Topic;
use crate::units::Millis;

/// What one input offers the merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// A record is buffered; `None` when its time cannot be read.
    Ready(Option<Millis>),
    /// Nothing buffered, and the input is at its end.
    CaughtUp,
    /// Nothing buffered yet; more may come.
    Pending,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    Take(Topic),
    /// An input that is not caught up has no head yet.
    Wait,
    /// Every input is caught up.
    Idle,
}

/// Heads are indexed by [`Topic::index`].
pub fn choose(heads: [Head; 3]) -> Choice {
    for topic in Topic::ALL {
        if heads[topic.index()] == Head::Ready(None) {
            return Choice::Take(topic);
        }
    }
    if heads.contains(&Head::Pending) {
        return Choice::Wait;
    }
    let mut best: Option<(Millis, Topic)> = None;
    for topic in Topic::ALL {
        if let Head::Ready(Some(time)) = heads[topic.index()] {
            // Strict: on equal times the earlier topic (rates < deals < metering) stays.
            if best.is_none_or(|(best_time, _)| time < best_time) {
                best = Some((time, topic));
            }
        }
    }
    best.map_or(Choice::Idle, |(_, topic)| Choice::Take(topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Head::*;

    #[test]
    fn smallest_time_wins_and_ties_go_rates_deals_metering() {
        assert_eq!(choose([Ready(Some(5)), Ready(Some(3)), Ready(Some(4))]), Choice::Take(Topic::Deals));
        assert_eq!(choose([Ready(Some(3)), Ready(Some(3)), Ready(Some(3))]), Choice::Take(Topic::Rates));
        assert_eq!(choose([CaughtUp, Ready(Some(3)), Ready(Some(3))]), Choice::Take(Topic::Deals));
        assert_eq!(choose([CaughtUp, CaughtUp, Ready(Some(9))]), Choice::Take(Topic::Metering));
    }

    #[test]
    fn a_head_without_time_is_taken_at_once() {
        assert_eq!(choose([Ready(Some(1)), Pending, Ready(None)]), Choice::Take(Topic::Metering));
        assert_eq!(choose([Ready(Some(1)), Ready(None), Ready(None)]), Choice::Take(Topic::Deals));
    }

    #[test]
    fn waits_for_inputs_that_are_not_caught_up() {
        assert_eq!(choose([Ready(Some(1)), Pending, Ready(Some(0))]), Choice::Wait);
        assert_eq!(choose([CaughtUp, CaughtUp, CaughtUp]), Choice::Idle);
    }
}

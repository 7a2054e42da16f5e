//! The input topics' Kafka names and the fold's [`Topic`]s, both ways, in
//! one place.

use crate::config::Topics;
use crate::events::Topic;
use crate::fold::TopicNames;

/// The names the fold writes into output records: the Kafka topics'.
pub fn input_names(topics: &Topics) -> TopicNames {
    TopicNames { rates: topics.rates.clone(), deals: topics.deals.clone(), metering: topics.metering.clone() }
}

/// The Kafka name of an input.
pub fn name_of(topics: &Topics, topic: Topic) -> &str {
    match topic {
        Topic::Rates => &topics.rates,
        Topic::Deals => &topics.deals,
        Topic::Metering => &topics.metering,
    }
}

/// The input a Kafka topic name is, if any.
pub fn input_of(topics: &Topics, name: &str) -> Option<Topic> {
    Topic::ALL.into_iter().find(|topic| name_of(topics, *topic) == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_both_ways() {
        let topics = crate::config::for_tests().topics;
        for topic in Topic::ALL {
            assert_eq!(input_of(&topics, name_of(&topics, topic)), Some(topic));
            assert_eq!(input_names(&topics).name(topic), name_of(&topics, topic));
        }
        assert_eq!(input_of(&topics, &topics.journal), None);
    }
}

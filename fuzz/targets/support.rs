//! Shared by the targets: the example events of `schemas/examples`.

use gpuledger::events::Topic;

/// (schema name, topic, event) for each example.
pub fn examples() -> Vec<(String, Topic, serde_json::Value)> {
    let files: [(&str, Topic, &str); 8] = [
        ("rate_published", Topic::Rates, include_str!("../../schemas/examples/rate_published.json")),
        ("deal_signed", Topic::Deals, include_str!("../../schemas/examples/deal_signed.json")),
        ("credit_granted", Topic::Deals, include_str!("../../schemas/examples/credit_granted.json")),
        ("grant_extended", Topic::Deals, include_str!("../../schemas/examples/grant_extended.json")),
        ("grant_revoked", Topic::Deals, include_str!("../../schemas/examples/grant_revoked.json")),
        ("deal_cancelled", Topic::Deals, include_str!("../../schemas/examples/deal_cancelled.json")),
        ("gpu_usage", Topic::Metering, include_str!("../../schemas/examples/gpu_usage.json")),
        ("clock_tick", Topic::Metering, include_str!("../../schemas/examples/clock_tick.json")),
    ];
    files
        .into_iter()
        .map(|(name, topic, text)| (name.to_owned(), topic, serde_json::from_str(text).expect("example is JSON")))
        .collect()
}

//! `GPULEDGER_<SECTION>__<KEY>` environment variables, layered over the file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;

use super::RawConfig;

/// `GPULEDGER_<SECTION>__<KEY>` variables onto the raw config. Unknown
/// `GPULEDGER_` variables are errors, like unknown keys in the file.
pub(super) fn apply_environment(raw: &mut RawConfig, environment: &BTreeMap<String, String>) -> crate::Result<()> {
    let mut problems = Vec::new();
    for (name, value) in environment {
        let Some(path) = name.strip_prefix("GPULEDGER_") else { continue };
        if path == "LOG" {
            continue;
        }
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        let text = value.clone();
        let value = Some(text.clone());
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        match parts.as_slice() {
            ["kafka", "bootstrap_servers"] => raw.kafka.bootstrap_servers = value,
            ["kafka", "group_id"] => raw.kafka.group_id = value,
            ["kafka", "transactional_id_prefix"] => raw.kafka.transactional_id_prefix = value,
            ["kafka", "properties", property] => {
                raw.kafka.properties.insert(property.replace('_', "."), text);
            }
            ["processor", "state_dir"] => raw.processor.state_dir = value.map(PathBuf::from),
            ["processor", "commit_interval"] => raw.processor.commit_interval = value,
            ["processor", "output_format"] => raw.processor.output_format = value,
            ["processor", "inject_panic_at"] => raw.processor.inject_panic_at = value,
            ["processor", "inject_refold_write_failure"] => match text.parse() {
                Ok(flag) => raw.processor.inject_refold_write_failure = Some(flag),
                Err(_) => problems.push(format!("{name} must be true or false, not {text:?}")),
            },
            ["processor", "inject_abort_every"] => match text.parse() {
                Ok(every) => raw.processor.inject_abort_every = Some(every),
                Err(_) => problems.push(format!("{name} must be a whole number, not {text:?}")),
            },
            ["ledger", "dedup_window"] => raw.ledger.dedup_window = value,
            ["ledger", "expiry_grace"] => raw.ledger.expiry_grace = value,
            ["ledger", "close_grace"] => raw.ledger.close_grace = value,
            ["ledger", "max_future"] => raw.ledger.max_future = value,
            ["ledger", "earliest_time"] => raw.ledger.earliest_time = value,
            ["ledger", "latest_time"] => raw.ledger.latest_time = value,
            ["ledger", "max_tick_jump"] => raw.ledger.max_tick_jump = value,
            ["ledger", "tick_sources"] => {
                raw.ledger.tick_sources = Some(
                    text.split(',').map(str::trim).filter(|source| !source.is_empty()).map(str::to_owned).collect(),
                )
            }
            ["limits", limit] => {
                let Ok(number) = text.parse::<u64>() else {
                    problems.push(format!("{name} must be a whole number, not {text:?}"));
                    continue;
                };
                match *limit {
                    "max_record_bytes" => raw.limits.max_record_bytes = Some(number),
                    "max_json_depth" => raw.limits.max_json_depth = Some(number),
                    "max_string_bytes" => raw.limits.max_string_bytes = Some(number),
                    "dead_letter_value_bytes" => raw.limits.dead_letter_value_bytes = Some(number),
                    _ => problems.push(format!("{name} is not a gpuledger setting")),
                }
            }
            ["clock", "tick_interval"] => raw.clock.tick_interval = value,
            ["log", "format"] => raw.log.format = value,
            ["http", "listen"] => raw.http.listen = value,
            ["http", "advertised_url"] => raw.http.advertised_url = value,
            ["http", "token"] => raw.http.token = value,
            ["http", "token_file"] => raw.http.token_file = value.map(PathBuf::from),
            ["checkpoints", "store"] => raw.checkpoints.store = value,
            ["checkpoints", "interval"] => raw.checkpoints.interval = value,
            ["checkpoints", "interval_records"] => match text.parse() {
                Ok(records) => raw.checkpoints.interval_records = Some(records),
                Err(_) => problems.push(format!("{name} must be a whole number, not {text:?}")),
            },
            ["checkpoints", "keep"] => match text.parse() {
                Ok(keep) => raw.checkpoints.keep = Some(keep),
                Err(_) => problems.push(format!("{name} must be a whole number, not {text:?}")),
            },
            ["checkpoints", "options", option] => {
                raw.checkpoints.options.insert((*option).to_owned(), text);
            }
            ["schemas", "ids", schema] => match text.parse() {
                Ok(id) => {
                    raw.schemas.ids.insert((*schema).to_owned(), id);
                }
                Err(_) => problems.push(format!("{name} must be a whole number, not {text:?}")),
            },
            ["topics", topic] => {
                let slot = match *topic {
                    "rates" => &mut raw.topics.rates,
                    "deals" => &mut raw.topics.deals,
                    "metering" => &mut raw.topics.metering,
                    "usage_rated" => &mut raw.topics.usage_rated,
                    "journal" => &mut raw.topics.journal,
                    "balances" => &mut raw.topics.balances,
                    "statements" => &mut raw.topics.statements,
                    "alerts" => &mut raw.topics.alerts,
                    "dead_letter" => &mut raw.topics.dead_letter,
                    "progress" => &mut raw.topics.progress,
                    "members" => &mut raw.topics.members,
                    _ => {
                        problems.push(format!("{name}: no topic {topic:?}"));
                        continue;
                    }
                };
                *slot = value;
            }
            _ => problems.push(format!("{name} is not a gpuledger setting")),
        }
    }
    if !problems.is_empty() {
        bail!("invalid environment:\n  - {}", problems.join("\n  - "));
    }
    Ok(())
}

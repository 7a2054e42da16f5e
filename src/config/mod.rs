//! Configuration of the Kafka-facing commands: a TOML file, overridden by
//! environment variables, overridden by command-line flags.
//!
//! Precedence (lowest first): built-in defaults < `--config FILE` <
//! `GPULEDGER_<SECTION>__<KEY>` environment variables (for example
//! `GPULEDGER_KAFKA__BOOTSTRAP_SERVERS`, `GPULEDGER_PROCESSOR__COMMIT_INTERVAL`,
//! `GPULEDGER_KAFKA__PROPERTIES__SASL_PASSWORD` for the librdkafka property
//! `sasl.password`) < flags such as `--bootstrap-servers`.
//!
//! Every problem is reported at once, before anything connects; unknown keys
//! are errors (a typo must not silently fall back to a default). Values of
//! librdkafka properties whose names suggest secrets are never printed.

mod checkpoints;
mod environment;
mod http;
mod raw;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

pub use self::checkpoints::CheckpointConfig;
use self::environment::apply_environment;
pub use self::http::HttpConfig;
pub use self::raw::*;

use crate::fold::{FoldConfig, EARLIEST_REPRESENTABLE_TIME, LATEST_REPRESENTABLE_TIME};
use crate::units::{Millis, DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};

/// Topic names, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    pub rates: String,
    pub deals: String,
    pub metering: String,
    pub usage_rated: String,
    pub journal: String,
    pub balances: String,
    pub statements: String,
    pub alerts: String,
    pub dead_letter: String,
    pub progress: String,
    /// Instances' HTTP addresses and tasks, for query routing.
    pub members: String,
}

impl Topics {
    pub fn outputs(&self) -> [(&'static str, &str); 7] {
        [
            ("usage-rated", &self.usage_rated),
            ("journal", &self.journal),
            ("balances", &self.balances),
            ("statements", &self.statements),
            ("alerts", &self.alerts),
            ("dead-letter", &self.dead_letter),
            ("progress", &self.progress),
        ]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    /// Avro single-object encoding (spec fingerprint).
    Avro,
    /// Confluent wire format: a zero byte, the schema's id, the datum.
    AvroConfluent,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub bootstrap_servers: String,
    pub group_id: String,
    pub transactional_id_prefix: String,
    pub properties: BTreeMap<String, String>,
    pub topics: Topics,
    pub state_dir: PathBuf,
    pub commit_interval: Millis,
    pub output_format: OutputFormat,
    /// Confluent schema ids of every input and output schema.
    pub schema_ids: BTreeMap<String, u32>,
    pub inject_abort_every: u64,
    pub inject_refold_write_failure: bool,
    pub fold: FoldConfig,
    pub tick_interval: Option<Millis>,
    /// Metrics, health and queries over HTTP (`[http]`).
    pub http: HttpConfig,
    /// Checkpoints of task state in an object store (`[checkpoints]`).
    pub checkpoints: CheckpointConfig,
}

/// Flags that override the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub bootstrap_servers: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub http_listen: Option<String>,
    /// `[checkpoints] store` (`--store`).
    pub checkpoint_store: Option<String>,
    /// The command does not talk to Kafka: `kafka.bootstrap_servers` may
    /// be left unset.
    pub without_kafka: bool,
}

/// `90s`, `5m`, `72h`, `35d`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Millis, String> {
    let split = text.find(|character: char| !character.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 =
        number.parse().map_err(|_| format!("{text:?} is not a duration like 250ms, 90s, 5m, 72h or 35d"))?;
    let unit_ms = match unit {
        "ms" => 1,
        "s" => SECOND_MS,
        "m" => MINUTE_MS,
        "h" => HOUR_MS,
        "d" => DAY_MS,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m, h or d")),
    };
    number.checked_mul(unit_ms).ok_or_else(|| format!("{text:?} is too long"))
}

/// `TOPIC:OFFSET` with TOPIC one of `rates`, `deals`, `metering`.
pub fn parse_record_position(text: &str) -> Result<(crate::events::Topic, i64), String> {
    use crate::events::Topic;
    let (topic, offset) = text.split_once(':').ok_or_else(|| format!("{text:?} is not TOPIC:OFFSET"))?;
    let topic = Topic::ALL
        .into_iter()
        .find(|candidate| candidate.name() == topic)
        .ok_or_else(|| format!("{topic:?} is not rates, deals or metering"))?;
    let offset = offset.parse().map_err(|_| format!("{offset:?} is not an offset"))?;
    Ok((topic, offset))
}

/// Whether a librdkafka property holds a secret (its value is never shown):
/// passwords, keys, tokens, and the configs that embed them
/// (`sasl.oauthbearer.config` carries a client secret, `sasl.jaas.config` a
/// password).
pub fn is_secret(property: &str) -> bool {
    ["password", "secret", "key", "token", "credentials", "oauthbearer.config", "jaas"]
        .iter()
        .any(|word| property.contains(word))
}

/// Values of secret properties of every configuration loaded, so text
/// that may echo them (a librdkafka error names the value it refused) is
/// shown through [`redact`].
static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

fn remember_secret(value: &str) {
    let mut secrets = SECRETS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // The whole value, and each of its parts (`clientSecret=abc scope=x`).
    let parts = value.split(|c: char| c.is_whitespace() || c == ',' || c == '=' || c == ';' || c == '"');
    for part in std::iter::once(value).chain(parts) {
        if part.len() >= 4 && !secrets.iter().any(|known| known == part) {
            secrets.push(part.to_owned());
        }
    }
    // Longest first, so a part never leaves the rest of a longer value.
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
}

/// `text` with every secret value of the loaded configurations replaced
/// by `***`.
pub fn redact(text: &str) -> String {
    let secrets = SECRETS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut text = text.to_owned();
    for secret in secrets.iter() {
        if text.contains(secret.as_str()) {
            text = text.replace(secret.as_str(), "***");
        }
    }
    text
}

impl Config {
    /// Loads the layers: the file (if any), the environment, the flags.
    pub fn load(
        file: Option<&Path>,
        environment: &BTreeMap<String, String>,
        overrides: &Overrides,
    ) -> crate::Result<Config> {
        let mut raw = match file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str::<RawConfig>(&text).with_context(|| format!("config file {}", path.display()))?
            }
            None => RawConfig::default(),
        };
        apply_environment(&mut raw, environment)?;
        if let Some(servers) = &overrides.bootstrap_servers {
            raw.kafka.bootstrap_servers = Some(servers.clone());
        }
        if let Some(listen) = &overrides.http_listen {
            raw.http.listen = Some(listen.clone());
        }
        if let Some(dir) = &overrides.state_dir {
            raw.processor.state_dir = Some(dir.clone());
        }
        if let Some(store) = &overrides.checkpoint_store {
            raw.checkpoints.store = Some(store.clone());
        }
        if overrides.without_kafka && raw.kafka.bootstrap_servers.is_none() {
            raw.kafka.bootstrap_servers = Some("(not used)".to_owned());
        }
        Config::validate(raw)
    }

    /// Checks every setting and reports all problems together.
    pub fn validate(raw: RawConfig) -> crate::Result<Config> {
        let mut problems = Vec::new();
        let mut duration = |name: &str, value: Option<&String>, default: Millis, minimum: Millis| -> Millis {
            match value.map(|text| parse_duration(text)) {
                None => default,
                Some(Ok(millis)) if millis >= minimum => millis,
                Some(Ok(_)) => {
                    problems.push(format!("{name} must be at least {minimum} ms"));
                    default
                }
                Some(Err(error)) => {
                    problems.push(format!("{name}: {error}"));
                    default
                }
            }
        };
        let defaults = FoldConfig::default();
        let fold = FoldConfig {
            dedup_window: duration("ledger.dedup_window", raw.ledger.dedup_window.as_ref(), defaults.dedup_window, 0),
            expiry_grace: duration("ledger.expiry_grace", raw.ledger.expiry_grace.as_ref(), defaults.expiry_grace, 0),
            close_grace: duration("ledger.close_grace", raw.ledger.close_grace.as_ref(), defaults.close_grace, 0),
            max_future: duration("ledger.max_future", raw.ledger.max_future.as_ref(), defaults.max_future, 0),
            max_tick_jump: raw
                .ledger
                .max_tick_jump
                .as_ref()
                .map(|jump| duration("ledger.max_tick_jump", Some(jump), 0, SECOND_MS)),
            tick_sources: raw.ledger.tick_sources.clone().map(std::sync::Arc::from),
            ..defaults.clone()
        };
        let commit_interval = duration("processor.commit_interval", raw.processor.commit_interval.as_ref(), 100, 1);
        let tick_interval = match raw.clock.tick_interval.as_deref() {
            None | Some("off") => None,
            Some(text) => Some(duration("clock.tick_interval", Some(&text.to_owned()), SECOND_MS, SECOND_MS)),
        };
        let output_format = match raw.processor.output_format.as_deref() {
            None | Some("json") => OutputFormat::Json,
            Some("avro") => OutputFormat::Avro,
            Some("avro-confluent") => OutputFormat::AvroConfluent,
            Some(other) => {
                problems.push(format!("processor.output_format must be json, avro or avro-confluent, not {other:?}"));
                OutputFormat::Json
            }
        };
        let mut fold = fold;
        let mut instant = |name: &str, value: Option<&String>, default: Millis| match value {
            None => default,
            Some(text) => match crate::units::parse_rfc3339(text) {
                Some(time) if (EARLIEST_REPRESENTABLE_TIME..=LATEST_REPRESENTABLE_TIME).contains(&time) => time,
                Some(_) => {
                    problems.push(format!("{name} must lie within years 0000 to 9999 (UTC), not {text:?}"));
                    default
                }
                None => {
                    problems.push(format!("{name} is not an RFC 3339 time: {text:?}"));
                    default
                }
            },
        };
        fold.earliest_time = instant("ledger.earliest_time", raw.ledger.earliest_time.as_ref(), defaults.earliest_time);
        fold.latest_time = instant("ledger.latest_time", raw.ledger.latest_time.as_ref(), defaults.latest_time);
        if fold.earliest_time > fold.latest_time {
            problems.push("ledger.earliest_time must not be after ledger.latest_time".to_owned());
        }
        if raw.ledger.tick_sources.as_ref().is_some_and(Vec::is_empty) {
            problems.push("ledger.tick_sources must name at least one source (leave it unset to accept any)".into());
        }
        if let Some(text) = &raw.processor.inject_panic_at {
            match parse_record_position(text) {
                Ok(position) => fold.inject_panic_at = Some(position),
                Err(error) => problems.push(format!("processor.inject_panic_at: {error}")),
            }
        }
        let mut limit = |name: &str, value: Option<u64>, default: usize, minimum: usize| match value {
            None => default,
            Some(value) if value as usize >= minimum => value as usize,
            Some(_) => {
                problems.push(format!("limits.{name} must be at least {minimum}"));
                default
            }
        };
        let limit_defaults = crate::events::Limits::default();
        fold.limits = crate::events::Limits {
            max_record_bytes: limit(
                "max_record_bytes",
                raw.limits.max_record_bytes,
                limit_defaults.max_record_bytes,
                1024,
            ),
            max_json_depth: limit("max_json_depth", raw.limits.max_json_depth, limit_defaults.max_json_depth, 3),
            max_string_bytes: limit(
                "max_string_bytes",
                raw.limits.max_string_bytes,
                limit_defaults.max_string_bytes,
                64,
            ),
            dead_letter_value_bytes: limit(
                "dead_letter_value_bytes",
                raw.limits.dead_letter_value_bytes,
                limit_defaults.dead_letter_value_bytes,
                0,
            ),
        };
        // A dead letter's value is one Avro string for Avro outputs.
        if fold.limits.dead_letter_value_bytes > crate::events::avro::MAX_AVRO_ALLOCATION {
            problems.push(format!(
                "limits.dead_letter_value_bytes must be at most {}",
                crate::events::avro::MAX_AVRO_ALLOCATION
            ));
        }
        let bootstrap_servers = raw.kafka.bootstrap_servers.clone().unwrap_or_default();
        if bootstrap_servers.trim().is_empty() {
            problems.push(
                "kafka.bootstrap_servers is not set (config file, GPULEDGER_KAFKA__BOOTSTRAP_SERVERS or --bootstrap-servers)"
                    .to_owned(),
            );
        }
        for (property, value) in &raw.kafka.properties {
            if is_secret(property) {
                remember_secret(value);
            }
        }
        for property in raw.kafka.properties.keys() {
            if ["bootstrap.servers", "group.id", "transactional.id", "enable.auto.commit", "isolation.level"]
                .contains(&property.as_str())
            {
                problems.push(format!(
                    "kafka.properties.{property:?} is set by gpuledger itself (use the kafka section's own keys)"
                ));
            }
        }
        let topic = |value: &Option<String>, default: &str| value.clone().unwrap_or_else(|| default.to_owned());
        let topics = Topics {
            rates: topic(&raw.topics.rates, "gpuledger.rates"),
            deals: topic(&raw.topics.deals, "gpuledger.deals"),
            metering: topic(&raw.topics.metering, "gpuledger.metering"),
            usage_rated: topic(&raw.topics.usage_rated, "gpuledger.usage-rated"),
            journal: topic(&raw.topics.journal, "gpuledger.journal"),
            balances: topic(&raw.topics.balances, "gpuledger.balances"),
            statements: topic(&raw.topics.statements, "gpuledger.statements"),
            alerts: topic(&raw.topics.alerts, "gpuledger.alerts"),
            dead_letter: topic(&raw.topics.dead_letter, "gpuledger.dead-letter"),
            progress: topic(&raw.topics.progress, "gpuledger.progress"),
            members: topic(&raw.topics.members, "gpuledger.members"),
        };
        let all_topics = [
            &topics.rates,
            &topics.deals,
            &topics.metering,
            &topics.usage_rated,
            &topics.journal,
            &topics.balances,
            &topics.statements,
            &topics.alerts,
            &topics.dead_letter,
            &topics.progress,
            &topics.members,
        ];
        for (index, name) in all_topics.iter().enumerate() {
            let valid = !name.is_empty()
                && name.len() <= 249
                && name.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
            if !valid {
                problems.push(format!("topic name {name:?} is not a valid Kafka topic name"));
            }
            if all_topics[..index].contains(name) {
                problems.push(format!("topic {name:?} is configured twice"));
            }
        }
        if let Some(format) = raw.log.format.as_deref().filter(|format| !["text", "json"].contains(format)) {
            problems.push(format!("log.format must be text or json, not {format:?}"));
        }
        let mut schema_ids = crate::records::avro::default_schema_ids();
        for (schema, id) in &raw.schemas.ids {
            match schema_ids.get_mut(schema) {
                Some(slot) => *slot = *id,
                None => problems.push(format!(
                    "schemas.ids.{schema}: no such schema (one of {})",
                    schema_ids.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
            }
        }
        let mut by_id: BTreeMap<u32, Vec<&str>> = BTreeMap::new();
        for (schema, id) in &schema_ids {
            by_id.entry(*id).or_default().push(schema);
        }
        for (id, schemas) in by_id.iter().filter(|(_, schemas)| schemas.len() > 1) {
            problems.push(format!("schemas.ids: id {id} is given to {}", schemas.join(" and ")));
        }
        let http = http::validate(&raw.http, &mut problems);
        let checkpoints = checkpoints::validate(&raw.checkpoints, &mut problems);
        if !problems.is_empty() {
            bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
        }
        Ok(Config {
            bootstrap_servers,
            group_id: raw.kafka.group_id.unwrap_or_else(|| "gpuledger".to_owned()),
            transactional_id_prefix: raw.kafka.transactional_id_prefix.unwrap_or_else(|| "gpuledger".to_owned()),
            properties: raw.kafka.properties,
            topics,
            state_dir: raw.processor.state_dir.unwrap_or_else(|| PathBuf::from("gpuledger-state")),
            commit_interval,
            output_format,
            schema_ids,
            inject_abort_every: raw.processor.inject_abort_every.unwrap_or(0),
            inject_refold_write_failure: raw.processor.inject_refold_write_failure.unwrap_or(false),
            fold,
            tick_interval,
            http,
            checkpoints,
        })
    }

    /// The librdkafka properties for one client, with secrets masked in
    /// [`Config::describe`].
    pub fn client_properties(&self) -> Vec<(String, String)> {
        let mut properties = vec![("bootstrap.servers".to_owned(), self.bootstrap_servers.clone())];
        properties.extend(self.properties.iter().map(|(key, value)| (key.clone(), value.clone())));
        properties
    }

    /// A one-line summary for the logs, secrets masked.
    pub fn describe(&self) -> String {
        let properties: Vec<String> = self
            .properties
            .iter()
            .map(|(key, value)| if is_secret(key) { format!("{key}=***") } else { format!("{key}={value}") })
            .collect();
        format!(
            "bootstrap_servers={} group_id={} state_dir={} commit_interval={}ms properties=[{}]",
            self.bootstrap_servers,
            self.group_id,
            self.state_dir.display(),
            self.commit_interval,
            properties.join(", ")
        )
    }
}

/// A valid configuration with every default, for tests.
#[cfg(test)]
pub(crate) fn for_tests() -> Config {
    let raw: RawConfig = toml::from_str("[kafka]\nbootstrap_servers = \"localhost:9092\"\n").expect("valid TOML");
    Config::validate(raw).expect("a valid configuration")
}

#[cfg(test)]
mod tests;

//! The configuration file as written: every field optional, so the file,
//! the environment and the flags can be layered before validation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The file as written; every field optional so layers can merge.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub kafka: RawKafka,
    #[serde(default)]
    pub topics: RawTopics,
    #[serde(default)]
    pub processor: RawProcessor,
    #[serde(default)]
    pub ledger: RawLedger,
    #[serde(default)]
    pub clock: RawClock,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub schemas: RawSchemas,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub checkpoints: RawCheckpoints,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoints {
    /// `file:///path` or `s3://bucket/prefix`; checkpoints are off when unset.
    pub store: Option<String>,
    /// Checkpoint a task this often (default `5m`) …
    pub interval: Option<String>,
    /// … or after this many records folded (default 1,000,000; 0: time only).
    pub interval_records: Option<u64>,
    /// Complete checkpoints kept per task (default 3).
    pub keep: Option<u64>,
    /// Object store options passed through (`endpoint`, `region`,
    /// `allow_http`, `access_key_id`, `secret_access_key`, …).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// `ADDR:PORT` to serve metrics, health and queries on (off when unset;
    /// `--http-listen` wins).
    pub listen: Option<String>,
    /// The URL other instances reach this one at (default: `http://` and
    /// the listen address, with this host's name for a wildcard address).
    pub advertised_url: Option<String>,
    /// Bearer token required by `/v1` (off when unset); or `token_file`.
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` (default) or `json`: one JSON object per line with the
    /// event's fields (task `partition`, offsets, …). `--log-format` wins.
    pub format: Option<String>,
}

/// The log format the configuration file asks for (`[log] format`), if it
/// can be read; the command reports a file it cannot read later.
pub fn log_format_of_file(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<RawConfig>(&text).ok()?.log.format
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchemas {
    /// Confluent Schema Registry ids by schema (file stem of `schemas/`):
    /// the ids the Confluent wire format carries, in and out. Defaults:
    /// [`crate::records::avro::default_schema_ids`].
    #[serde(default)]
    pub ids: BTreeMap<String, u32>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafka {
    /// `host:port[,host:port...]`; required.
    pub bootstrap_servers: Option<String>,
    /// Consumer group of the processor (default `gpuledger`).
    pub group_id: Option<String>,
    /// Prefix of the per-partition transactional ids (default `gpuledger`).
    pub transactional_id_prefix: Option<String>,
    /// librdkafka properties passed through (SASL, TLS, timeouts, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTopics {
    pub rates: Option<String>,
    pub deals: Option<String>,
    pub metering: Option<String>,
    pub usage_rated: Option<String>,
    pub journal: Option<String>,
    pub balances: Option<String>,
    pub statements: Option<String>,
    pub alerts: Option<String>,
    pub dead_letter: Option<String>,
    pub progress: Option<String>,
    /// Where instances announce their HTTP address and tasks (queries).
    pub members: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcessor {
    /// RocksDB state directory (default `./gpuledger-state`).
    pub state_dir: Option<PathBuf>,
    /// How often a commit cycle runs (default `100ms`).
    pub commit_interval: Option<String>,
    /// Encoding of output records: `json` (default), `avro` (single-object
    /// encoding) or `avro-confluent` (Confluent wire format, `schemas.ids`).
    pub output_format: Option<String>,
    /// Fault injection for tests: abort every Nth transaction after its
    /// records were sent (0, the default, never).
    pub inject_abort_every: Option<u64>,
    /// Fault injection for tests: the RocksDB write at the end of a
    /// re-fold fails (the processor must stop, naming it).
    pub inject_refold_write_failure: Option<bool>,
    /// Fault injection for tests: `TOPIC:OFFSET` (`rates`, `deals` or
    /// `metering`): the fold panics after that record, to show that it is
    /// dead-lettered as `internal_error` and the task goes on.
    pub inject_panic_at: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLedger {
    pub dedup_window: Option<String>,
    pub expiry_grace: Option<String>,
    pub close_grace: Option<String>,
    pub max_future: Option<String>,
    /// Accepted calendar of event times (RFC 3339, inclusive).
    pub earliest_time: Option<String>,
    pub latest_time: Option<String>,
    /// Tick sources accepted (unset: any).
    pub tick_sources: Option<Vec<String>>,
    /// Largest step of a tick past the task's latest tick (unset: any).
    pub max_tick_jump: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_record_bytes: Option<u64>,
    pub max_json_depth: Option<u64>,
    pub max_string_bytes: Option<u64>,
    pub dead_letter_value_bytes: Option<u64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClock {
    /// Publish ticks to every metering partition at this interval (`off`
    /// by default).
    pub tick_interval: Option<String>,
}

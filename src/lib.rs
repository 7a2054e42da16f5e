//! gpuledger: an event-sourced, exactly-once compute-credit ledger.
//!
//! GPU metering events, deal events and rate cards are folded into
//! per-start-up credit consumption and ASC 606 revenue (contract liability,
//! revenue on consumption, breakage at expiry, overage receivable). The rules
//! are `docs/ledger-rules.md`; `docs/decisions.md` records the choices made
//! where they leave one open.
//!
//! # Layout
//! - [`units`]: instants, months, exact rounding (pure);
//! - [`events`]: input events and their codecs (JSON, Avro);
//! - [`fold`]: the pure, deterministic ledger fold and the merge rule — no
//!   I/O crate is imported there;
//! - [`records`]: the output records;
//! - [`store`]: state persistence (RocksDB, and an in-memory store);
//! - [`partitioner`]: Kafka's default partitioner (murmur2);
//! - [`batch`]: the batch mode over JSONL files (`gpuledger fold`);
//! - [`config`]: configuration of the Kafka-facing commands (TOML, env, flags);
//! - [`kafka`]: topics, `produce`, `export` and the streaming processor (`run`);
//! - [`audit`]: the invariants of spec §11 over an output directory;
//! - [`gen`]: the workload generator over the Philly GPU trace.

#[cfg(feature = "io")]
pub mod audit;
#[cfg(feature = "io")]
pub mod batch;
pub mod config;
pub mod events;
pub mod fold;
pub mod gen;
#[cfg(feature = "io")]
pub mod kafka;
pub mod partitioner;
#[cfg(feature = "io")]
pub mod progress;
pub mod records;
pub mod store;
pub mod units;
pub mod whatif;

/// Errors of setup and I/O layers; the fold itself never fails (bad records
/// become dead letters).
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

//! gpuledger: an event-sourced, exactly-once compute-credit ledger.
//!
//! GPU metering events, deal events and rate cards are folded into
//! per-start-up credit consumption and ASC 606 revenue (contract liability,
//! revenue on consumption, breakage at expiry, overage receivable). The rules
//! are `docs/ledger-rules.md`; `docs/decisions.md` records the choices made
//! where they leave one open.
//!
//! # Layout
//! One flow: bytes → [`events`] (decode) → [`drive`] (which record next) →
//! [`fold`] (the pure ledger) → [`records`] (outputs) → a sink (files, a
//! Kafka transaction) → [`store`] (state, written after the outputs).
//!
//! - [`units`]: instants, months, exact rounding (pure);
//! - [`events`]: input events and their codecs (JSON, Avro);
//! - [`drive`]: the one loop that feeds a task — the merge rule or a
//!   recorded order, `--until`, a sink and a persist hook — run by batch,
//!   replay and the live processor (no I/O of its own);
//! - [`fold`]: the pure, deterministic ledger fold and the merge rule — no
//!   I/O crate is imported there;
//! - [`records`]: the output records and their Avro encoding;
//! - [`store`]: state persistence (RocksDB, and an in-memory store);
//! - [`checkpoint`]: checkpoints of task state in an object store, and
//!   restoring them;
//! - [`partitioner`]: Kafka's default partitioner (murmur2);
//! - [`batch`]: the batch mode over JSONL files (`gpuledger fold`);
//! - [`config`]: configuration of the Kafka-facing commands (TOML, env, flags);
//! - [`kafka`]: Kafka I/O — clients, topics, the progress record, the live
//!   processor (`run`) and the ops tools (`replay`, `reset`, `export`, …);
//! - [`audit`]: the invariants of spec §11 over an output directory;
//! - [`whatif`]: the what-if comparison of two rate-card worlds;
//! - [`progress_bar`]: the progress bar of long ops commands;
//! - [`serve`]: metrics, health and the query API over HTTP;
//! - [`workload`]: the workload generator over the Philly GPU trace.

#[cfg(feature = "io")]
pub mod audit;
#[cfg(feature = "io")]
pub mod batch;
#[cfg(feature = "io")]
pub mod checkpoint;
pub mod config;
pub mod drive;
pub mod events;
pub mod fold;
#[cfg(feature = "io")]
pub mod kafka;
pub mod partitioner;
#[cfg(feature = "io")]
pub mod progress_bar;
pub mod records;
#[cfg(feature = "io")]
pub mod serve;
pub mod store;
pub mod units;
pub mod whatif;
pub mod workload;

/// Errors of setup and I/O layers; the fold itself never fails (bad records
/// become dead letters).
pub type Result<T, E = anyhow::Error> = std::result::Result<T, E>;

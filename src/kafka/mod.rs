//! Kafka I/O. Nothing here computes ledger figures; the fold does.
//!
//! - [`client`]: every consumer and producer gpuledger makes, with its
//!   properties; closing clients; a message as an input record;
//! - [`topics`]: the input topics' Kafka names ↔ the fold's inputs;
//! - [`cluster`]: partition counts, committed and end offsets;
//! - [`progress`]: the progress record, read back and chained;
//! - [`live`]: `gpuledger run`, the exactly-once processor;
//! - [`replay`], [`reset`], [`export`], [`produce`], [`admin`]: the ops tools.

pub mod admin;
pub mod client;
pub mod cluster;
pub mod export;
pub mod live;
pub mod produce;
pub mod progress;
pub mod replay;
pub mod reset;
pub mod topics;

//! Output records as Avro (single-object encoding) with the schemas of
//! `schemas/`; the input side is [`crate::events::avro`].

use std::collections::BTreeMap;

use anyhow::anyhow;
use apache_avro::Schema;
use serde_json::Value as JsonValue;

use crate::events::avro::{avro_to_json, bound_allocations, fingerprint, json_to_avro, SINGLE_OBJECT_MAGIC};

/// Output schemas: (file stem, text).
pub const OUTPUT_SCHEMAS: [(&str, &str); 6] = [
    ("usage_rated", include_str!("../../schemas/usage_rated.avsc")),
    ("journal_entry", include_str!("../../schemas/journal_entry.avsc")),
    ("statement", include_str!("../../schemas/statement.avsc")),
    ("alert", include_str!("../../schemas/alert.avsc")),
    ("dead_letter", include_str!("../../schemas/dead_letter.avsc")),
    ("balances", include_str!("../../schemas/balances.avsc")),
];

/// Encodes output records as Avro (single-object encoding) with the
/// schemas of `schemas/`.
#[derive(Clone, Debug)]
pub struct OutputEncoder {
    schemas: BTreeMap<&'static str, Schema>,
}

impl Default for OutputEncoder {
    fn default() -> Self {
        bound_allocations();
        let schemas = OUTPUT_SCHEMAS
            .iter()
            .map(|(name, text)| {
                (
                    *name,
                    Schema::parse_str(text)
                        .unwrap_or_else(|error| panic!("built-in schema {name} is invalid: {error}")),
                )
            })
            .collect();
        OutputEncoder { schemas }
    }
}

impl OutputEncoder {
    /// `schema` is a file stem of [`OUTPUT_SCHEMAS`]; `record` the record
    /// as JSON (as [`super::Output::to_json`] writes it).
    pub fn encode(&self, schema: &str, record: &JsonValue) -> crate::Result<Vec<u8>> {
        let schema = self.schemas.get(schema).ok_or_else(|| anyhow!("no output schema {schema}"))?;
        let value = json_to_avro(schema, record).map_err(|error| anyhow!(error))?;
        let mut framed = SINGLE_OBJECT_MAGIC.to_vec();
        framed.extend_from_slice(&fingerprint(schema));
        framed.extend(apache_avro::to_avro_datum(schema, value)?);
        Ok(framed)
    }

    /// Decodes a record written by [`OutputEncoder::encode`] back to JSON.
    pub fn decode(&self, schema_name: &str, bytes: &[u8]) -> crate::Result<JsonValue> {
        let schema = self.schemas.get(schema_name).ok_or_else(|| anyhow!("no output schema {schema_name}"))?;
        let body = bytes
            .strip_prefix(&SINGLE_OBJECT_MAGIC)
            .and_then(|rest| rest.strip_prefix(&fingerprint(schema)))
            .ok_or_else(|| anyhow!("not a single-object record of this schema"))?;
        let json = avro_to_json(&apache_avro::from_avro_datum(schema, &mut &body[..], None)?, true);
        if schema_name == "dead_letter" {
            // The fields a dead letter has only when something was cut are
            // absent in its JSON, not null: read back as the JSON path writes.
            let letter: super::DeadLetter = serde_json::from_value(json)?;
            return Ok(serde_json::to_value(letter)?);
        }
        Ok(json)
    }
}

impl super::Output {
    /// The output schema's file stem for this record.
    pub fn schema_name(&self) -> &'static str {
        match self {
            super::Output::UsageRated(_) => "usage_rated",
            super::Output::Journal(_) => "journal_entry",
            super::Output::Statement(_) => "statement",
            super::Output::Alert(_) => "alert",
            super::Output::DeadLetter(_) => "dead_letter",
        }
    }

    pub fn to_avro(&self, encoder: &OutputEncoder) -> crate::Result<Vec<u8>> {
        let json: JsonValue = serde_json::from_slice(&self.to_json())?;
        encoder.encode(self.schema_name(), &json)
    }
}

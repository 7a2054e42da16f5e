//! Output records as Avro (single-object encoding) with the schemas of
//! `schemas/`; the input side is [`crate::events::avro`].

use std::collections::BTreeMap;

use anyhow::anyhow;
use apache_avro::Schema;
use serde_json::Value as JsonValue;

use crate::events::avro::{
    avro_to_json, bound_allocations, default_input_ids, fingerprint, json_to_avro, legacy_fingerprint, CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
};

/// Output schemas: (file stem, text).
pub const OUTPUT_SCHEMAS: [(&str, &str); 6] = [
    ("usage_rated", include_str!("../../schemas/usage_rated.avsc")),
    ("journal_entry", include_str!("../../schemas/journal_entry.avsc")),
    ("statement", include_str!("../../schemas/statement.avsc")),
    ("alert", include_str!("../../schemas/alert.avsc")),
    ("dead_letter", include_str!("../../schemas/dead_letter.avsc")),
    ("balances", include_str!("../../schemas/balances.avsc")),
];

/// The Confluent ids every schema has unless `[schemas] ids` says
/// otherwise: the inputs 1–8 ([`crate::events::avro::default_input_ids`]),
/// then the outputs 9–14 in the order of [`OUTPUT_SCHEMAS`].
pub fn default_schema_ids() -> BTreeMap<String, u32> {
    let mut ids = default_input_ids();
    let next = ids.values().max().copied().unwrap_or(0) + 1;
    ids.extend(OUTPUT_SCHEMAS.iter().zip(next..).map(|((name, _), id)| ((*name).to_owned(), id)));
    ids
}

/// How output records are framed as Avro.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Avro single-object encoding: `C3 01`, the schema's fingerprint.
    SingleObject,
    /// Confluent wire format: `00`, the schema's registry id.
    Confluent,
}

/// Encodes output records as Avro with the schemas of `schemas/`, in
/// either framing; decodes them back (both framings, and the fingerprints
/// of earlier versions).
#[derive(Clone, Debug)]
pub struct OutputEncoder {
    schemas: BTreeMap<&'static str, Schema>,
    /// Confluent id by schema, and schema by id.
    ids: BTreeMap<&'static str, u32>,
    by_id: BTreeMap<u32, &'static str>,
}

impl Default for OutputEncoder {
    fn default() -> Self {
        OutputEncoder::with_ids(&default_schema_ids())
    }
}

impl OutputEncoder {
    /// An encoder whose Confluent framing carries the ids of `ids`.
    pub fn with_ids(ids: &BTreeMap<String, u32>) -> Self {
        bound_allocations();
        let mut encoder = OutputEncoder { schemas: BTreeMap::new(), ids: BTreeMap::new(), by_id: BTreeMap::new() };
        for (name, text) in OUTPUT_SCHEMAS {
            let schema =
                Schema::parse_str(text).unwrap_or_else(|error| panic!("built-in schema {name} is invalid: {error}"));
            encoder.schemas.insert(name, schema);
            if let Some(id) = ids.get(name) {
                encoder.ids.insert(name, *id);
                encoder.by_id.insert(*id, name);
            }
        }
        encoder
    }

    /// `schema` is a file stem of [`OUTPUT_SCHEMAS`]; `record` the record
    /// as JSON (as [`super::Output::to_json`] writes it); single-object encoding.
    pub fn encode(&self, schema: &str, record: &JsonValue) -> crate::Result<Vec<u8>> {
        self.encode_framed(schema, record, Framing::SingleObject)
    }

    pub fn encode_framed(&self, schema_name: &str, record: &JsonValue, framing: Framing) -> crate::Result<Vec<u8>> {
        let schema = self.schemas.get(schema_name).ok_or_else(|| anyhow!("no output schema {schema_name}"))?;
        let value = json_to_avro(schema, record).map_err(|error| anyhow!(error))?;
        let mut framed = match framing {
            Framing::SingleObject => {
                let mut header = SINGLE_OBJECT_MAGIC.to_vec();
                header.extend_from_slice(&fingerprint(schema));
                header
            }
            Framing::Confluent => {
                let id = self.ids.get(schema_name).ok_or_else(|| anyhow!("no schema id for {schema_name}"))?;
                let mut header = vec![CONFLUENT_MAGIC];
                header.extend_from_slice(&id.to_be_bytes());
                header
            }
        };
        framed.extend(apache_avro::to_avro_datum(schema, value)?);
        Ok(framed)
    }

    /// Decodes a record written by [`OutputEncoder::encode_framed`] (either
    /// framing) back to JSON.
    pub fn decode(&self, schema_name: &str, bytes: &[u8]) -> crate::Result<JsonValue> {
        let schema = self.schemas.get(schema_name).ok_or_else(|| anyhow!("no output schema {schema_name}"))?;
        let body = if let Some(rest) = bytes.strip_prefix(&SINGLE_OBJECT_MAGIC) {
            rest.strip_prefix(&fingerprint(schema))
                .or_else(|| rest.strip_prefix(&legacy_fingerprint(schema)))
                .ok_or_else(|| anyhow!("not a single-object record of schema {schema_name}"))?
        } else {
            let (id, body) = bytes
                .strip_prefix(&[CONFLUENT_MAGIC])
                .and_then(|rest| rest.split_first_chunk::<4>())
                .ok_or_else(|| anyhow!("neither single-object nor Confluent framing"))?;
            let id = u32::from_be_bytes(*id);
            anyhow::ensure!(
                self.by_id.get(&id) == Some(&schema_name),
                "Confluent schema id {id} is not the id of {schema_name}"
            );
            body
        };
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
        self.to_avro_framed(encoder, Framing::SingleObject)
    }

    pub fn to_avro_framed(&self, encoder: &OutputEncoder, framing: Framing) -> crate::Result<Vec<u8>> {
        let json: JsonValue = serde_json::from_slice(&self.to_json())?;
        encoder.encode_framed(self.schema_name(), &json, framing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> JsonValue {
        serde_json::json!({
            "alert_id": "a1", "kind": "first_overage", "startup": "acme", "currency": "USD",
            "grant_id": null, "threshold": null, "expires_at": null,
            "time": "2026-01-01T00:00:00.000Z", "remaining_face": null
        })
    }

    #[test]
    fn both_framings_round_trip_and_carry_the_configured_id_or_the_spec_fingerprint() {
        let mut ids = default_schema_ids();
        ids.insert("alert".to_owned(), 4242);
        let encoder = OutputEncoder::with_ids(&ids);
        let confluent = encoder.encode_framed("alert", &alert(), Framing::Confluent).unwrap();
        assert_eq!(confluent[..5], [0, 0, 0, 0x10, 0x92]);
        assert_eq!(
            encoder.decode("alert", &confluent).unwrap(),
            encoder.decode("alert", &encoder.encode("alert", &alert()).unwrap()).unwrap()
        );
        let single = encoder.encode("alert", &alert()).unwrap();
        assert_eq!(single[2..10], fingerprint(&encoder.schemas["alert"]));
        // Another schema's id is refused, not misread.
        assert!(OutputEncoder::default().decode("alert", &confluent).is_err());
        // What earlier versions wrote (the crate's fingerprint) still decodes.
        let mut legacy = SINGLE_OBJECT_MAGIC.to_vec();
        legacy.extend_from_slice(&legacy_fingerprint(&encoder.schemas["alert"]));
        legacy.extend_from_slice(&single[10..]);
        assert_eq!(encoder.decode("alert", &legacy).unwrap(), encoder.decode("alert", &single).unwrap());
    }
}

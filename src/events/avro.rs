//! Avro binary: the schemas of `schemas/`, the two framings the decoder
//! accepts, and the JSON ⇄ Avro value mapping both directions use.
//!
//! - **Single-object encoding** (Avro spec): `C3 01`, the schema's 8-byte
//!   CRC-64-AVRO fingerprint (little-endian), then the binary datum. The
//!   fingerprint picks the writer schema among the known ones.
//! - **Confluent wire format**: a zero byte, a 4-byte big-endian schema id,
//!   then the datum. Ids resolve through a local id → schema map (no network
//!   registry); [`SchemaRegistry::builtin`] numbers the input schemas 1–8 in
//!   the order of [`INPUT_SCHEMAS`].
//!
//! A decoded Avro event becomes the JSON value of the same CloudEvent
//! (timestamps as RFC 3339 strings, the `extensions` map spread into
//! top-level attributes), so the checks, reason codes and duplicate digests
//! are the JSON path's.

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail};
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use serde_json::{Map, Number, Value as JsonValue};

use super::{reject, Reason, Rejection};
use crate::units::{format_millis, parse_rfc3339};

/// Input schemas: (file stem, text), in Confluent-id order 1..=8.
pub const INPUT_SCHEMAS: [(&str, &str); 8] = [
    ("deal_signed", include_str!("../../schemas/deal_signed.avsc")),
    ("credit_granted", include_str!("../../schemas/credit_granted.avsc")),
    ("grant_extended", include_str!("../../schemas/grant_extended.avsc")),
    ("grant_revoked", include_str!("../../schemas/grant_revoked.avsc")),
    ("deal_cancelled", include_str!("../../schemas/deal_cancelled.avsc")),
    ("rate_published", include_str!("../../schemas/rate_published.avsc")),
    ("gpu_usage", include_str!("../../schemas/gpu_usage.avsc")),
    ("clock_tick", include_str!("../../schemas/clock_tick.avsc")),
];

/// The Confluent ids of the input schemas unless `[schemas] ids` says
/// otherwise: 1–8 in the order of [`INPUT_SCHEMAS`] (the outputs follow,
/// [`crate::records::avro::default_schema_ids`]).
pub fn default_input_ids() -> BTreeMap<String, u32> {
    INPUT_SCHEMAS.iter().zip(1..).map(|((name, _), id)| ((*name).to_owned(), id)).collect()
}

pub(crate) const CONFLUENT_MAGIC: u8 = 0;
pub(crate) const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Whether a record's bytes are Avro framed as the decoder accepts. JSON
/// never starts with either marker.
pub fn is_avro(bytes: &[u8]) -> bool {
    bytes.starts_with(&SINGLE_OBJECT_MAGIC) || (bytes.len() >= 5 && bytes[0] == CONFLUENT_MAGIC)
}

/// The most the Avro decoder may allocate for one length it reads: a
/// string, bytes, or the count of an array or map block. The library checks
/// a block's *count* against this but then reserves count × element size,
/// so its default (512 MiB) let a 40-byte record ask for 43 GB and abort
/// the process (found by fuzzing, `fuzz/`). Any honest count or length is
/// below a record's size; strings are at most `limits.max_string_bytes`.
pub const MAX_AVRO_ALLOCATION: usize = 256 << 10;

/// Sets [`MAX_AVRO_ALLOCATION`] for the process (once; later calls keep it).
pub fn bound_allocations() {
    apache_avro::util::max_allocation_bytes(MAX_AVRO_ALLOCATION);
}

pub use super::fingerprint::{fingerprint, legacy_fingerprint};

/// The schemas the decoder knows, by fingerprint and by Confluent id.
#[derive(Clone, Debug)]
pub struct SchemaRegistry {
    schemas: Vec<(String, Schema)>,
    by_fingerprint: HashMap<[u8; 8], usize>,
    by_id: BTreeMap<u32, usize>,
}

impl SchemaRegistry {
    /// The input schemas, with the default Confluent ids (1..=8).
    pub fn builtin() -> SchemaRegistry {
        SchemaRegistry::with_ids(&default_input_ids())
    }

    /// The input schemas, with the Confluent ids of `ids` (by file stem;
    /// a schema without one is known by fingerprint only).
    pub fn with_ids(ids: &BTreeMap<String, u32>) -> SchemaRegistry {
        bound_allocations();
        let mut registry =
            SchemaRegistry { schemas: Vec::new(), by_fingerprint: HashMap::new(), by_id: BTreeMap::new() };
        for (name, text) in INPUT_SCHEMAS {
            let schema =
                Schema::parse_str(text).unwrap_or_else(|error| panic!("built-in schema {name} is invalid: {error}"));
            registry.add(name, schema, ids.get(name).copied());
        }
        registry
    }

    /// Adds a schema, optionally under a Confluent id (a later id wins).
    pub fn add(&mut self, name: &str, schema: Schema, confluent_id: Option<u32>) {
        let index = self.schemas.len();
        // Records written before fingerprints followed the spec still decode.
        self.by_fingerprint.insert(legacy_fingerprint(&schema), index);
        self.by_fingerprint.insert(fingerprint(&schema), index);
        if let Some(id) = confluent_id {
            self.by_id.insert(id, index);
        }
        self.schemas.push((name.to_owned(), schema));
    }

    pub fn schema(&self, name: &str) -> Option<&Schema> {
        self.schemas.iter().find(|(known, _)| known == name).map(|(_, schema)| schema)
    }

    /// Decodes a framed Avro record into the JSON value of its CloudEvent.
    pub fn to_cloudevent(&self, bytes: &[u8]) -> Result<JsonValue, Rejection> {
        let (index, mut body) = if let Some(rest) = bytes.strip_prefix(&SINGLE_OBJECT_MAGIC) {
            let Some((print, body)) = rest.split_first_chunk::<8>() else {
                return reject(Reason::Undecodable, "Avro single-object header is truncated");
            };
            match self.by_fingerprint.get(print) {
                Some(index) => (*index, body),
                None => {
                    return reject(
                        Reason::Undecodable,
                        format!("unknown Avro schema fingerprint {}", crate::units::hex(print)),
                    )
                }
            }
        } else {
            let Some((id, body)) = bytes[1..].split_first_chunk::<4>() else {
                return reject(Reason::Undecodable, "Confluent header is truncated");
            };
            let id = u32::from_be_bytes(*id);
            match self.by_id.get(&id) {
                Some(index) => (*index, body),
                None => return reject(Reason::Undecodable, format!("unknown Confluent schema id {id}")),
            }
        };
        let schema = &self.schemas[index].1;
        let value = match apache_avro::from_avro_datum(schema, &mut body, None) {
            Ok(value) => value,
            Err(error) => {
                return reject(Reason::Undecodable, format!("not a {} datum: {error}", self.schemas[index].0))
            }
        };
        if !body.is_empty() {
            return reject(Reason::Undecodable, format!("{} trailing bytes after the Avro datum", body.len()));
        }
        let mut event = avro_to_json(&value, false);
        // CloudEvents extension attributes live at the top level in JSON.
        if let JsonValue::Object(members) = &mut event {
            if let Some(JsonValue::Object(extensions)) = members.remove("extensions") {
                for (name, value) in extensions {
                    members.entry(name).or_insert(value);
                }
            }
        }
        Ok(event)
    }

    /// Encodes a CloudEvent (JSON value) with the named input schema, in
    /// single-object encoding.
    pub fn encode_single_object(&self, name: &str, event: &JsonValue) -> crate::Result<Vec<u8>> {
        let schema = self.schema(name).ok_or_else(|| anyhow!("no schema named {name}"))?;
        let mut framed = SINGLE_OBJECT_MAGIC.to_vec();
        framed.extend_from_slice(&fingerprint(schema));
        framed.extend(apache_avro::to_avro_datum(schema, cloudevent_to_avro(schema, event)?)?);
        Ok(framed)
    }

    /// Encodes a CloudEvent with the schema registered under `id`, in the
    /// Confluent wire format.
    pub fn encode_confluent(&self, id: u32, event: &JsonValue) -> crate::Result<Vec<u8>> {
        let index = *self.by_id.get(&id).ok_or_else(|| anyhow!("no schema with id {id}"))?;
        let schema = &self.schemas[index].1;
        let mut framed = vec![CONFLUENT_MAGIC];
        framed.extend_from_slice(&id.to_be_bytes());
        framed.extend(apache_avro::to_avro_datum(schema, cloudevent_to_avro(schema, event)?)?);
        Ok(framed)
    }
}

/// The top-level attributes a schema does not name go into `extensions`.
fn cloudevent_to_avro(schema: &Schema, event: &JsonValue) -> crate::Result<AvroValue> {
    let Schema::Record(record) = schema else { bail!("input schemas are records") };
    let JsonValue::Object(members) = event else { bail!("a CloudEvent is a JSON object") };
    let mut shaped = Map::new();
    let mut extensions = Map::new();
    for (name, value) in members {
        if record.lookup.contains_key(name) {
            shaped.insert(name.clone(), value.clone());
        } else {
            extensions.insert(name.clone(), value.clone());
        }
    }
    shaped.insert("extensions".into(), JsonValue::Object(extensions));
    json_to_avro(schema, &JsonValue::Object(shaped)).map_err(|error| anyhow!(error))
}

/// Avro value to JSON: records as objects, unions unwrapped, enums as their
/// symbol, timestamps as RFC 3339 strings.
/// With `keep_nulls` false, null record fields are left out (input events:
/// Avro has no "absent", and the spec reads null as absent, §3).
pub fn avro_to_json(value: &AvroValue, keep_nulls: bool) -> JsonValue {
    let convert = |value: &AvroValue| avro_to_json(value, keep_nulls);
    match value {
        AvroValue::Null => JsonValue::Null,
        AvroValue::Boolean(flag) => JsonValue::Bool(*flag),
        AvroValue::Int(number) => JsonValue::Number(Number::from(*number)),
        AvroValue::Long(number) => JsonValue::Number(Number::from(*number)),
        AvroValue::TimestampMillis(instant) => JsonValue::String(format_millis(*instant)),
        AvroValue::String(text) | AvroValue::Enum(_, text) => JsonValue::String(text.clone()),
        AvroValue::Union(_, inner) => convert(inner),
        AvroValue::Array(items) => JsonValue::Array(items.iter().map(convert).collect()),
        AvroValue::Map(entries) => {
            let sorted: BTreeMap<_, _> = entries.iter().collect();
            JsonValue::Object(sorted.into_iter().map(|(key, value)| (key.clone(), convert(value))).collect())
        }
        AvroValue::Record(fields) => JsonValue::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), convert(value)))
                .filter(|(_, value)| keep_nulls || !value.is_null())
                .collect(),
        ),
        other => JsonValue::String(format!("{other:?}")),
    }
}

/// JSON to an Avro value of `schema` (the inverse of [`avro_to_json`]).
/// Absent record fields take `null` where the schema allows it.
pub fn json_to_avro(schema: &Schema, json: &JsonValue) -> Result<AvroValue, String> {
    Ok(match (schema, json) {
        (Schema::Null, JsonValue::Null) => AvroValue::Null,
        (Schema::Boolean, JsonValue::Bool(flag)) => AvroValue::Boolean(*flag),
        (Schema::Int, JsonValue::Number(number)) => {
            AvroValue::Int(number.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or("not a 32-bit integer")?)
        }
        (Schema::Long, JsonValue::Number(number)) => AvroValue::Long(number.as_i64().ok_or("not a 64-bit integer")?),
        (Schema::String, JsonValue::String(text)) => AvroValue::String(text.clone()),
        (Schema::TimestampMillis, JsonValue::String(text)) => {
            AvroValue::TimestampMillis(parse_rfc3339(text).ok_or_else(|| format!("not an RFC 3339 time: {text:?}"))?)
        }
        (Schema::Enum(enumeration), JsonValue::String(text)) => {
            let index = enumeration.symbols.iter().position(|symbol| symbol == text);
            AvroValue::Enum(
                index.ok_or_else(|| format!("{text:?} is not a symbol of {}", enumeration.name))? as u32,
                text.clone(),
            )
        }
        (Schema::Array(array), JsonValue::Array(items)) => {
            AvroValue::Array(items.iter().map(|item| json_to_avro(&array.items, item)).collect::<Result<_, _>>()?)
        }
        (Schema::Map(map), JsonValue::Object(members)) => AvroValue::Map(
            members
                .iter()
                .map(|(key, value)| {
                    // Extension attributes are strings on the Avro side.
                    let value = match (&*map.types, value) {
                        (Schema::String, JsonValue::String(_)) | (_, JsonValue::Object(_)) => value.clone(),
                        (Schema::String, other) => JsonValue::String(other.to_string()),
                        _ => value.clone(),
                    };
                    Ok((key.clone(), json_to_avro(&map.types, &value)?))
                })
                .collect::<Result<_, String>>()?,
        ),
        (Schema::Union(union), value) => {
            for (index, variant) in union.variants().iter().enumerate() {
                if let Ok(converted) = json_to_avro(variant, value) {
                    return Ok(AvroValue::Union(index as u32, Box::new(converted)));
                }
            }
            return Err(format!("{value} fits no branch of the union"));
        }
        (Schema::Record(record), JsonValue::Object(members)) => {
            let mut fields = Vec::with_capacity(record.fields.len());
            for field in &record.fields {
                let value = members.get(&field.name).unwrap_or(&JsonValue::Null);
                let converted =
                    json_to_avro(&field.schema, value).map_err(|error| format!("{}: {error}", field.name))?;
                fields.push((field.name.clone(), converted));
            }
            AvroValue::Record(fields)
        }
        (schema, value) => return Err(format!("{value} does not fit {schema:?}")),
    })
}

//! Avro schema fingerprints as the Avro specification defines them: the
//! CRC-64-AVRO (Rabin) fingerprint of the schema's Parsing Canonical Form.
//!
//! The form keeps only what parsing needs — `name`, `type`, `fields`,
//! `symbols`, `items`, `values`, `size`, in that order — with full names,
//! primitives in their simple form, and no whitespace. Everything else
//! (`doc`, `default`, `aliases`, `namespace`, `logicalType`, …) is
//! stripped. Java's `SchemaNormalization`, fastavro and arrow-avro compute
//! it this way; the `apache-avro` crate keeps `logicalType` (AVRO-4004),
//! so its fingerprints of schemas with logical types differ from every
//! other library's. Those older fingerprints are still accepted on input
//! ([`legacy_fingerprint`]).

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde_json::Value;
use sha2::Digest as _;

const PRIMITIVES: [&str; 8] = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"];

/// The schema's fingerprint by the specification (little-endian bytes, as
/// single-object encoding writes them).
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let json = serde_json::to_value(schema).expect("a parsed schema serializes to JSON");
    fingerprint_of_form(&parsing_canonical_form(&json))
}

/// The fingerprint `apache-avro` computes (its canonical form keeps
/// `logicalType`): what gpuledger wrote before it followed the spec.
pub fn legacy_fingerprint(schema: &Schema) -> [u8; 8] {
    schema.fingerprint::<Rabin>().bytes.try_into().expect("CRC-64-AVRO is 8 bytes")
}

/// CRC-64-AVRO of a canonical form.
pub fn fingerprint_of_form(form: &str) -> [u8; 8] {
    let mut digest = Rabin::default();
    digest.update(form.as_bytes());
    digest.finalize().into()
}

/// The Parsing Canonical Form of a schema given as JSON.
pub fn parsing_canonical_form(schema: &Value) -> String {
    let mut form = String::new();
    write_form(schema, None, &mut form);
    form
}

fn write_form(schema: &Value, namespace: Option<&str>, out: &mut String) {
    match schema {
        Value::String(name) => write_name(name, namespace, out),
        Value::Array(branches) => {
            out.push('[');
            for (index, branch) in branches.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_form(branch, namespace, out);
            }
            out.push(']');
        }
        Value::Object(members) => match members.get("type") {
            Some(Value::String(kind)) => match kind.as_str() {
                "record" | "error" | "enum" | "fixed" => {
                    let full = full_name(members, namespace);
                    let inner = full.rsplit_once('.').map(|(space, _)| space.to_owned());
                    out.push_str("{\"name\":");
                    push_string(&full, out);
                    out.push_str(",\"type\":");
                    push_string(if kind == "error" { "error" } else { kind }, out);
                    match kind.as_str() {
                        "enum" => {
                            out.push_str(",\"symbols\":[");
                            let symbols = members.get("symbols").and_then(Value::as_array);
                            for (index, symbol) in symbols.into_iter().flatten().enumerate() {
                                if index > 0 {
                                    out.push(',');
                                }
                                push_string(symbol.as_str().unwrap_or_default(), out);
                            }
                            out.push(']');
                        }
                        "fixed" => {
                            out.push_str(",\"size\":");
                            out.push_str(&members.get("size").and_then(Value::as_u64).unwrap_or(0).to_string());
                        }
                        _ => {
                            out.push_str(",\"fields\":[");
                            let fields = members.get("fields").and_then(Value::as_array);
                            for (index, field) in fields.into_iter().flatten().enumerate() {
                                if index > 0 {
                                    out.push(',');
                                }
                                out.push_str("{\"name\":");
                                push_string(field.get("name").and_then(Value::as_str).unwrap_or_default(), out);
                                out.push_str(",\"type\":");
                                write_form(field.get("type").unwrap_or(&Value::Null), inner.as_deref(), out);
                                out.push('}');
                            }
                            out.push(']');
                        }
                    }
                    out.push('}');
                }
                "array" => {
                    out.push_str("{\"type\":\"array\",\"items\":");
                    write_form(members.get("items").unwrap_or(&Value::Null), namespace, out);
                    out.push('}');
                }
                "map" => {
                    out.push_str("{\"type\":\"map\",\"values\":");
                    write_form(members.get("values").unwrap_or(&Value::Null), namespace, out);
                    out.push('}');
                }
                // A primitive (a logical type's attributes are stripped) or
                // a reference to a named type.
                other => write_name(other, namespace, out),
            },
            // `{"type": <schema>}`: the schema itself.
            Some(inner) => write_form(inner, namespace, out),
            None => out.push_str("null"),
        },
        other => out.push_str(&other.to_string()),
    }
}

/// A primitive's name, or a named type's full name.
fn write_name(name: &str, namespace: Option<&str>, out: &mut String) {
    if PRIMITIVES.contains(&name) || name.contains('.') {
        push_string(name, out);
    } else {
        match namespace.filter(|space| !space.is_empty()) {
            Some(space) => push_string(&format!("{space}.{name}"), out),
            None => push_string(name, out),
        }
    }
}

/// A named type's full name: its name if dotted, else qualified by its
/// `namespace` attribute or the enclosing namespace.
fn full_name(members: &serde_json::Map<String, Value>, enclosing: Option<&str>) -> String {
    let name = members.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.contains('.') {
        return name.to_owned();
    }
    let space = members.get("namespace").and_then(Value::as_str).or(enclosing).filter(|space| !space.is_empty());
    match space {
        Some(space) => format!("{space}.{name}"),
        None => name.to_owned(),
    }
}

fn push_string(text: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(text).expect("a string serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_form_strips_what_parsing_does_not_need_and_orders_the_rest() {
        let schema = json!({
            "type": "record", "name": "Usage", "namespace": "gpuledger", "doc": "d",
            "fields": [
                {"name": "time", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "x"},
                {"name": "tier", "type": {"type": "enum", "name": "Tier", "symbols": ["a", "b"]}, "default": "a"},
                {"name": "again", "type": "Tier"},
                {"name": "tags", "type": ["null", {"type": "map", "values": "string"}], "default": null},
                {"name": "ids", "type": {"type": "array", "items": {"type": "string", "logicalType": "uuid"}}},
                {"name": "hash", "type": {"type": "fixed", "name": "other.Hash", "size": 32}}
            ]
        });
        assert_eq!(
            parsing_canonical_form(&schema),
            "{\"name\":\"gpuledger.Usage\",\"type\":\"record\",\"fields\":[\
             {\"name\":\"time\",\"type\":\"long\"},\
             {\"name\":\"tier\",\"type\":{\"name\":\"gpuledger.Tier\",\"type\":\"enum\",\"symbols\":[\"a\",\"b\"]}},\
             {\"name\":\"again\",\"type\":\"gpuledger.Tier\"},\
             {\"name\":\"tags\",\"type\":[\"null\",{\"type\":\"map\",\"values\":\"string\"}]},\
             {\"name\":\"ids\",\"type\":{\"type\":\"array\",\"items\":\"string\"}},\
             {\"name\":\"hash\",\"type\":{\"name\":\"other.Hash\",\"type\":\"fixed\",\"size\":32}}]}"
        );
    }

    #[test]
    fn primitives_take_their_simple_form() {
        assert_eq!(parsing_canonical_form(&json!({"type": "int"})), "\"int\"");
        assert_eq!(parsing_canonical_form(&json!("string")), "\"string\"");
        // The Avro specification's own example: CRC-64-AVRO of "int".
        assert_eq!(u64::from_le_bytes(fingerprint_of_form("\"int\"")), 0x7275_d51a_3f39_5c8f);
    }

    /// Computed for the same `.avsc` by a library no one here wrote (Python
    /// fastavro's `fingerprint_parsing_canonical_form`, CRC-64-AVRO), bytes
    /// as single-object encoding writes them.
    #[test]
    fn fingerprints_match_the_specs_where_logical_types_made_them_differ() {
        let schema = Schema::parse_str(include_str!("../../schemas/usage_rated.avsc")).unwrap();
        assert_eq!(crate::units::hex(&fingerprint(&schema)), "a7413c61de913ff3");
        assert_eq!(crate::units::hex(&legacy_fingerprint(&schema)), "b9bd481f1315c610");
        // Without a logical type, the crate and the spec agree.
        let dead_letter = Schema::parse_str(include_str!("../../schemas/dead_letter.avsc")).unwrap();
        assert_eq!(fingerprint(&dead_letter), legacy_fingerprint(&dead_letter));
    }
}

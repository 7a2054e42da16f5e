//! Schema evolution by the rules of `schemas/README.md`: what a new
//! version of a record schema may change so that new readers read old data
//! and old readers read new data.
//!
//! Allowed: adding a field with a default; documentation. Refused: removing
//! a field, adding one without a default, changing a field's type (its
//! Parsing Canonical Form, logical type included) or its default, adding or
//! removing an enum symbol, renaming the record.

use serde_json::Value;

use super::fingerprint::parsing_canonical_form;

/// The ways `new` breaks compatibility with `old` (both record schemas as
/// JSON); empty when it keeps it.
pub fn incompatibilities(old: &Value, new: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let name = |schema: &Value| schema.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    if name(old) != name(new) {
        problems.push(format!("the record is renamed from {} to {}", name(old), name(new)));
    }
    let fields = |schema: &Value| schema.get("fields").and_then(Value::as_array).cloned().unwrap_or_default();
    let (old_fields, new_fields) = (fields(old), fields(new));
    let field_name = |field: &Value| field.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
    for old_field in &old_fields {
        let field = field_name(old_field);
        let Some(new_field) = new_fields.iter().find(|candidate| field_name(candidate) == field) else {
            problems.push(format!("field {field} is removed"));
            continue;
        };
        let (old_type, new_type) = (&old_field["type"], &new_field["type"]);
        if type_form(old_type) != type_form(new_type) {
            problems.push(format!(
                "field {field} changes type from {} to {}",
                type_form(old_type),
                type_form(new_type)
            ));
        }
        if old_field.get("default") != new_field.get("default") {
            problems.push(format!("field {field} changes its default"));
        }
    }
    for new_field in &new_fields {
        let field = field_name(new_field);
        let added = !old_fields.iter().any(|candidate| field_name(candidate) == field);
        if added && new_field.get("default").is_none() {
            problems.push(format!("field {field} is added without a default"));
        }
    }
    problems
}

/// A type as compared: its canonical form with the logical types kept (a
/// timestamp that becomes a plain long changes meaning).
fn type_form(schema: &Value) -> String {
    format!("{}{}", parsing_canonical_form(schema), logical_types(schema))
}

fn logical_types(schema: &Value) -> String {
    match schema {
        Value::Object(members) => {
            let own = members.get("logicalType").and_then(Value::as_str).map(|logical| format!("<{logical}>"));
            let nested: String = members.values().map(logical_types).collect();
            format!("{}{nested}", own.unwrap_or_default())
        }
        Value::Array(items) => items.iter().map(logical_types).collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(fields: Value) -> Value {
        json!({"type": "record", "name": "R", "namespace": "gpuledger", "fields": fields})
    }

    #[test]
    fn an_optional_field_with_a_default_and_new_docs_are_compatible() {
        let old = record(json!([{"name": "a", "type": "long"}]));
        let new = record(json!([
            {"name": "a", "type": "long", "doc": "now documented"},
            {"name": "b", "type": ["null", "string"], "default": null}
        ]));
        assert_eq!(incompatibilities(&old, &new), Vec::<String>::new());
    }

    #[test]
    fn removing_adding_without_default_and_changing_a_type_are_refused() {
        let old = record(json!([
            {"name": "a", "type": "long"},
            {"name": "b", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "c", "type": "string"},
            {"name": "d", "type": ["null", "string"], "default": null},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x"]}}
        ]));
        let new = record(json!([
            {"name": "a", "type": "int"},
            {"name": "b", "type": "long"},
            {"name": "d", "type": ["null", "string"], "default": "none"},
            {"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["x", "y"]}},
            {"name": "f", "type": "string"}
        ]));
        let problems = incompatibilities(&old, &new);
        for expected in [
            "field a changes type",
            "field b changes type",
            "field c is removed",
            "field d changes its default",
            "field e changes type",
            "field f is added without a default",
        ] {
            assert!(problems.iter().any(|problem| problem.starts_with(expected)), "{expected}: {problems:?}");
        }
        assert_eq!(problems.len(), 6, "{problems:?}");
    }
}

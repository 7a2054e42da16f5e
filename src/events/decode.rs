//! From a parsed CloudEvent to an [`Event`], with the stateless checks of
//! spec §5 in their order: envelope → known type for its topic → data schema
//! → field validity. The first failure decides the reason.
//!
//! | check | reason |
//! |---|---|
//! | not an object, `specversion` ≠ "1.0", missing/mistyped `id`, `source`, `type`, `time`, `subject` (deals, usage) | `schema_violation` |
//! | `type` not one of the topic's types | `unknown_type` |
//! | missing/mistyped data field, bad enum, integer beyond 64 bits, unparseable time, `equity` grant with neither deal nor price | `schema_violation` |
//! | out-of-range value, bad currency, `time` ≠ `ended_at`, bad duration, reserved `gpuledger:` source, consideration conflicts | `invalid_field` |
//!
//! The stateful checks (`max_future`, `too_old`, duplicates, business rules)
//! belong to the fold.

use serde_json::{Map, Value};

use super::{
    canonical, reject, Consideration, CreditGranted, DealSigned, Decoded, Event, GpuUsage, Payload, RatePublished,
    Reason, Rejection, Tier, Topic,
};
use crate::units::{parse_rfc3339, Millis, DAY_MS};

/// Usage may last at most 31 days (exactly 31 is allowed).
pub const MAX_USAGE_MS: Millis = 31 * DAY_MS;

/// Sources starting with this are the processor's own (its ticks, expiries).
pub const RESERVED_SOURCE_PREFIX: &str = "gpuledger:";

pub fn decode_value(topic: Topic, value: &Value) -> Decoded {
    let Some(object) = value.as_object() else {
        return Decoded { time: None, event: reject(Reason::SchemaViolation, "a CloudEvent must be a JSON object") };
    };
    // The event time orders the merge even when a later check refuses the
    // record, so it is read first.
    let time = object.get("time").and_then(Value::as_str).and_then(parse_rfc3339);
    Decoded { time, event: decode_object(topic, value, object) }
}

fn decode_object(topic: Topic, value: &Value, object: &Map<String, Value>) -> Result<Event, Rejection> {
    let envelope = Fields { object, prefix: "" };
    match object.get("specversion") {
        Some(Value::String(version)) if version == "1.0" => {}
        Some(Value::String(version)) => {
            return reject(Reason::SchemaViolation, format!("specversion must be \"1.0\", not {version:?}"))
        }
        _ => return reject(Reason::SchemaViolation, "missing or mistyped field specversion"),
    }
    let id = envelope.required_id("id")?;
    let source = envelope.required_id("source")?;
    let type_name = envelope.required_str("type")?;
    let time = envelope.required_time("time")?;
    let subject = envelope.optional_str("subject")?;

    let known = matches!(
        (topic, type_name),
        (Topic::Deals, "gpuledger.deal.signed" | "gpuledger.credit.granted" | "gpuledger.grant.extended")
            | (Topic::Deals, "gpuledger.grant.revoked" | "gpuledger.deal.cancelled")
            | (Topic::Rates, "gpuledger.rate.published")
            | (Topic::Metering, "gpuledger.gpu.usage" | "gpuledger.clock.tick")
    );
    if !known {
        return reject(Reason::UnknownType, format!("type {type_name:?} is not known on the {} topic", topic.name()));
    }
    let keyed = matches!(topic, Topic::Deals) || type_name == "gpuledger.gpu.usage";
    let subject = if keyed {
        match subject {
            Some(subject) if !subject.is_empty() => Some(subject.to_owned()),
            Some(_) => return reject(Reason::SchemaViolation, "subject (the start-up id) must not be empty"),
            None => return reject(Reason::SchemaViolation, "missing field subject (the start-up id)"),
        }
    } else {
        None
    };

    let payload = if type_name == "gpuledger.clock.tick" {
        Payload::ClockTick
    } else {
        let data = match object.get("data") {
            Some(Value::Object(data)) => Fields { object: data, prefix: "data." },
            Some(Value::Null) | None => return reject(Reason::SchemaViolation, "missing field data"),
            Some(_) => return reject(Reason::SchemaViolation, "field data must be an object"),
        };
        decode_data(type_name, &data)?
    };
    if keyed && source.starts_with(RESERVED_SOURCE_PREFIX) {
        return reject(
            Reason::InvalidField,
            format!("source {source:?} uses the prefix {RESERVED_SOURCE_PREFIX:?}, reserved for the processor"),
        );
    }
    if let Payload::GpuUsage(usage) = &payload {
        if time != usage.ended_at {
            return reject(Reason::InvalidField, "time must equal data.ended_at");
        }
    }
    Ok(Event { id: id.to_owned(), source: source.to_owned(), subject, time, digest: canonical::digest(value), payload })
}

fn decode_data(type_name: &str, data: &Fields<'_>) -> Result<Payload, Rejection> {
    Ok(match type_name {
        "gpuledger.deal.signed" => deal_signed(data)?,
        "gpuledger.credit.granted" => credit_granted(data)?,
        "gpuledger.grant.extended" => Payload::GrantExtended {
            grant_id: data.required_id("grant_id")?.to_owned(),
            expires_at: data.required_time("expires_at")?,
        },
        "gpuledger.grant.revoked" => Payload::GrantRevoked { grant_id: data.required_id("grant_id")?.to_owned() },
        "gpuledger.deal.cancelled" => Payload::DealCancelled { deal_id: data.required_id("deal_id")?.to_owned() },
        "gpuledger.rate.published" => rate_published(data)?,
        "gpuledger.gpu.usage" => gpu_usage(data)?,
        other => unreachable!("type {other} passed the topic check without a decoder"),
    })
}

/// `gpuledger.deal.signed`.
fn deal_signed(data: &Fields<'_>) -> Result<Payload, Rejection> {
    let deal = DealSigned {
        deal_id: data.required_id("deal_id")?.to_owned(),
        investor: data.required_str("investor")?.to_owned(),
        cash_amount: data.required_i64("cash_amount")?,
        credit_face_amount: data.required_i64("credit_face_amount")?,
        currency: data.required_str("currency")?.to_owned(),
        equity_fair_value: data.required_i64("equity_fair_value")?,
    };
    at_least(data, "cash_amount", deal.cash_amount, 0)?;
    at_least(data, "credit_face_amount", deal.credit_face_amount, 1)?;
    at_least(data, "equity_fair_value", deal.equity_fair_value, 0)?;
    check_currency(data, &deal.currency)?;
    Ok(Payload::DealSigned(deal))
}

/// `gpuledger.credit.granted`: a grant under a deal (equity) or on its own
/// (cash, promotional, or equity with its own transaction price).
fn credit_granted(data: &Fields<'_>) -> Result<Payload, Rejection> {
    let grant_id = data.required_id("grant_id")?.to_owned();
    let deal_id = data.optional_id("deal_id")?.map(str::to_owned);
    let face_amount = data.required_i64("face_amount")?;
    let currency = data.required_str("currency")?.to_owned();
    let effective_at = data.required_time("effective_at")?;
    let expires_at = data.optional_time("expires_at")?;
    let priority = data.optional_i64("priority")?;
    let consideration = match data.optional_str("consideration")? {
        Some("equity") => Some(Consideration::Equity),
        Some("cash") => Some(Consideration::Cash),
        Some("promotional") => Some(Consideration::Promotional),
        Some(other) => {
            return reject(
                Reason::SchemaViolation,
                format!("data.consideration must be equity, cash or promotional, not {other:?}"),
            )
        }
        None => None,
    };
    let transaction_price = data.optional_i64("transaction_price")?;
    let escrow = data.optional_bool("escrow")?.unwrap_or(false);
    let consideration = match (consideration, &deal_id) {
        (Some(consideration), _) => consideration,
        (None, Some(_)) => Consideration::Equity,
        (None, None) => {
            return reject(Reason::SchemaViolation, "missing field data.consideration (required without a deal)")
        }
    };
    if consideration == Consideration::Equity && deal_id.is_none() && transaction_price.is_none() {
        return reject(Reason::SchemaViolation, "an equity grant needs a deal_id or a transaction_price");
    }
    at_least(data, "face_amount", face_amount, 1)?;
    check_currency(data, &currency)?;
    let priority = priority.unwrap_or(50);
    if !(0..=100).contains(&priority) {
        return reject(Reason::InvalidField, format!("data.priority must be within 0..100, not {priority}"));
    }
    if let Some(price) = transaction_price {
        at_least(data, "transaction_price", price, 0)?;
    }
    if deal_id.is_some() && consideration != Consideration::Equity {
        return reject(Reason::InvalidField, "a grant under a deal must have consideration equity");
    }
    if deal_id.is_some() && transaction_price.is_some() {
        return reject(
            Reason::InvalidField,
            "a grant under a deal takes its price from the deal, not transaction_price",
        );
    }
    if consideration == Consideration::Promotional && transaction_price.is_some() {
        return reject(Reason::InvalidField, "a promotional grant has no transaction_price");
    }
    if let Some(expires_at) = expires_at {
        if expires_at <= effective_at {
            return reject(Reason::InvalidField, "data.expires_at must be after data.effective_at");
        }
    }
    Ok(Payload::CreditGranted(CreditGranted {
        grant_id,
        deal_id,
        face_amount,
        currency,
        effective_at,
        expires_at,
        priority: priority as u8,
        consideration,
        transaction_price,
        escrow,
    }))
}

/// `gpuledger.rate.published`.
fn rate_published(data: &Fields<'_>) -> Result<Payload, Rejection> {
    let rate = RatePublished {
        gpu_model: data.required_id("gpu_model")?.to_owned(),
        region: data.required_id("region")?.to_owned(),
        tier: data.required_tier("tier")?,
        currency: data.required_str("currency")?.to_owned(),
        price_per_gpu_hour: data.required_i64("price_per_gpu_hour")?,
        effective_from: data.required_time("effective_from")?,
        min_billable_seconds: data.optional_i64("min_billable_seconds")?.unwrap_or(0),
    };
    check_currency(data, &rate.currency)?;
    at_least(data, "price_per_gpu_hour", rate.price_per_gpu_hour, 0)?;
    at_least(data, "min_billable_seconds", rate.min_billable_seconds, 0)?;
    Ok(Payload::RatePublished(rate))
}

/// `gpuledger.gpu.usage`: at least one GPU, at most 31 days.
fn gpu_usage(data: &Fields<'_>) -> Result<Payload, Rejection> {
    let usage = GpuUsage {
        cluster_id: data.required_id("cluster_id")?.to_owned(),
        region: data.required_id("region")?.to_owned(),
        gpu_model: data.required_id("gpu_model")?.to_owned(),
        tier: data.required_tier("tier")?,
        gpu_count: data.required_i64("gpu_count")?,
        started_at: data.required_time("started_at")?,
        ended_at: data.required_time("ended_at")?,
        job_id: data.optional_str("job_id")?.map(str::to_owned),
    };
    at_least(data, "gpu_count", usage.gpu_count, 1)?;
    if usage.ended_at <= usage.started_at {
        return reject(Reason::InvalidField, "data.ended_at must be after data.started_at");
    }
    if usage.ended_at - usage.started_at > MAX_USAGE_MS {
        return reject(Reason::InvalidField, "usage may last at most 31 days");
    }
    Ok(Payload::GpuUsage(usage))
}

fn at_least(data: &Fields<'_>, name: &str, value: i64, minimum: i64) -> Result<(), Rejection> {
    if value < minimum {
        return reject(Reason::InvalidField, format!("{}{name} must be >= {minimum}, not {value}", data.prefix));
    }
    Ok(())
}

/// `^[A-Z]{3}$` (spec §2).
pub fn is_currency(text: &str) -> bool {
    text.len() == 3 && text.bytes().all(|byte| byte.is_ascii_uppercase())
}

fn check_currency(data: &Fields<'_>, currency: &str) -> Result<(), Rejection> {
    if !is_currency(currency) {
        return reject(
            Reason::InvalidField,
            format!("{}currency must be three upper-case letters, not {currency:?}", data.prefix),
        );
    }
    Ok(())
}

/// Typed access to the members of a JSON object; `null` means absent.
struct Fields<'a> {
    object: &'a Map<String, Value>,
    prefix: &'static str,
}

impl<'a> Fields<'a> {
    fn present(&self, name: &str) -> Option<&'a Value> {
        self.object.get(name).filter(|value| !value.is_null())
    }

    fn missing(&self, name: &str) -> Rejection {
        Rejection::new(Reason::SchemaViolation, format!("missing field {}{name}", self.prefix))
    }

    fn mistyped(&self, name: &str, expected: &str) -> Rejection {
        Rejection::new(Reason::SchemaViolation, format!("field {}{name} must be {expected}", self.prefix))
    }

    fn optional_str(&self, name: &str) -> Result<Option<&'a str>, Rejection> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(_) => Err(self.mistyped(name, "a string")),
        }
    }

    fn required_str(&self, name: &str) -> Result<&'a str, Rejection> {
        self.optional_str(name)?.ok_or_else(|| self.missing(name))
    }

    /// An identifier: a string that is not empty.
    fn optional_id(&self, name: &str) -> Result<Option<&'a str>, Rejection> {
        match self.optional_str(name)? {
            Some("") => Err(self.mistyped(name, "a non-empty string")),
            other => Ok(other),
        }
    }

    fn required_id(&self, name: &str) -> Result<&'a str, Rejection> {
        self.optional_id(name)?.ok_or_else(|| self.missing(name))
    }

    fn optional_i64(&self, name: &str) -> Result<Option<i64>, Rejection> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Number(number)) => match number.as_i64() {
                Some(integer) => Ok(Some(integer)),
                None if is_integer_literal(&number.to_string()) => Err(Rejection::new(
                    Reason::SchemaViolation,
                    format!("field {}{name} is an integer beyond 64 bits", self.prefix),
                )),
                None => Err(self.mistyped(name, "an integer")),
            },
            Some(_) => Err(self.mistyped(name, "an integer")),
        }
    }

    fn required_i64(&self, name: &str) -> Result<i64, Rejection> {
        self.optional_i64(name)?.ok_or_else(|| self.missing(name))
    }

    fn optional_bool(&self, name: &str) -> Result<Option<bool>, Rejection> {
        match self.present(name) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(_) => Err(self.mistyped(name, "a boolean")),
        }
    }

    fn optional_time(&self, name: &str) -> Result<Option<Millis>, Rejection> {
        match self.optional_str(name)? {
            None => Ok(None),
            Some(text) => match parse_rfc3339(text) {
                Some(instant) => Ok(Some(instant)),
                None => Err(Rejection::new(
                    Reason::SchemaViolation,
                    format!("field {}{name} is not an RFC 3339 time: {text:?}", self.prefix),
                )),
            },
        }
    }

    fn required_time(&self, name: &str) -> Result<Millis, Rejection> {
        self.optional_time(name)?.ok_or_else(|| self.missing(name))
    }

    fn required_tier(&self, name: &str) -> Result<Tier, Rejection> {
        let text = self.required_str(name)?;
        Tier::parse(text).ok_or_else(|| {
            Rejection::new(
                Reason::SchemaViolation,
                format!("field {}{name} must be on_demand, reserved or spot, not {text:?}", self.prefix),
            )
        })
    }
}

fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
}

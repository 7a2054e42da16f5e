//! What-if pricing: the same deals and usage folded a second time with
//! other rate cards, taken by the merge rule among the actual order.

use std::path::Path;

use anyhow::{bail, Context as _};

use super::output::ReplaySink;
use crate::drive::{Flow, Sink as _, Step};
use crate::events::avro::SchemaRegistry;
use crate::events::{decode_record, Decoded, InputRecord, Limits, Topic};
use crate::fold::{Poisoned, Task};
use crate::records::Output;
use crate::units::Millis;
use crate::whatif::{Comparison, Side};

/// The what-if fold of one task: the alternative rate cards, fed by the
/// merge rule in front of the actual deals and usage.
pub(super) struct WhatIf {
    pub(super) task: Task,
    pub(super) rates: Vec<(InputRecord, Decoded)>,
    pub(super) next_rate: usize,
}

impl WhatIf {
    /// Folds the alternative rate cards the merge rule takes before a
    /// record at `before` (all that remain for `None`); with `--until`,
    /// cards later than it are left out like every other record. Outputs
    /// are appended with their JSON bytes, as [`Task::fold_encoded`] gives them.
    pub(super) fn take_rates(
        &mut self,
        before: Option<Millis>,
        until: Option<Millis>,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) -> Result<(), Poisoned> {
        while let Some((record, decoded)) = self.rates.get(self.next_rate) {
            if let (Some(time), Some(before)) = (decoded.time, before) {
                if time > before {
                    break;
                }
            }
            self.next_rate += 1;
            if until.is_some_and(|until| decoded.time.is_none_or(|time| time > until)) {
                continue;
            }
            self.task.fold_encoded(record, decoded.clone(), outputs, encoded)?;
        }
        Ok(())
    }
}

/// A record that failed inside the fold of the actual or the what-if task.
#[derive(Clone, Debug)]
pub(super) enum Failed {
    Actual(Poisoned),
    WhatIf(Poisoned),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Actual(poison) => write!(formatter, "{poison}"),
            Failed::WhatIf(poison) => write!(formatter, "{poison} (what-if rates)"),
        }
    }
}

/// Reads an alternative rate card file: one rates-topic record per line,
/// judged by the fold as the rates topic's records are (a rejected line
/// becomes a dead letter of the what-if world). Fails when no line is a
/// rate card at all.
pub(super) fn read_rates(path: &Path, limits: &Limits) -> crate::Result<Vec<(InputRecord, Decoded)>> {
    let text = std::fs::read(path).with_context(|| format!("reading what-if rates {}", path.display()))?;
    let registry = SchemaRegistry::builtin();
    let mut rates = Vec::new();
    let mut rejected = Vec::new();
    for (index, line) in text.split(|byte| *byte == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let decoded = decode_record(Topic::Rates, line, &registry, limits);
        if let Err(rejection) = &decoded.event {
            rejected.push(format!("line {}: {rejection}", index + 1));
        }
        let record = InputRecord {
            topic: Topic::Rates,
            partition: 0,
            offset: rates.len() as i64,
            // The key a producer would give it, as on the rates topic.
            key: crate::events::json::parse(line).ok().and_then(|value| crate::batch::record_key(Topic::Rates, &value)),
            value: line.to_vec(),
            headers: Vec::new(),
        };
        rates.push((record, decoded));
    }
    if rejected.len() == rates.len() {
        bail!(
            "what-if rates {} has no valid rate card ({})",
            path.display(),
            rejected.first().map_or("empty", String::as_str)
        );
    }
    if !rejected.is_empty() {
        tracing::warn!(file = %path.display(), rejected = rejected.len(), first = %rejected[0], "what-if rate lines rejected; they are dead letters of the what-if run");
    }
    Ok(rates)
}

/// The what-if step: each record folds into the actual task (its outputs
/// only compared) and, after the alternative rate cards the merge rule
/// takes before it, into the what-if task, whose outputs are written and
/// whose state is persisted.
pub(super) struct WhatIfStep<'s, 'a> {
    pub(super) actual: &'s mut Task,
    pub(super) what_if: &'s mut WhatIf,
    pub(super) sink: &'s mut ReplaySink<'a>,
    pub(super) comparison: &'s mut Comparison,
    pub(super) until: Option<Millis>,
    pub(super) alternative: Vec<Output>,
    pub(super) outputs: Vec<Output>,
    pub(super) encoded: Vec<Vec<u8>>,
}

impl Step for WhatIfStep<'_, '_> {
    type Poison = Failed;

    fn fold(&mut self, record: InputRecord, decoded: Decoded) -> crate::Result<Result<Flow, Failed>> {
        if let Err(poison) = self.actual.fold(&record, decoded.clone(), &mut self.alternative) {
            return Ok(Err(Failed::Actual(poison)));
        }
        self.comparison.absorb(Side::Actual, &self.alternative);
        self.alternative.clear();
        if record.topic != Topic::Rates {
            // A record without a time is taken at once (spec §4): no rate goes first.
            if let Some(time) = decoded.time {
                let (outputs, encoded) = (&mut self.outputs, &mut self.encoded);
                if let Err(poison) = self.what_if.take_rates(Some(time), self.until, outputs, encoded) {
                    return Ok(Err(Failed::WhatIf(poison)));
                }
            }
            let folded = self.what_if.task.fold_encoded(&record, decoded, &mut self.outputs, &mut self.encoded);
            if let Err(poison) = folded {
                return Ok(Err(Failed::WhatIf(poison)));
            }
            self.comparison.absorb(Side::WhatIf, &self.outputs);
        }
        self.sink.write(&mut self.what_if.task, &record, &mut self.outputs, &mut self.encoded)?;
        self.outputs.clear();
        self.encoded.clear();
        Ok(Ok(self.sink.folded(&mut self.what_if.task)?))
    }

    fn left_out(&mut self, record: &InputRecord) -> crate::Result<()> {
        self.sink.left_out(record)
    }
}

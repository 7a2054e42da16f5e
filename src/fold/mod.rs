//! The ledger fold: `(state, record) -> (state', outputs)`, pure and
//! deterministic (spec §4–§9). No I/O, no wall clock, no randomness, and no
//! hash-map iteration order in any output.
//!
//! # Layout
//! - [`state`]: the data a task folds into;
//! - [`merge`]: which input's head a task takes next (§4);
//! - this module: [`Task`], the checks that need state (§5), the clocks and
//!   timed effects (§4), and the business rules (§6–§9) in `rules`.
//!
//! A [`Task`] owns one partition's [`TaskState`]. Feeding it records in merge
//! order with [`Task::fold`] appends their outputs; [`Task::take_changes`]
//! says what a commit must persist.

mod balances;
mod booking;
mod dead_letter;
pub mod merge;
mod rules;
pub mod state;
mod usage;

pub use balances::balances_of;
pub use dead_letter::dead_letter;

use std::collections::BTreeSet;

use crate::events::{reject, Decoded, Event, InputRecord, Payload, Reason, Rejection, Topic};
use crate::records::{Balances, InputOffset, Output};
use crate::units::{Millis, DAY_MS, HOUR_MS};
use state::{identity_key, Changes, Remembered, Startup, TaskState};

/// The knobs of the ledger rules; all durations in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoldConfig {
    /// How long usage identities are remembered; older usage is `too_old`.
    pub dedup_window: Millis,
    /// Delay after `expires_at` before a grant expires.
    pub expiry_grace: Millis,
    /// Delay after a month's end before it closes.
    pub close_grace: Millis,
    /// How far ahead of the clock an event may be.
    pub max_future: Millis,
    /// The calendar accepted for every time of an event (inclusive);
    /// outside it an event is `invalid_field` (spec §5, v1.1).
    pub earliest_time: Millis,
    pub latest_time: Millis,
    /// Tick `source`s accepted; `None` accepts any (spec §5, v1.1).
    pub tick_sources: Option<std::sync::Arc<[String]>>,
    /// Largest step a tick may move the task's latest tick; `None` is
    /// unlimited (spec §5, v1.1).
    pub max_tick_jump: Option<Millis>,
    /// Input bounds, and the dead letter's value prefix.
    pub limits: crate::events::Limits,
    /// Fault injection for tests: panic after folding the record at this
    /// (topic, offset), so the isolation of `internal_error` can be shown.
    #[doc(hidden)]
    pub inject_panic_at: Option<(Topic, i64)>,
}

/// 1970-01-01T00:00:00.000Z, the default earliest accepted time.
pub const DEFAULT_EARLIEST_TIME: Millis = 0;
/// 9999-12-31T23:59:59.999Z: the latest instant a `YYYY` year can name,
/// also the latest accepted time whatever is configured.
pub const LATEST_REPRESENTABLE_TIME: Millis = 253_402_300_799_999;
/// 0000-01-01T00:00:00.000Z: the earliest instant a `YYYY` year can name.
pub const EARLIEST_REPRESENTABLE_TIME: Millis = -62_167_219_200_000;

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            dedup_window: 35 * DAY_MS,
            expiry_grace: HOUR_MS,
            close_grace: 72 * HOUR_MS,
            max_future: 24 * HOUR_MS,
            earliest_time: DEFAULT_EARLIEST_TIME,
            latest_time: LATEST_REPRESENTABLE_TIME,
            tick_sources: None,
            max_tick_jump: None,
            limits: crate::events::Limits::default(),
            inject_panic_at: None,
        }
    }
}

impl FoldConfig {
    /// The first time of `event` outside the accepted calendar, by name.
    fn outside_calendar(&self, event: &Event) -> Option<(&'static str, Millis)> {
        event.times().into_iter().flatten().find(|(_, time)| *time < self.earliest_time || *time > self.latest_time)
    }

    /// The `invalid_field` refusal of an event with a time outside the
    /// calendar (only called once [`FoldConfig::outside_calendar`] found one).
    fn calendar_rejection(&self, event: &Event) -> Result<(), Rejection> {
        let Some((name, time)) = self.outside_calendar(event) else { return Ok(()) };
        reject(
            Reason::InvalidField,
            format!(
                "{name} {} is outside the accepted calendar {} .. {}",
                crate::units::format_millis(time),
                crate::units::format_millis(self.earliest_time),
                crate::units::format_millis(self.latest_time)
            ),
        )
    }
}

/// `grant_expiring` fires this long before `expires_at`.
pub const EXPIRING_NOTICE: Millis = 30 * DAY_MS;

/// Counters a task keeps for metrics and progress lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldStats {
    pub records: u64,
    pub usage_accepted: u64,
    pub dead_letters: u64,
    pub duplicates_dropped: u64,
    pub ticks: u64,
}

pub struct Task {
    config: FoldConfig,
    state: TaskState,
    changes: Changes,
    stats: FoldStats,
    /// Records that failed inside the fold, by (topic, offset): folded as
    /// `internal_error` dead letters (see [`Task::fold_encoded`]).
    poisoned: std::collections::BTreeMap<(Topic, i64), String>,
}

/// A record whose folding failed inside the processor (a panic): the task
/// that tried it is to be dropped and rebuilt (see [`Task::fold_encoded`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("internal error folding {} partition {partition} offset {offset}: {message}", topic.name())]
pub struct Poisoned {
    pub topic: Topic,
    pub partition: u32,
    pub offset: i64,
    pub message: String,
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|text| (*text).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    format!("the processor failed deciding this record: {text}")
}

impl Task {
    pub fn new(config: FoldConfig, state: TaskState) -> Task {
        Task {
            config,
            state,
            changes: Changes::default(),
            stats: FoldStats::default(),
            poisoned: std::collections::BTreeMap::new(),
        }
    }

    pub fn state(&self) -> &TaskState {
        &self.state
    }

    pub fn config(&self) -> &FoldConfig {
        &self.config
    }

    pub fn stats(&self) -> FoldStats {
        self.stats
    }

    pub fn into_state(self) -> TaskState {
        self.state
    }

    /// What changed since the last call; the caller persists it.
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = std::mem::take(&mut self.changes);
        for id in &changes.startups {
            let Some(startup) = self.state.startups.get_mut(id) else { continue };
            let dirty = std::mem::take(&mut startup.dirty);
            changes.grants.extend(dirty.grants.into_iter().map(|grant| (id.clone(), grant)));
            changes.deals.extend(dirty.deals.into_iter().map(|deal| (id.clone(), deal)));
        }
        changes
    }

    /// Folds one record, taken by the merge, appending its outputs, and
    /// absorbs them into the task's output digest. A failure inside the
    /// fold is returned as [`Poisoned`]: the task must then be dropped.
    pub fn fold(&mut self, record: &InputRecord, decoded: Decoded, outputs: &mut Vec<Output>) -> Result<(), Poisoned> {
        self.fold_encoded(record, decoded, outputs, &mut Vec::new())
    }

    /// [`Task::fold`], also handing back each new output's JSON bytes (one
    /// entry per output, in order): the digest needs them anyway, so a
    /// caller that writes JSON need not encode the records a second time.
    ///
    /// Each record is isolated (spec §5, v1.1 `internal_error`): if deciding
    /// it panics, its outputs are dropped and [`Poisoned`] names it. The
    /// state may then be half-changed, so the caller drops this task,
    /// rebuilds it from its last committed state, marks the record with
    /// [`Task::poison`] and folds again: the record then becomes an
    /// `internal_error` dead letter and the state is as if it had not been
    /// taken. (Snapshotting the state per record would cost more than the
    /// fold; a defect is rare, a rebuild is the existing recovery path.)
    pub fn fold_encoded(
        &mut self,
        record: &InputRecord,
        decoded: Decoded,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) -> Result<(), Poisoned> {
        let first = outputs.len();
        let key = (record.topic, record.offset);
        if let Some(message) = self.poisoned.get(&key) {
            let rejection = Rejection::new(Reason::InternalError, message.clone());
            self.refuse(record, &rejection, outputs);
        } else {
            let folded =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.fold_record(record, decoded, outputs)));
            if let Err(panic) = folded {
                outputs.truncate(first);
                let message = panic_message(panic.as_ref());
                tracing::error!(
                    topic = record.topic.name(),
                    partition = record.partition,
                    offset = record.offset,
                    %message,
                    "internal error deciding a record; it will be dead-lettered as internal_error"
                );
                return Err(Poisoned {
                    topic: record.topic,
                    partition: record.partition,
                    offset: record.offset,
                    message,
                });
            }
        }
        for output in &outputs[first..] {
            let mut bytes = Vec::with_capacity(512);
            output.write_json(&mut bytes).expect("writing to memory cannot fail");
            self.state.digest.absorb(&bytes);
            if let Output::Statement(statement) = output {
                let key = (statement.startup.clone(), statement.period.to_string());
                self.changes.statements.insert(key, bytes.clone());
            }
            encoded.push(bytes);
        }
        self.state.folded += 1;
        if self.state.folded.is_multiple_of(state::CHECKPOINT_EVERY) {
            self.changes.checkpoints.push(state::Checkpoint {
                folded: self.state.folded,
                offsets: self.state.offsets,
                digest: self.state.digest,
            });
        }
        Ok(())
    }

    /// Marks a record (by topic and offset) that failed inside the fold:
    /// when folded, it becomes an `internal_error` dead letter with
    /// `message` as its detail, and changes nothing else.
    pub fn poison(&mut self, poisoned: &Poisoned) {
        self.poisoned.insert((poisoned.topic, poisoned.offset), poisoned.message.clone());
    }

    /// Takes a record without applying it: its offset moves, and it is a
    /// dead letter (rates: written by partition 0's task only, §5).
    fn refuse(&mut self, record: &InputRecord, rejection: &Rejection, outputs: &mut Vec<Output>) {
        self.stats.records += 1;
        self.state.offsets[record.topic] = record.offset + 1;
        self.changes.task_meta = true;
        self.write_dead_letter(record, rejection, outputs);
    }

    /// Every task reads the whole rates topic and decides alike; only
    /// partition 0's task writes the rates' dead letters (§5.5).
    fn write_dead_letter(&mut self, record: &InputRecord, rejection: &Rejection, outputs: &mut Vec<Output>) {
        if record.topic != Topic::Rates || self.state.partition == 0 {
            self.stats.dead_letters += 1;
            let value_limit = self.config.limits.dead_letter_value_bytes;
            outputs.push(Output::DeadLetter(dead_letter(record, rejection, value_limit)));
        }
    }

    fn fold_record(&mut self, record: &InputRecord, decoded: Decoded, outputs: &mut Vec<Output>) {
        self.stats.records += 1;
        let next = &mut self.state.offsets[record.topic];
        debug_assert!(record.offset >= *next, "records are folded in log order");
        *next = record.offset + 1;
        self.changes.task_meta = true;
        let result = match decoded.event {
            Err(rejection) => Err(rejection),
            Ok(event) => match (&event.payload, record.topic) {
                (Payload::RatePublished(_), _) => self.fold_rate(&event),
                _ if self.config.outside_calendar(&event).is_some() => self.config.calendar_rejection(&event),
                (Payload::ClockTick, _) => self.fold_tick(&event, outputs),
                _ => self.fold_keyed(record.topic, &event, outputs),
            },
        };
        if self.config.inject_panic_at == Some((record.topic, record.offset)) {
            panic!("injected panic (inject_panic_at {}:{})", record.topic.name(), record.offset);
        }
        if let Err(rejection) = result {
            self.write_dead_letter(record, &rejection, outputs);
        }
    }

    fn fold_rate(&mut self, event: &Event) -> Result<(), Rejection> {
        let Payload::RatePublished(rate) = &event.payload else { unreachable!("fold_rate takes rates") };
        let identity = identity_key(Topic::Rates, "", &event.source, &event.id);
        let rates = &mut self.state.rates;
        if let Some(digest) = rates.remembered.get(&identity) {
            if *digest == event.digest {
                rates.duplicates_dropped += 1;
                return Ok(());
            }
            return reject(Reason::ConflictingDuplicate, "a different rate was published with this source and id");
        }
        rates.remembered.insert(identity, event.digest);
        self.changes.rate_identities.insert(identity, event.digest);
        let key = (rate.gpu_model.clone(), rate.region.clone(), rate.tier);
        // Same key and effective_from: the later taken wins (§7).
        rates.cards.entry(key.clone()).or_default().insert(
            rate.effective_from,
            state::RateCard {
                currency: rate.currency.clone(),
                price_per_gpu_hour: rate.price_per_gpu_hour,
                min_billable_seconds: rate.min_billable_seconds,
            },
        );
        self.changes.rate_cards.insert((key, rate.effective_from));
        Ok(())
    }

    /// A tick moves the clock of every start-up of the task (§4), unless a
    /// configured guard refuses it (§5, v1.1).
    fn fold_tick(&mut self, event: &Event, outputs: &mut Vec<Output>) -> Result<(), Rejection> {
        let time = event.time;
        if let Some(sources) = &self.config.tick_sources {
            if !sources.contains(&event.source) {
                return reject(
                    Reason::InvalidField,
                    format!("tick source {:?} is not in ledger.tick_sources", event.source),
                );
            }
        }
        if let Some(jump) = self.config.max_tick_jump {
            // Against the latest tick; before the first, against the
            // latest start-up clock (nothing to compare with: accepted).
            let reference =
                self.state.tick_clock.or_else(|| self.state.startups.values().map(|startup| startup.clock).max());
            if let Some(reference) = reference {
                if time > reference.saturating_add(jump) {
                    return reject(
                        Reason::InvalidField,
                        format!(
                            "tick at {} moves the task's clock more than ledger.max_tick_jump ({jump} ms) past {}",
                            crate::units::format_millis(time),
                            crate::units::format_millis(reference)
                        ),
                    );
                }
            }
        }
        self.stats.ticks += 1;
        if self.state.tick_clock.is_some_and(|latest| time <= latest) {
            return Ok(());
        }
        self.state.tick_clock = Some(time);
        let mut moved = BTreeSet::new();
        for (id, startup) in &mut self.state.startups {
            if startup.clock < time {
                startup.clock = time;
                forget_old_usage(startup, &self.config, &mut self.changes);
                moved.insert(id.clone());
            }
        }
        self.changes.startups.extend(moved.iter().cloned());
        self.fire_due_effects(&moved, outputs);
        Ok(())
    }

    fn fold_keyed(&mut self, topic: Topic, event: &Event, outputs: &mut Vec<Output>) -> Result<(), Rejection> {
        let startup_id = event.startup();
        let own_clock = self.state.startups.get(startup_id).map(|startup| startup.clock);
        // max_future: against max(start-up clock, latest tick), when either exists.
        if let Some(reference) = own_clock.max(self.state.tick_clock) {
            if event.time > reference.saturating_add(self.config.max_future) {
                return reject(
                    Reason::InvalidField,
                    format!("time is more than max_future ({} ms) ahead of the clock", self.config.max_future),
                );
            }
        }
        let clock = own_clock.or(self.state.tick_clock);
        let is_usage = matches!(event.payload, Payload::GpuUsage(_));
        let window_start = clock.map(|clock| clock.saturating_sub(self.config.dedup_window));
        if is_usage && window_start.is_some_and(|start| event.time < start) {
            return reject(Reason::TooOld, "usage is older than the dedup window behind the start-up's clock");
        }
        let identity = identity_key(topic, startup_id, &event.source, &event.id);
        if let Some(startup) = self.state.startups.get_mut(startup_id) {
            if let Some(remembered) = startup.dedup.remembered.get(&identity) {
                let still_remembered = !remembered.usage || window_start.is_none_or(|start| remembered.time >= start);
                if still_remembered {
                    if remembered.digest != event.digest {
                        return reject(
                            Reason::ConflictingDuplicate,
                            "a different event was accepted with this source and id",
                        );
                    }
                    startup.duplicates_dropped += 1;
                    self.stats.duplicates_dropped += 1;
                    self.changes.startup(startup_id);
                    self.changes.balance(startup_id);
                    return Ok(());
                }
            }
        }

        // The record passed every check before the business rules: its time
        // moves the start-up's clock, and what that makes due fires first.
        let tick_clock = self.state.tick_clock;
        let startup = self
            .state
            .startups
            .entry(startup_id.to_owned())
            .or_insert_with(|| Startup::new(startup_id, tick_clock.unwrap_or(event.time)));
        if event.time > startup.clock {
            startup.clock = event.time;
            forget_old_usage(startup, &self.config, &mut self.changes);
        }
        self.changes.startup(startup_id);
        self.fire_due_effects_of(startup_id, outputs);

        let startup = self.state.startups.get_mut(startup_id).expect("created above");
        let applied = rules::apply(startup, &self.state.rates, topic, event, outputs, &mut self.stats);
        applied?;
        let remembered = Remembered { time: event.time, usage: is_usage, digest: event.digest };
        startup.dedup.remembered.insert(identity, remembered);
        if is_usage {
            startup.dedup.usage_by_time.insert((event.time, identity));
        }
        self.changes.identity(startup_id, identity, Some(remembered));
        self.changes.balance(startup_id);
        // Effects that applying it made due (a grant already past its expiry).
        self.fire_due_effects_of(startup_id, outputs);
        Ok(())
    }

    /// [`Task::fire_due_effects`] for one start-up, without allocating when
    /// nothing is due (the common case, checked on every event).
    fn fire_due_effects_of(&mut self, startup_id: &str, outputs: &mut Vec<Output>) {
        if rules::next_effect(&self.state.startups[startup_id], &self.config).is_some() {
            self.fire_due_effects(&BTreeSet::from([startup_id.to_owned()]), outputs);
        }
    }

    /// Fires every effect due at or before each start-up's clock, in order
    /// of due time, then kind, start-up id and grant id (§4).
    fn fire_due_effects(&mut self, scope: &BTreeSet<String>, outputs: &mut Vec<Output>) {
        // Ordered by (due, kind, start-up id, grant id or month).
        let mut queue = BTreeSet::new();
        for id in scope {
            if let Some(effect) = rules::next_effect(&self.state.startups[id], &self.config) {
                queue.insert((effect.due, effect.kind, id.clone(), effect.target));
            }
        }
        while let Some((due, kind, id, target)) = queue.pop_first() {
            let startup = self.state.startups.get_mut(&id).expect("effects come from known start-ups");
            let effect = rules::Effect { due, kind, target };
            if rules::fire(startup, &effect, &self.config, outputs) {
                self.changes.balance(&id);
            }
            self.changes.startup(&id);
            if let Some(next) = rules::next_effect(startup, &self.config) {
                queue.insert((next.due, next.kind, id, next.target));
            }
        }
    }

    /// The balances record of one start-up, with this task's offsets.
    pub fn balances(&self, startup_id: &str, topics: &TopicNames) -> Option<Balances> {
        let startup = self.state.startups.get(startup_id)?;
        let mut balances = balances_of(startup, self.state.partition, &self.offsets(topics));
        balances.digest = self.state.digest.hex();
        Some(balances)
    }

    /// This task's next input offsets, as records name them.
    pub fn offsets(&self, topics: &TopicNames) -> Vec<InputOffset> {
        Topic::ALL
            .into_iter()
            .map(|topic| InputOffset {
                topic: topics.name(topic).to_owned(),
                partition: if topic == Topic::Rates { 0 } else { self.state.partition },
                offset: self.state.offsets[topic],
            })
            .collect()
    }
}

/// The names the inputs go by in output records (batch mode: `rates`,
/// `deals`, `metering`; live: the Kafka topics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicNames {
    pub rates: String,
    pub deals: String,
    pub metering: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        TopicNames { rates: "rates".into(), deals: "deals".into(), metering: "metering".into() }
    }
}

impl TopicNames {
    pub fn name(&self, topic: Topic) -> &str {
        match topic {
            Topic::Rates => &self.rates,
            Topic::Deals => &self.deals,
            Topic::Metering => &self.metering,
        }
    }
}

/// Forgets the usage identities that fell out of the dedup window.
fn forget_old_usage(startup: &mut Startup, config: &FoldConfig, changes: &mut Changes) {
    let window_start = startup.clock.saturating_sub(config.dedup_window);
    while let Some(&(time, identity)) = startup.dedup.usage_by_time.first() {
        if time >= window_start {
            break;
        }
        startup.dedup.usage_by_time.pop_first();
        startup.dedup.remembered.remove(&identity);
        changes.identity(&startup.id, identity, None);
    }
}

#[cfg(test)]
mod tests;

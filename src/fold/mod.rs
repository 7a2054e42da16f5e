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

pub mod merge;
mod rules;
pub mod state;

use std::collections::BTreeSet;

use crate::events::{reject, Decoded, Event, InputRecord, Payload, Reason, Rejection, Topic};
use crate::records::{base64, Balances, CurrencyBalance, DeadLetter, GrantBalance, Header, InputOffset, Output};
use crate::units::{Millis, Ts, DAY_MS, HOUR_MS};
use state::{identity_key, Changes, Remembered, Startup, TaskState};

/// The knobs of the ledger rules; all durations in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FoldConfig {
    /// How long usage identities are remembered; older usage is `too_old`.
    pub dedup_window: Millis,
    /// Delay after `expires_at` before a grant expires.
    pub expiry_grace: Millis,
    /// Delay after a month's end before it closes.
    pub close_grace: Millis,
    /// How far ahead of the clock an event may be.
    pub max_future: Millis,
}

impl Default for FoldConfig {
    fn default() -> Self {
        FoldConfig {
            dedup_window: 35 * DAY_MS,
            expiry_grace: HOUR_MS,
            close_grace: 72 * HOUR_MS,
            max_future: 24 * HOUR_MS,
        }
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
}

impl Task {
    pub fn new(config: FoldConfig, state: TaskState) -> Task {
        Task { config, state, changes: Changes::default(), stats: FoldStats::default() }
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
        std::mem::take(&mut self.changes)
    }

    /// Folds one record, taken by the merge, appending its outputs, and
    /// absorbs them into the task's output digest.
    pub fn fold(&mut self, record: &InputRecord, decoded: Decoded, outputs: &mut Vec<Output>) {
        self.fold_encoded(record, decoded, outputs, &mut Vec::new());
    }

    /// [`Task::fold`], also handing back each new output's JSON bytes (one
    /// entry per output, in order): the digest needs them anyway, so a
    /// caller that writes JSON need not encode the records a second time.
    pub fn fold_encoded(
        &mut self,
        record: &InputRecord,
        decoded: Decoded,
        outputs: &mut Vec<Output>,
        encoded: &mut Vec<Vec<u8>>,
    ) {
        let first = outputs.len();
        self.fold_record(record, decoded, outputs);
        for output in &outputs[first..] {
            let mut bytes = Vec::with_capacity(512);
            output.write_json(&mut bytes).expect("writing to memory cannot fail");
            self.state.digest.absorb(&bytes);
            encoded.push(bytes);
        }
        self.state.folded += 1;
        if self.state.folded % state::CHECKPOINT_EVERY == 0 {
            self.changes.checkpoints.push(state::Checkpoint {
                folded: self.state.folded,
                offsets: self.state.offsets,
                digest: self.state.digest,
            });
        }
    }

    fn fold_record(&mut self, record: &InputRecord, decoded: Decoded, outputs: &mut Vec<Output>) {
        self.stats.records += 1;
        let next = &mut self.state.offsets[record.topic.index()];
        debug_assert!(record.offset >= *next, "records are folded in log order");
        *next = record.offset + 1;
        self.changes.task_meta = true;
        let result = match decoded.event {
            Err(rejection) => Err(rejection),
            Ok(event) => match (&event.payload, record.topic) {
                (Payload::RatePublished(_), _) => self.fold_rate(&event),
                (Payload::ClockTick, _) => {
                    self.fold_tick(event.time, outputs);
                    Ok(())
                }
                _ => self.fold_keyed(record.topic, &event, outputs),
            },
        };
        if let Err(rejection) = result {
            // Every task reads the whole rates topic and decides alike; only
            // partition 0's task writes the rates' dead letters (§5).
            if record.topic != Topic::Rates || self.state.partition == 0 {
                self.stats.dead_letters += 1;
                outputs.push(Output::DeadLetter(dead_letter(record, &rejection)));
            }
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

    /// A tick moves the clock of every start-up of the task (§4).
    fn fold_tick(&mut self, time: Millis, outputs: &mut Vec<Output>) {
        self.stats.ticks += 1;
        if self.state.tick_clock.is_some_and(|latest| time <= latest) {
            return;
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
                offset: self.state.offsets[topic.index()],
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

pub fn balances_of(startup: &Startup, task: u32, offsets: &[InputOffset]) -> Balances {
    let currencies = startup
        .figures
        .iter()
        .map(|(currency, figures)| {
            let grants: Vec<_> = startup.grants.values().filter(|grant| &grant.currency == currency).collect();
            let open = || grants.iter().filter(|grant| grant.is_open());
            let contract_liability: i64 = open().map(|grant| grant.unearned()).sum();
            let unallocated: i64 = startup
                .deals
                .values()
                .filter(|deal| &deal.currency == currency && !deal.cancelled)
                .map(|deal| deal.transaction_price - deal.granted_price)
                .sum();
            CurrencyBalance {
                currency: currency.clone(),
                granted_face: figures.granted_face,
                consumed_face: figures.consumed_face,
                expired_face: figures.expired_face,
                revoked_face: figures.revoked_face,
                remaining_face: grants.iter().map(|grant| grant.remaining_face()).sum(),
                usage_cost: figures.usage_cost,
                usage_count: figures.usage_count,
                overage: figures.overage,
                revenue_compute: figures.revenue_compute,
                revenue_overage: figures.revenue_overage,
                revenue_breakage: figures.revenue_breakage,
                revocation_reversal: figures.revocation_reversal,
                contract_liability,
                escrow_remaining_face: open().filter(|grant| grant.escrow).map(|grant| grant.remaining_face()).sum(),
                rpo: contract_liability + unallocated,
                grants: grants
                    .iter()
                    .map(|grant| GrantBalance {
                        grant_id: grant.grant_id.clone(),
                        deal_id: grant.deal_id.clone(),
                        state: grant.state.as_str().to_owned(),
                        consideration: grant.consideration.as_str().to_owned(),
                        escrow: grant.escrow,
                        priority: grant.priority,
                        effective_at: Ts(grant.effective_at),
                        expires_at: grant.expires_at.map(Ts),
                        face: grant.face,
                        transaction_price: grant.transaction_price,
                        consumed_face: grant.consumed_face,
                        expired_face: grant.expired_face,
                        revoked_face: grant.revoked_face,
                        remaining_face: grant.remaining_face(),
                        revenue_compute: grant.revenue_compute,
                        revenue_breakage: grant.revenue_breakage,
                        revocation_reversal: grant.revocation_reversal,
                    })
                    .collect(),
            }
        })
        .collect();
    Balances {
        startup: startup.id.clone(),
        task,
        clock: Some(Ts(startup.clock)),
        duplicates_dropped: startup.duplicates_dropped,
        offsets: offsets.to_vec(),
        digest: String::new(),
        currencies,
    }
}

fn text_or_base64(bytes: Option<&[u8]>) -> (Option<String>, Option<String>) {
    match bytes {
        None => (None, None),
        Some(bytes) => match std::str::from_utf8(bytes) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (None, Some(base64(bytes))),
        },
    }
}

pub fn dead_letter(record: &InputRecord, rejection: &Rejection) -> DeadLetter {
    let (key, key_base64) = text_or_base64(record.key.as_deref());
    let (value, value_base64) = text_or_base64(Some(&record.value));
    DeadLetter {
        key,
        key_base64,
        value,
        value_base64,
        headers: record
            .headers
            .iter()
            .map(|(name, value)| Header {
                key: name.clone(),
                value: value.as_deref().map(|bytes| String::from_utf8_lossy(bytes).into_owned()),
            })
            .collect(),
        reason: rejection.reason.as_str().to_owned(),
        detail: rejection.detail.clone(),
        topic: record.topic.name().to_owned(),
        partition: record.partition,
        offset: record.offset,
    }
}

#[cfg(test)]
mod tests;

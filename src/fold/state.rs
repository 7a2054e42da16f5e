//! The state a task folds into: plain data, no I/O. The store persists it
//! (one column family per kind, see `store::columns`); the fold only reads
//! and mutates it, and notes what changed so a commit writes only that.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::events::{Consideration, Digest, Tier, Topic};
use crate::records::PeriodFigures;
use crate::units::{Millis, Month};

/// 16 bytes of SHA-256 over an event identity (spec §5): fixed width for
/// RocksDB keys and memory; a collision needs ~2^64 identities.
pub type IdentityKey = [u8; 16];

/// Identity keys are SHA-256 output already: hashing them again (SipHash)
/// is wasted work on the hottest map, so the map uses their first 8 bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrehashedKey(u64);

impl std::hash::Hasher for PrehashedKey {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(29) ^ u64::from_le_bytes(word);
        }
    }

    /// The slice length prefix carries no information (always 16).
    fn write_usize(&mut self, _length: usize) {}
}

pub type IdentityMap<V> = HashMap<IdentityKey, V, std::hash::BuildHasherDefault<PrehashedKey>>;

pub fn identity_key(topic: Topic, startup: &str, source: &str, id: &str) -> IdentityKey {
    let mut hasher = Sha256::new();
    for part in [topic.name(), startup, source, id] {
        hasher.update((part.len() as u32).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let full: [u8; 32] = hasher.finalize().into();
    let mut key = [0u8; 16];
    key.copy_from_slice(&full[..16]);
    key
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    Open,
    Expired,
    Revoked,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Open => "open",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
        }
    }
}

/// Percent thresholds of `grant_consumed` alerts, in the order they fire.
pub const CONSUMED_THRESHOLDS: [u32; 3] = [50, 80, 100];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub deal_id: Option<String>,
    pub currency: String,
    pub consideration: Consideration,
    pub escrow: bool,
    pub priority: u8,
    pub effective_at: Millis,
    pub expires_at: Option<Millis>,
    pub face: i64,
    pub transaction_price: i64,
    pub consumed_face: i64,
    pub expired_face: i64,
    pub revoked_face: i64,
    pub revenue_compute: i64,
    pub revenue_breakage: i64,
    pub revocation_reversal: i64,
    pub state: GrantState,
    /// Bit i set: the alert for `CONSUMED_THRESHOLDS[i]` was written.
    pub consumed_alerts: u8,
    /// The `expires_at` whose `grant_expiring` alert was judged already.
    pub expiring_alerted_for: Option<Millis>,
}

impl Grant {
    pub fn remaining_face(&self) -> i64 {
        self.face - self.consumed_face - self.expired_face - self.revoked_face
    }

    pub fn is_open(&self) -> bool {
        self.state == GrantState::Open
    }

    /// What is still owed as service on this grant.
    pub fn unearned(&self) -> i64 {
        self.transaction_price - self.revenue_compute
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deal {
    pub deal_id: String,
    pub investor: String,
    pub currency: String,
    pub cash_amount: i64,
    /// F_d, the credit commitment.
    pub face: i64,
    /// TP_d = max(0, equity_fair_value - cash_amount).
    pub transaction_price: i64,
    /// Faces ever granted on the deal (revoked and expired included).
    pub granted_face: i64,
    /// Sum of the TP_g of its grants.
    pub granted_price: i64,
    pub cancelled: bool,
}

/// Flows booked into one open month for one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonthFlows {
    pub total: PeriodFigures,
    /// Flows of closed months booked here, by the month they belong to.
    pub adjustments: BTreeMap<Month, PeriodFigures>,
}

/// Closing figures carried from one statement to the next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    pub remaining_face: i64,
    pub contract_liability: i64,
}

/// Which months of a start-up are open, and what is booked in them (§9).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodBook {
    /// The earliest booked month; statements are written from it on.
    pub first: Option<Month>,
    /// The last closed month; every month up to it is closed.
    pub closed_through: Option<Month>,
    pub open: BTreeMap<Month, BTreeMap<String, MonthFlows>>,
    pub carry: BTreeMap<String, Carry>,
}

impl PeriodBook {
    /// The month a booking at `event_month` goes to, and the closed month it
    /// adjusts, if any.
    pub fn booking_month(&self, event_month: Month) -> (Month, Option<Month>) {
        match self.closed_through {
            Some(closed) if event_month <= closed => (closed.next(), Some(event_month)),
            _ => (event_month, None),
        }
    }

    /// The month that closes next, if any month is booked.
    pub fn next_to_close(&self) -> Option<Month> {
        match self.closed_through {
            Some(closed) => Some(closed.next()),
            None => self.first,
        }
    }
}

/// A usage or deal identity remembered for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// Event time; usage identities are forgotten once it falls out of the
    /// dedup window. Deal identities are kept forever (`usage` false).
    pub time: Millis,
    pub usage: bool,
    pub digest: Digest,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dedup {
    pub remembered: IdentityMap<Remembered>,
    /// Usage identities by event time, to forget them in order.
    pub usage_by_time: BTreeSet<(Millis, IdentityKey)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Startup {
    pub id: String,
    /// Never goes back (§4).
    pub clock: Millis,
    pub duplicates_dropped: u64,
    /// Cumulative figures per currency.
    pub figures: BTreeMap<String, PeriodFigures>,
    /// Kept in the grants column family.
    #[serde(skip)]
    pub grants: BTreeMap<String, Grant>,
    /// Kept in the deals column family.
    #[serde(skip)]
    pub deals: BTreeMap<String, Deal>,
    pub book: PeriodBook,
    /// Currencies whose `first_overage` alert was written.
    pub overage_alerted: BTreeSet<String>,
    /// Kept in its own column family, not in the start-up's record.
    #[serde(skip)]
    pub dedup: Dedup,
    /// Derived from the grants and deals (rebuilt on load, kept in step by
    /// every change through [`Startup::update_grant`] and its kin).
    #[serde(skip)]
    pub index: GrantIndex,
    /// Grants and deals changed since the last commit.
    #[serde(skip)]
    pub dirty: Dirty,
}

/// Burn-down order of a grant (spec §8): priority, expiry (none last),
/// effective_at, grant id.
pub type BurnKey = (u8, bool, Millis, Millis, String);

/// What the rules ask of a start-up's grants and deals on every event,
/// kept ordered so the answer costs what it returns, not the history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantIndex {
    /// Open grants with face left, per currency, in burn-down order.
    pub burn: BTreeMap<String, BTreeSet<BurnKey>>,
    /// Open grants with an expiry: (expires_at, grant id).
    pub expiries: BTreeSet<(Millis, String)>,
    /// Open grants whose `grant_expiring` alert for their current expiry
    /// is still to be judged: (expires_at, grant id).
    pub alerts: BTreeSet<(Millis, String)>,
    /// Per currency: transaction prices of all deals, and the part granted.
    pub deal_totals: BTreeMap<String, (i128, i128)>,
}

impl GrantIndex {
    fn burn_key(grant: &Grant) -> BurnKey {
        (
            grant.priority,
            grant.expires_at.is_none(),
            grant.expires_at.unwrap_or(0),
            grant.effective_at,
            grant.grant_id.clone(),
        )
    }

    fn add_grant(&mut self, grant: &Grant) {
        if !grant.is_open() {
            return;
        }
        if grant.remaining_face() > 0 {
            self.burn.entry(grant.currency.clone()).or_default().insert(Self::burn_key(grant));
        }
        if let Some(expires_at) = grant.expires_at {
            self.expiries.insert((expires_at, grant.grant_id.clone()));
            if grant.expiring_alerted_for != Some(expires_at) {
                self.alerts.insert((expires_at, grant.grant_id.clone()));
            }
        }
    }

    fn remove_grant(&mut self, grant: &Grant) {
        if let Some(burn) = self.burn.get_mut(&grant.currency) {
            burn.remove(&Self::burn_key(grant));
            if burn.is_empty() {
                self.burn.remove(&grant.currency);
            }
        }
        if let Some(expires_at) = grant.expires_at {
            let entry = (expires_at, grant.grant_id.clone());
            self.expiries.remove(&entry);
            self.alerts.remove(&entry);
        }
    }

    fn add_deal(&mut self, deal: &Deal, sign: i128) {
        let totals = self.deal_totals.entry(deal.currency.clone()).or_default();
        totals.0 += sign * i128::from(deal.transaction_price);
        totals.1 += sign * i128::from(deal.granted_price);
        if *totals == (0, 0) {
            self.deal_totals.remove(&deal.currency);
        }
    }
}

/// Names of the grants and deals changed since the last commit, so it
/// writes just those. Bookkeeping, not state: always equal.
#[derive(Clone, Debug, Default)]
pub struct Dirty {
    pub grants: BTreeSet<String>,
    pub deals: BTreeSet<String>,
}

impl PartialEq for Dirty {
    fn eq(&self, _other: &Dirty) -> bool {
        true
    }
}

impl Eq for Dirty {}

impl Startup {
    pub fn new(id: &str, clock: Millis) -> Startup {
        Startup {
            id: id.to_owned(),
            clock,
            duplicates_dropped: 0,
            figures: BTreeMap::new(),
            grants: BTreeMap::new(),
            deals: BTreeMap::new(),
            book: PeriodBook::default(),
            overage_alerted: BTreeSet::new(),
            dedup: Dedup::default(),
            index: GrantIndex::default(),
            dirty: Dirty::default(),
        }
    }

    /// Rebuilds [`Startup::index`] from the grants and deals (after a load).
    pub fn rebuild_index(&mut self) {
        let mut index = GrantIndex::default();
        for grant in self.grants.values() {
            index.add_grant(grant);
        }
        for deal in self.deals.values() {
            index.add_deal(deal, 1);
        }
        self.index = index;
    }

    /// Adds a new grant.
    pub fn insert_grant(&mut self, grant: Grant) {
        self.index.add_grant(&grant);
        self.dirty.grants.insert(grant.grant_id.clone());
        self.grants.insert(grant.grant_id.clone(), grant);
    }

    /// Changes a grant, keeping the index in step; `None` for an unknown grant.
    pub fn update_grant<R>(&mut self, grant_id: &str, change: impl FnOnce(&mut Grant) -> R) -> Option<R> {
        let grant = self.grants.get_mut(grant_id)?;
        self.index.remove_grant(grant);
        let result = change(grant);
        self.index.add_grant(grant);
        if !self.dirty.grants.contains(grant_id) {
            self.dirty.grants.insert(grant_id.to_owned());
        }
        Some(result)
    }

    /// Adds a new deal.
    pub fn insert_deal(&mut self, deal: Deal) {
        self.index.add_deal(&deal, 1);
        self.dirty.deals.insert(deal.deal_id.clone());
        self.deals.insert(deal.deal_id.clone(), deal);
    }

    /// Changes a deal, keeping the index in step; `None` for an unknown deal.
    pub fn update_deal<R>(&mut self, deal_id: &str, change: impl FnOnce(&mut Deal) -> R) -> Option<R> {
        let deal = self.deals.get_mut(deal_id)?;
        self.index.add_deal(deal, -1);
        let result = change(deal);
        self.index.add_deal(deal, 1);
        if !self.dirty.deals.contains(deal_id) {
            self.dirty.deals.insert(deal_id.to_owned());
        }
        Some(result)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateCard {
    pub currency: String,
    pub price_per_gpu_hour: i64,
    pub min_billable_seconds: i64,
}

/// (gpu_model, region, tier)
pub type RateKey = (String, String, Tier);

pub fn rate_key_text(key: &RateKey) -> String {
    format!("{}/{}/{}", key.0, key.1, key.2.as_str())
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateBook {
    pub cards: BTreeMap<RateKey, BTreeMap<Millis, RateCard>>,
    /// Identities (source, id) of accepted rates, kept forever.
    pub remembered: IdentityMap<Digest>,
    pub duplicates_dropped: u64,
}

/// Next offsets of a task's three inputs, indexed by [`Topic`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offsets([i64; 3]);

impl Offsets {
    pub const ZERO: Offsets = Offsets([0; 3]);

    pub const fn new(rates: i64, deals: i64, metering: i64) -> Offsets {
        Offsets([rates, deals, metering])
    }

    /// The offsets of the keyed inputs (deals, metering), as a consumer
    /// group commits them.
    pub fn keyed(&self) -> KeyedOffsets {
        KeyedOffsets { deals: self[Topic::Deals], metering: self[Topic::Metering] }
    }

    /// Each input's offset paired with `other`'s.
    pub fn zip(self, other: Offsets) -> impl Iterator<Item = (Topic, i64, i64)> {
        Topic::ALL.into_iter().map(move |topic| (topic, self[topic], other[topic]))
    }

    /// Whether any input is below `other`'s offset of it.
    pub fn any_below(&self, other: &Offsets) -> bool {
        self.zip(*other).any(|(_, mine, theirs)| mine < theirs)
    }
}

impl std::ops::Index<Topic> for Offsets {
    type Output = i64;

    fn index(&self, topic: Topic) -> &i64 {
        &self.0[topic.index()]
    }
}

impl std::ops::IndexMut<Topic> for Offsets {
    fn index_mut(&mut self, topic: Topic) -> &mut i64 {
        &mut self.0[topic.index()]
    }
}

/// As `[rates, deals, metering]`, the form logs and messages have always shown.
impl std::fmt::Debug for Offsets {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(formatter)
    }
}

/// The next offsets of a task's keyed inputs, as the consumer group commits
/// them (the rates topic is read whole by every task and not committed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyedOffsets {
    pub deals: i64,
    pub metering: i64,
}

impl KeyedOffsets {
    /// The offset of a keyed input; `None` for rates.
    pub fn get(&self, topic: Topic) -> Option<i64> {
        match topic {
            Topic::Rates => None,
            Topic::Deals => Some(self.deals),
            Topic::Metering => Some(self.metering),
        }
    }

    pub fn set(&mut self, topic: Topic, offset: i64) {
        match topic {
            Topic::Rates => {}
            Topic::Deals => self.deals = offset,
            Topic::Metering => self.metering = offset,
        }
    }

    /// Whether `stored` is past these offsets on a keyed input: the first
    /// such input, as a typed conflict.
    pub fn check_not_behind(&self, stored: &Offsets) -> Result<(), PositionConflict> {
        for topic in [Topic::Deals, Topic::Metering] {
            let committed = self.get(topic).expect("a keyed input");
            if stored[topic] > committed {
                return Err(PositionConflict { topic, stored: stored[topic], committed });
            }
        }
        Ok(())
    }
}

/// A task's stored position is past the position committed for it: the
/// committed position was moved back (a group offset reset) and the stored
/// state does not belong to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stored state is at {} offset {stored}, beyond the committed {committed}", topic.name())]
pub struct PositionConflict {
    pub topic: Topic,
    pub stored: i64,
    pub committed: i64,
}

/// Everything one task (partition) has folded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskState {
    pub partition: u32,
    /// The latest tick taken by this task.
    pub tick_clock: Option<Millis>,
    pub startups: BTreeMap<String, Startup>,
    pub rates: RateBook,
    pub offsets: Offsets,
    /// Rolling digest over the output records this task derived (see
    /// [`OutputDigest`]); equal digests at equal offsets prove two runs
    /// processed identically.
    pub digest: OutputDigest,
    /// Records folded by this task since offset 0 (checkpoints count them).
    pub folded: u64,
}

/// Every this many records a task notes its offsets and output digest, so
/// `verify` can tell where two runs part (to within this many records).
pub const CHECKPOINT_EVERY: u64 = 256;

/// A task's position and output digest after its `folded`-th record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub folded: u64,
    pub offsets: Offsets,
    pub digest: OutputDigest,
}

/// `d' = SHA-256(d ‖ len(record) ‖ record)` over the canonical (JSON) bytes
/// of every usage-rated, journal, statement, alert and dead-letter record,
/// in the order derived; balances and progress depend on commit boundaries
/// and are left out. Starts at 32 zero bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputDigest(pub [u8; 32]);

impl OutputDigest {
    pub fn absorb(&mut self, record: &[u8]) {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        hasher.update((record.len() as u64).to_be_bytes());
        hasher.update(record);
        self.0 = hasher.finalize().into();
    }

    pub fn hex(&self) -> String {
        crate::records::hex(&self.0)
    }
}

/// What a stretch of folding changed, so a commit writes just that.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Start-ups whose record (or grants, deals) changed.
    pub startups: BTreeSet<String>,
    /// Start-ups whose balance figures changed (they get a balances record).
    pub balances: BTreeSet<String>,
    /// Dedup identities remembered (`Some`) or forgotten (`None`), per
    /// start-up, in the order it happened (a later change wins).
    pub identities: BTreeMap<String, Vec<(IdentityKey, Option<Remembered>)>>,
    pub rate_cards: BTreeSet<(RateKey, Millis)>,
    pub rate_identities: BTreeMap<IdentityKey, Digest>,
    /// Grants and deals changed, as (start-up, id) (see [`Dirty`]).
    pub grants: BTreeSet<(String, String)>,
    pub deals: BTreeSet<(String, String)>,
    pub task_meta: bool,
    pub checkpoints: Vec<Checkpoint>,
    /// Statements of months closed, by (start-up, period `YYYY-MM`): their
    /// JSON, kept with the state so queries can serve closed months.
    pub statements: BTreeMap<(String, String), Vec<u8>>,
}

impl Changes {
    /// Notes that a start-up's record changed (no allocation when known).
    pub fn startup(&mut self, id: &str) {
        if !self.startups.contains(id) {
            self.startups.insert(id.to_owned());
        }
    }

    /// Notes that a start-up's balance figures changed.
    pub fn balance(&mut self, id: &str) {
        if !self.balances.contains(id) {
            self.balances.insert(id.to_owned());
        }
    }

    pub fn identity(&mut self, startup: &str, identity: IdentityKey, remembered: Option<Remembered>) {
        match self.identities.get_mut(startup) {
            Some(list) => list.push((identity, remembered)),
            None => {
                self.identities.insert(startup.to_owned(), vec![(identity, remembered)]);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.startups.is_empty()
            && self.identities.is_empty()
            && self.rate_cards.is_empty()
            && self.rate_identities.is_empty()
            && !self.task_meta
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_indexed_by_input_and_show_as_before() {
        let mut offsets = Offsets::new(1, 2, 3);
        offsets[Topic::Metering] += 1;
        assert_eq!(offsets[Topic::Rates], 1);
        assert_eq!(offsets.keyed(), KeyedOffsets { deals: 2, metering: 4 });
        assert_eq!(format!("{offsets:?}"), "[1, 2, 4]");
        assert_eq!(serde_json::to_string(&offsets).unwrap(), "[1,2,4]");
        assert!(Offsets::new(1, 2, 3).any_below(&offsets));
        assert!(!offsets.any_below(&offsets));
    }

    #[test]
    fn a_stored_position_past_the_committed_one_is_a_typed_conflict() {
        let committed = KeyedOffsets { deals: 10, metering: 20 };
        assert_eq!(committed.check_not_behind(&Offsets::new(99, 10, 20)), Ok(()));
        assert_eq!(committed.check_not_behind(&Offsets::new(0, 3, 7)), Ok(()));
        let conflict = committed.check_not_behind(&Offsets::new(0, 3, 21)).unwrap_err();
        assert_eq!(conflict, PositionConflict { topic: Topic::Metering, stored: 21, committed: 20 });
        assert_eq!(conflict.to_string(), "stored state is at metering offset 21, beyond the committed 20");
        assert_eq!(committed.get(Topic::Rates), None);
    }
}

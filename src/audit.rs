//! `gpuledger audit DIR`: the invariants of spec §11 over an output
//! directory written by `gpuledger fold` (or exported from the topics).
//!
//! Checked per record: every journal entry balances (positive amount,
//! distinct accounts) and its `entry_id` is the hash of its identity; every
//! usage's cost equals its draws plus overage; every identity occurs once
//! (usage-rated, journal, statements, alerts, dead letters; usage identities
//! and entry ids together with their event time, because an id reused after
//! the dedup window forgot it is a new event, see `docs/decisions.md`). Per grant in
//! `balances.json`: face = consumed + expired + revoked + remaining, and for
//! final grants revenue + breakage + reversal = transaction price. Per
//! start-up and currency: contract liability = Σ open grants' unearned price,
//! and — unless `partial` (outputs of a resumed run hold only part of the
//! history) — the journal reconciles with the balances (contract liability,
//! each revenue account) and statements chain (each opening = the previous
//! closing; closing = opening + the month's flows).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

use anyhow::Context as _;
use serde::de::DeserializeOwned;

use crate::records::{identity_hash, Alert, Balances, DeadLetter, JournalEntry, Statement, UsageRated};

#[derive(Debug, Default)]
pub struct AuditReport {
    pub violations: Vec<String>,
    pub journal_entries: u64,
    pub usage_records: u64,
    pub statements: u64,
    pub grants: u64,
    pub startups: u64,
}

impl AuditReport {
    fn violation(&mut self, text: String) {
        self.violations.push(text);
    }
}

fn read_jsonl<T: DeserializeOwned>(path: &Path, mut each: impl FnMut(T)) -> crate::Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.is_empty() {
            continue;
        }
        let record = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: not a valid record", path.display(), index + 1))?;
        each(record);
    }
    Ok(())
}

/// Positions tried for a journal entry that does not follow its event's
/// previous entry.
const UNORDERED_POSITIONS: u64 = 64;

/// Sums per (startup, currency, account): credits minus debits.
type AccountSums = BTreeMap<(String, String, String), i128>;

pub fn audit(dir: &Path, partial: bool) -> crate::Result<AuditReport> {
    let mut report = AuditReport::default();
    let mut accounts: AccountSums = BTreeMap::new();
    let mut per_currency: BTreeMap<String, (i128, i128)> = BTreeMap::new();
    let mut entry_ids = BTreeSet::new();
    let mut last_event: Option<((String, String, String, String), u64)> = None;
    read_jsonl(&dir.join("journal.jsonl"), |entry: JournalEntry| {
        report.journal_entries += 1;
        if entry.amount <= 0 || entry.debit == entry.credit {
            report.violation(format!(
                "journal entry {} does not balance: {} {} / {}",
                entry.entry_id, entry.amount, entry.debit, entry.credit
            ));
        }
        // One event's entries are written together, positions 0, 1, 2, …:
        // the expected position is one past the previous entry's of the same
        // event, else 0; any other position up to a bound is also accepted
        // (an output read from its middle), so any number of entries checks.
        let identity = (entry.topic.clone(), entry.startup.clone(), entry.source.clone(), entry.id.clone());
        let expected = match &last_event {
            Some((previous, position)) if *previous == identity => position + 1,
            _ => 0,
        };
        let hash_at = |position: u64| {
            identity_hash(&[&entry.topic, &entry.startup, &entry.source, &entry.id, &position.to_string()])
        };
        let position = std::iter::once(expected)
            .chain(0..UNORDERED_POSITIONS)
            .find(|position| hash_at(*position) == entry.entry_id);
        match position {
            Some(position) => last_event = Some((identity, position)),
            None => {
                report.violation(format!("journal entry {} is not the hash of its identity", entry.entry_id));
                last_event = None;
            }
        }
        if !entry_ids.insert((entry.entry_id.clone(), entry.event_time)) {
            report.violation(format!("journal entry {} occurs twice", entry.entry_id));
        }
        let totals = per_currency.entry(entry.currency.clone()).or_default();
        totals.0 += i128::from(entry.amount);
        totals.1 += i128::from(entry.amount);
        *accounts.entry((entry.startup.clone(), entry.currency.clone(), entry.credit.clone())).or_default() +=
            i128::from(entry.amount);
        *accounts.entry((entry.startup, entry.currency, entry.debit)).or_default() -= i128::from(entry.amount);
    })?;
    for (currency, (debits, credits)) in &per_currency {
        if debits != credits {
            report.violation(format!("{currency}: debits {debits} differ from credits {credits}"));
        }
    }

    let mut usage_ids = BTreeSet::new();
    let mut usage_cost: BTreeMap<(String, String), i128> = BTreeMap::new();
    read_jsonl(&dir.join("usage-rated.jsonl"), |usage: UsageRated| {
        report.usage_records += 1;
        let drawn: i128 = usage.draws.iter().map(|draw| i128::from(draw.face)).sum();
        if i128::from(usage.cost) != drawn + i128::from(usage.overage) {
            report.violation(format!(
                "usage {}/{}: cost {} != draws {drawn} + overage {}",
                usage.source, usage.id, usage.cost, usage.overage
            ));
        }
        if !usage_ids.insert((usage.startup.clone(), usage.source.clone(), usage.id.clone(), usage.time)) {
            report.violation(format!("usage {}/{} of {} occurs twice", usage.source, usage.id, usage.startup));
        }
        *usage_cost.entry((usage.startup, usage.currency)).or_default() += i128::from(usage.cost);
    })?;

    let mut statement_ids = BTreeSet::new();
    let mut last_closing: BTreeMap<(String, String), (crate::units::Month, i64, i64)> = BTreeMap::new();
    read_jsonl(&dir.join("statements.jsonl"), |statement: Statement| {
        report.statements += 1;
        if !statement_ids.insert((statement.startup.clone(), statement.period)) {
            report.violation(format!("statement {} {} occurs twice", statement.startup, statement.period));
        }
        for block in &statement.currencies {
            let figures = &block.figures;
            if block.closing_remaining_face != block.opening_remaining_face + figures.remaining_face_change()
                || block.closing_contract_liability
                    != block.opening_contract_liability + figures.contract_liability_change()
            {
                report.violation(format!(
                    "statement {} {} {}: closing != opening + flows",
                    statement.startup, statement.period, block.currency
                ));
            }
            let key = (statement.startup.clone(), block.currency.clone());
            if let Some((month, remaining, liability)) = last_closing.get(&key) {
                if month.next() != statement.period
                    || *remaining != block.opening_remaining_face
                    || *liability != block.opening_contract_liability
                {
                    report.violation(format!(
                        "statement {} {} {}: does not follow {month}",
                        statement.startup, statement.period, block.currency
                    ));
                }
            } else if !partial && (block.opening_remaining_face != 0 || block.opening_contract_liability != 0) {
                report.violation(format!(
                    "statement {} {} {}: first statement opens non-zero",
                    statement.startup, statement.period, block.currency
                ));
            }
            last_closing
                .insert(key, (statement.period, block.closing_remaining_face, block.closing_contract_liability));
        }
    })?;

    let mut alert_ids = BTreeSet::new();
    read_jsonl(&dir.join("alerts.jsonl"), |alert: Alert| {
        if !alert_ids.insert(alert.alert_id.clone()) {
            report.violation(format!("alert {} occurs twice", alert.alert_id));
        }
    })?;
    let mut dead_letter_ids = BTreeSet::new();
    read_jsonl(&dir.join("dead-letter.jsonl"), |letter: DeadLetter| {
        if !dead_letter_ids.insert((letter.topic.clone(), letter.partition, letter.offset)) {
            report
                .violation(format!("dead letter {}/{}/{} occurs twice", letter.topic, letter.partition, letter.offset));
        }
    })?;

    let balances = crate::batch::read_balances(&dir.join("balances.json"))?;
    for balance in &balances {
        report.startups += 1;
        audit_balances(&mut report, balance, &accounts, &usage_cost, partial);
    }
    Ok(report)
}

fn audit_balances(
    report: &mut AuditReport,
    balance: &Balances,
    accounts: &AccountSums,
    usage_cost: &BTreeMap<(String, String), i128>,
    partial: bool,
) {
    for currency in &balance.currencies {
        let place = format!("{} {}", balance.startup, currency.currency);
        let mut liability = 0i128;
        for grant in &currency.grants {
            report.grants += 1;
            let parts = grant.consumed_face + grant.expired_face + grant.revoked_face + grant.remaining_face;
            if grant.face != parts {
                report.violation(format!(
                    "{place} grant {}: face {} != consumed + expired + revoked + remaining {parts}",
                    grant.grant_id, grant.face
                ));
            }
            let recognized = grant.revenue_compute + grant.revenue_breakage + grant.revocation_reversal;
            if grant.state != "open" && recognized != grant.transaction_price {
                report.violation(format!(
                    "{place} grant {}: final, revenue + breakage + reversal {recognized} != price {}",
                    grant.grant_id, grant.transaction_price
                ));
            }
            if grant.state == "open" {
                liability += i128::from(grant.transaction_price - grant.revenue_compute);
            }
        }
        if liability != i128::from(currency.contract_liability) {
            report.violation(format!(
                "{place}: contract_liability {} != sum over open grants {liability}",
                currency.contract_liability
            ));
        }
        if partial {
            continue;
        }
        let account = |name: &str| {
            accounts.get(&(balance.startup.clone(), currency.currency.clone(), name.to_owned())).copied().unwrap_or(0)
        };
        for (name, expected) in [
            ("contract_liability", currency.contract_liability),
            ("revenue_compute", currency.revenue_compute),
            ("revenue_overage", currency.revenue_overage),
            ("revenue_breakage", currency.revenue_breakage),
        ] {
            if account(name) != i128::from(expected) {
                report.violation(format!("{place}: journal {name} {} != balances {expected}", account(name)));
            }
        }
        let cost = usage_cost.get(&(balance.startup.clone(), currency.currency.clone())).copied().unwrap_or(0);
        if cost != i128::from(currency.usage_cost) {
            report
                .violation(format!("{place}: usage-rated cost {cost} != balances usage_cost {}", currency.usage_cost));
        }
    }
}

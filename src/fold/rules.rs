//! Business rules (spec §6–§9) and timed effects (§4, §9): what an accepted
//! event or a due effect does to one start-up, and the records it writes.
//!
//! Callers have already run every check before the business rules and moved
//! the start-up's clock; a rule either refuses the event (nothing changed)
//! or applies it whole.

use std::collections::BTreeSet;

use crate::events::{reject, Consideration, CreditGranted, DealSigned, Event, Payload, Reason, Rejection, Topic};
use crate::records::{
    identity_hash, Adjustment, Alert, AlertKind, Output, PeriodFigures, Statement, StatementCurrency,
};
use crate::units::{format_millis, mul_div_round, Millis, Month, Ts};

use super::booking::{book, entries_for, fits_i64, Entries};
use super::state::{Deal, Grant, GrantState, RateBook, Startup};
use super::{FoldConfig, FoldStats, EXPIRING_NOTICE};

/// Kinds of timed effect, in the order they fire at one instant (§4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EffectKind {
    ExpiringAlert,
    Expiry,
    Close,
}

/// A timed effect of one start-up; `target` is a grant id, or the month
/// (`YYYY-MM`) of a close.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effect {
    pub due: Millis,
    pub kind: EffectKind,
    pub target: String,
}

/// The start-up's first effect due at or before its clock, if any,
/// ordered by (due time, kind, grant id). Allocates only when one is due.
pub fn next_effect(startup: &Startup, config: &FoldConfig) -> Option<Effect> {
    let clock = startup.clock;
    // Each index is ordered by (expires_at, grant id): its first entry is
    // its earliest effect, due at a fixed offset from expires_at.
    let alert = startup.index.alerts.first().map(|(expires_at, grant_id)| {
        (expires_at.saturating_sub(EXPIRING_NOTICE), EffectKind::ExpiringAlert, grant_id.as_str())
    });
    let expiry = startup.index.expiries.first().map(|(expires_at, grant_id)| {
        (expires_at.saturating_add(config.expiry_grace), EffectKind::Expiry, grant_id.as_str())
    });
    let mut best: Option<(Millis, EffectKind, &str)> = None;
    for candidate in [alert, expiry].into_iter().flatten() {
        if candidate.0 <= clock && best.is_none_or(|current| candidate < current) {
            best = Some(candidate);
        }
    }
    // A close is the only effect of its kind: its target never decides.
    if let Some(month) = startup.book.next_to_close() {
        let due = month.next().start().saturating_add(config.close_grace);
        if due <= clock && best.is_none_or(|current| (due, EffectKind::Close) < (current.0, current.1)) {
            return Some(Effect { due, kind: EffectKind::Close, target: month.to_string() });
        }
    }
    best.map(|(due, kind, target)| Effect { due, kind, target: target.to_owned() })
}

/// Fires one due effect. Returns whether balance figures changed.
pub fn fire(startup: &mut Startup, effect: &Effect, config: &FoldConfig, outputs: &mut Vec<Output>) -> bool {
    match effect.kind {
        EffectKind::ExpiringAlert => {
            startup
                .update_grant(&effect.target, |grant| grant.expiring_alerted_for = grant.expires_at)
                .expect("effects name known grants");
            let grant = &startup.grants[&effect.target];
            let expires_at = grant.expires_at.expect("only grants with an expiry warn of it");
            let remaining = grant.remaining_face();
            if remaining > 0 {
                let expires_text = format_millis(expires_at);
                let alert = Alert {
                    alert_id: identity_hash(&[
                        AlertKind::GrantExpiring.as_str(),
                        &startup.id,
                        &grant.currency,
                        &grant.grant_id,
                        &expires_text,
                    ]),
                    kind: AlertKind::GrantExpiring,
                    startup: startup.id.clone(),
                    currency: grant.currency.clone(),
                    grant_id: Some(grant.grant_id.clone()),
                    threshold: None,
                    expires_at: Some(Ts(expires_at)),
                    time: Ts(effect.due),
                    remaining_face: Some(remaining),
                };
                outputs.push(Output::Alert(alert));
            }
            false
        }
        EffectKind::Expiry => {
            expire(startup, &effect.target, outputs);
            true
        }
        EffectKind::Close => {
            // The month closing is the book's next; the target only names it.
            let month = startup.book.next_to_close().expect("a close is due only once a month is booked");
            let statement = close_month(startup, month, effect.due);
            debug_assert_eq!(effect.due, month.next().start() + config.close_grace);
            outputs.push(Output::Statement(statement));
            false
        }
    }
}

fn close_month(startup: &mut Startup, month: Month, due: Millis) -> Statement {
    let book = &mut startup.book;
    let flows = book.open.remove(&month).unwrap_or_default();
    let currencies: BTreeSet<String> = book.carry.keys().chain(flows.keys()).cloned().collect();
    let mut blocks = Vec::with_capacity(currencies.len());
    for currency in currencies {
        let month_flows = flows.get(&currency).cloned().unwrap_or_default();
        let carry = book.carry.entry(currency.clone()).or_default();
        let opening = *carry;
        carry.remaining_face += month_flows.total.remaining_face_change();
        carry.contract_liability += month_flows.total.contract_liability_change();
        blocks.push(StatementCurrency {
            currency,
            opening_remaining_face: opening.remaining_face,
            closing_remaining_face: carry.remaining_face,
            opening_contract_liability: opening.contract_liability,
            closing_contract_liability: carry.contract_liability,
            figures: month_flows.total,
            adjustments: month_flows
                .adjustments
                .into_iter()
                .map(|(period, figures)| Adjustment { period, figures })
                .collect(),
        });
    }
    book.closed_through = Some(month);
    Statement { startup: startup.id.clone(), period: month, closed_at: Ts(due), currencies: blocks }
}

/// Expiry (§9): the remaining face expires; what is still unearned is breakage.
fn expire(startup: &mut Startup, grant_id: &str, outputs: &mut Vec<Output>) {
    let (expires_at, expired, breakage) = startup
        .update_grant(grant_id, |grant| {
            let expired = grant.remaining_face();
            let breakage = grant.unearned();
            grant.expired_face += expired;
            grant.revenue_breakage += breakage;
            grant.state = GrantState::Expired;
            (grant.expires_at.expect("only grants with an expiry expire"), expired, breakage)
        })
        .expect("effects name known grants");
    let grant = &startup.grants[grant_id];
    let (currency, consideration, deal_id) = (grant.currency.clone(), grant.consideration, grant.deal_id.clone());
    let flows = PeriodFigures { expired_face: expired, revenue_breakage: breakage, ..PeriodFigures::default() };
    let (period, adjusts_period) = book(startup, expires_at, &currency, &flows);
    if consideration != Consideration::Promotional {
        let source = format!("{}expiry", crate::events::decode::RESERVED_SOURCE_PREFIX);
        let mut entries = Entries {
            topic: Topic::Deals,
            startup: &startup.id,
            source: &source,
            id: grant_id,
            event_time: expires_at,
            period,
            adjusts_period,
            position: 0,
        };
        let deal_id = deal_id.as_deref();
        entries.write(
            outputs,
            "expiry",
            &currency,
            "contract_liability",
            "revenue_breakage",
            breakage,
            deal_id,
            Some(grant_id),
        );
    }
}

/// Applies an accepted deal or usage event to its start-up.
pub fn apply(
    startup: &mut Startup,
    rates: &RateBook,
    topic: Topic,
    event: &Event,
    outputs: &mut Vec<Output>,
    stats: &mut FoldStats,
) -> Result<(), Rejection> {
    match &event.payload {
        Payload::DealSigned(deal) => deal_signed(startup, topic, event, deal, outputs),
        Payload::CreditGranted(grant) => credit_granted(startup, topic, event, grant, outputs),
        Payload::GrantExtended { grant_id, expires_at } => {
            let Some(grant) = startup.grants.get(grant_id) else {
                return reject(Reason::UnknownGrant, format!("no grant {grant_id:?} for this start-up"));
            };
            match grant.expires_at {
                _ if !grant.is_open() => {
                    reject(Reason::InvalidTransition, format!("grant {grant_id:?} is {}", grant.state.as_str()))
                }
                None => reject(Reason::InvalidTransition, format!("grant {grant_id:?} has no expiry to extend")),
                Some(current) if *expires_at <= current => {
                    reject(Reason::InvalidTransition, "an extension must move expires_at strictly later")
                }
                Some(_) => {
                    startup.update_grant(grant_id, |grant| grant.expires_at = Some(*expires_at));
                    Ok(())
                }
            }
        }
        Payload::GrantRevoked { grant_id } => {
            let Some(grant) = startup.grants.get(grant_id) else {
                return reject(Reason::UnknownGrant, format!("no grant {grant_id:?} for this start-up"));
            };
            if !grant.is_open() {
                return reject(
                    Reason::InvalidTransition,
                    format!("grant {grant_id:?} is already {}", grant.state.as_str()),
                );
            }
            let currency = grant.currency.clone();
            revoke_all(startup, topic, event, &currency, std::slice::from_ref(grant_id), outputs);
            Ok(())
        }
        Payload::DealCancelled { deal_id } => {
            let Some(deal) = startup.deals.get(deal_id) else {
                return reject(Reason::UnknownDeal, format!("no deal {deal_id:?} for this start-up"));
            };
            if deal.cancelled {
                return reject(Reason::InvalidTransition, format!("deal {deal_id:?} is already cancelled"));
            }
            let currency = deal.currency.clone();
            startup.update_deal(deal_id, |deal| deal.cancelled = true);
            // BTreeMap order: grant ids ascending, bytewise.
            let open: Vec<String> = startup
                .grants
                .values()
                .filter(|grant| grant.is_open() && grant.deal_id.as_deref() == Some(deal_id))
                .map(|grant| grant.grant_id.clone())
                .collect();
            revoke_all(startup, topic, event, &currency, &open, outputs);
            Ok(())
        }
        Payload::GpuUsage(usage) => {
            super::usage::gpu_usage(startup, rates, topic, event, usage, outputs)?;
            stats.usage_accepted += 1;
            Ok(())
        }
        Payload::RatePublished(_) | Payload::ClockTick => unreachable!("rates and ticks have no start-up"),
    }
}

fn fits_i64_i128(total: i128, more: i64) -> bool {
    total + i128::from(more) <= i128::from(i64::MAX)
}

/// An upper bound of every sum the balances add for `currency` (contract
/// liability, unallocated deal prices, their sum `rpo`): the transaction
/// prices of all deals plus those of grants outside deals. The fold refuses
/// an event that would take it beyond 64 bits, so those sums always fit.
fn rpo_bound(startup: &Startup, currency: &str) -> i128 {
    let (deal_prices, granted_on_deals) = startup.index.deal_totals.get(currency).copied().unwrap_or_default();
    let granted = startup.figures.get(currency).map_or(0, |figures| i128::from(figures.granted_transaction_price));
    deal_prices + (granted - granted_on_deals)
}

fn deal_signed(
    startup: &mut Startup,
    topic: Topic,
    event: &Event,
    signed: &DealSigned,
    outputs: &mut Vec<Output>,
) -> Result<(), Rejection> {
    if startup.deals.contains_key(&signed.deal_id) {
        return reject(Reason::InvalidTransition, format!("deal_id {:?} is already used", signed.deal_id));
    }
    let transaction_price = (i128::from(signed.equity_fair_value) - i128::from(signed.cash_amount)).max(0) as i64;
    if !fits_i64_i128(rpo_bound(startup, &signed.currency), transaction_price) {
        return reject(Reason::InvalidField, "the start-up's deal prices would exceed 64 bits");
    }
    startup.insert_deal(Deal {
        deal_id: signed.deal_id.clone(),
        investor: signed.investor.clone(),
        currency: signed.currency.clone(),
        cash_amount: signed.cash_amount,
        face: signed.credit_face_amount,
        transaction_price,
        granted_face: 0,
        granted_price: 0,
        cancelled: false,
    });
    let (period, adjusts_period) = book(startup, event.time, &signed.currency, &PeriodFigures::default());
    let mut entries = entries_for(topic, startup, event, period, adjusts_period);
    entries.write(
        outputs,
        "deal.signed",
        &signed.currency,
        "equity_investment",
        "cash",
        signed.cash_amount,
        Some(&signed.deal_id),
        None,
    );
    Ok(())
}

fn credit_granted(
    startup: &mut Startup,
    topic: Topic,
    event: &Event,
    granted: &CreditGranted,
    outputs: &mut Vec<Output>,
) -> Result<(), Rejection> {
    let face = granted.face_amount;
    let transaction_price = match &granted.deal_id {
        Some(deal_id) => {
            let Some(deal) = startup.deals.get(deal_id) else {
                return reject(Reason::UnknownDeal, format!("no deal {deal_id:?} for this start-up"));
            };
            if startup.grants.contains_key(&granted.grant_id) {
                return reject(Reason::DuplicateGrant, format!("grant_id {:?} is already used", granted.grant_id));
            }
            if deal.cancelled {
                return reject(Reason::InvalidTransition, format!("deal {deal_id:?} is cancelled"));
            }
            if deal.currency != granted.currency {
                return reject(
                    Reason::CurrencyMismatch,
                    format!("grant currency {} differs from deal currency {}", granted.currency, deal.currency),
                );
            }
            let before = i128::from(deal.granted_face);
            if before + i128::from(face) > i128::from(deal.face) {
                return reject(
                    Reason::OverCommitment,
                    format!("faces granted on deal {deal_id:?} would exceed its commitment of {}", deal.face),
                );
            }
            // TP_g = round((G + F_g) TP_d / F_d) - round(G TP_d / F_d): a
            // deal's grants sum to exactly TP_d once fully granted (§6).
            let price = i128::from(deal.transaction_price);
            let denominator = i128::from(deal.face);
            let after = mul_div_round(before + i128::from(face), price, denominator).expect("fits 128 bits");
            (after - mul_div_round(before, price, denominator).expect("fits 128 bits")) as i64
        }
        None => {
            if startup.grants.contains_key(&granted.grant_id) {
                return reject(Reason::DuplicateGrant, format!("grant_id {:?} is already used", granted.grant_id));
            }
            match (granted.consideration, granted.transaction_price) {
                (Consideration::Promotional, _) => 0,
                (_, Some(price)) => price,
                (_, None) => face,
            }
        }
    };
    let totals = startup.figures.get(&granted.currency).cloned().unwrap_or_default();
    if !fits_i64(totals.granted_face, face) || !fits_i64(totals.granted_transaction_price, transaction_price) {
        return reject(Reason::InvalidField, "the start-up's granted figures would exceed 64 bits");
    }
    if granted.deal_id.is_none() && !fits_i64_i128(rpo_bound(startup, &granted.currency), transaction_price) {
        return reject(Reason::InvalidField, "the start-up's transaction prices would exceed 64 bits");
    }
    if let Some(deal_id) = &granted.deal_id {
        startup.update_deal(deal_id, |deal| {
            deal.granted_face += face;
            deal.granted_price += transaction_price;
        });
    }
    startup.insert_grant(Grant {
        grant_id: granted.grant_id.clone(),
        deal_id: granted.deal_id.clone(),
        currency: granted.currency.clone(),
        consideration: granted.consideration,
        escrow: granted.escrow,
        priority: granted.priority,
        effective_at: granted.effective_at,
        expires_at: granted.expires_at,
        face,
        transaction_price,
        consumed_face: 0,
        expired_face: 0,
        revoked_face: 0,
        revenue_compute: 0,
        revenue_breakage: 0,
        revocation_reversal: 0,
        state: GrantState::Open,
        consumed_alerts: 0,
        expiring_alerted_for: None,
    });
    let flows =
        PeriodFigures { granted_face: face, granted_transaction_price: transaction_price, ..PeriodFigures::default() };
    let (period, adjusts_period) = book(startup, event.time, &granted.currency, &flows);
    let debit = match granted.consideration {
        Consideration::Equity => "equity_investment",
        Consideration::Cash => "cash",
        Consideration::Promotional => return Ok(()),
    };
    let mut entries = entries_for(topic, startup, event, period, adjusts_period);
    entries.write(
        outputs,
        "credit.granted",
        &granted.currency,
        debit,
        "contract_liability",
        transaction_price,
        granted.deal_id.as_deref(),
        Some(&granted.grant_id),
    );
    Ok(())
}

/// Revokes open grants (one currency) for one event, entries numbered in
/// the given order.
fn revoke_all(
    startup: &mut Startup,
    topic: Topic,
    event: &Event,
    currency: &str,
    grant_ids: &[String],
    outputs: &mut Vec<Output>,
) {
    let mut flows = PeriodFigures::default();
    let mut reversals = Vec::with_capacity(grant_ids.len());
    for grant_id in grant_ids {
        let (revoked, reversal, consideration, deal_id) = startup
            .update_grant(grant_id, |grant| {
                let revoked = grant.remaining_face();
                let reversal = grant.unearned();
                grant.revoked_face += revoked;
                grant.revocation_reversal += reversal;
                grant.state = GrantState::Revoked;
                (revoked, reversal, grant.consideration, grant.deal_id.clone())
            })
            .expect("revoking known grants");
        flows.revoked_face += revoked;
        flows.revocation_reversal += reversal;
        reversals.push((grant_id, consideration, deal_id, reversal));
    }
    let (period, adjusts_period) = book(startup, event.time, currency, &flows);
    let mut entries = entries_for(topic, startup, event, period, adjusts_period);
    for (grant_id, consideration, deal_id, reversal) in reversals {
        let credit = match consideration {
            Consideration::Equity => "equity_investment",
            Consideration::Cash => "refund_liability",
            Consideration::Promotional => continue,
        };
        entries.write(
            outputs,
            "revocation",
            currency,
            "contract_liability",
            credit,
            reversal,
            deal_id.as_deref(),
            Some(grant_id),
        );
    }
}

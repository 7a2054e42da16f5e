//! GPU usage (spec §7–§8), in its steps: price the usage by the rate card in
//! effect at its start, burn the cost down the start-up's eligible grants,
//! book the flows in their month, then write the usage-rated record, the
//! journal entries and the alerts.

use crate::events::{reject, Consideration, Event, GpuUsage, Reason, Rejection, Topic};
use crate::records::{identity_hash, Alert, AlertKind, Draw, Output, PeriodFigures, RateRef, UsageRated};
use crate::units::{format_millis, mul_div_round, Millis, Ts};

use super::booking::{book, entries_for, fits_i64};
use super::state::{rate_key_text, RateBook, RateKey, Startup, CONSUMED_THRESHOLDS};

/// A usage event priced by its rate card.
struct Priced {
    key: RateKey,
    effective_from: Millis,
    price_per_gpu_hour: i64,
    currency: String,
    billable_ms: i64,
    gpu_ms: i64,
    cost: i64,
}

/// One grant's part of a usage's cost.
struct Drawn {
    grant_id: String,
    deal_id: Option<String>,
    consideration: Consideration,
    face: i64,
    revenue: i64,
}

/// A `grant_consumed` threshold a draw crossed: grant, threshold (%), face left.
type Crossed = (String, u32, i64);

pub(super) fn gpu_usage(
    startup: &mut Startup,
    rates: &RateBook,
    topic: Topic,
    event: &Event,
    usage: &GpuUsage,
    outputs: &mut Vec<Output>,
) -> Result<(), Rejection> {
    let priced = price(rates, usage)?;
    let currency = &priced.currency;
    let usage_cost_so_far = startup.figures.get(currency).map_or(0, |figures| figures.usage_cost);
    if !fits_i64(usage_cost_so_far, priced.cost) {
        return reject(Reason::InvalidField, "the start-up's usage cost would exceed 64 bits");
    }
    let time = event.time;
    let (draws, crossed) = burn_down(startup, currency, time, priced.cost);
    let mut flows = PeriodFigures { usage_cost: priced.cost, usage_count: 1, ..PeriodFigures::default() };
    for draw in &draws {
        flows.consumed_face += draw.face;
        flows.revenue_compute += draw.revenue;
    }
    let overage = priced.cost - flows.consumed_face;
    flows.overage = overage;
    flows.revenue_overage = overage;
    let (period, adjusts_period) = book(startup, time, currency, &flows);

    outputs.push(Output::UsageRated(UsageRated {
        source: event.source.clone(),
        id: event.id.clone(),
        startup: startup.id.clone(),
        time: Ts(time),
        cluster_id: usage.cluster_id.clone(),
        job_id: usage.job_id.clone(),
        gpu_model: usage.gpu_model.clone(),
        region: usage.region.clone(),
        tier: usage.tier.as_str().to_owned(),
        gpu_count: usage.gpu_count,
        started_at: Ts(usage.started_at),
        ended_at: Ts(usage.ended_at),
        billable_ms: priced.billable_ms,
        gpu_ms: priced.gpu_ms,
        rate: RateRef {
            key: rate_key_text(&priced.key),
            effective_from: Ts(priced.effective_from),
            price_per_gpu_hour: priced.price_per_gpu_hour,
        },
        cost: priced.cost,
        currency: currency.clone(),
        draws: draws
            .iter()
            .map(|draw| Draw { grant_id: draw.grant_id.clone(), face: draw.face, revenue: draw.revenue })
            .collect(),
        overage,
        period,
        adjusts_period,
    }));
    let mut entries = entries_for(topic, startup, event, period, adjusts_period);
    for draw in draws.iter().filter(|draw| draw.consideration != Consideration::Promotional) {
        entries.write(
            outputs,
            "draw",
            currency,
            "contract_liability",
            "revenue_compute",
            draw.revenue,
            draw.deal_id.as_deref(),
            Some(&draw.grant_id),
        );
    }
    entries.write(outputs, "overage", currency, "accounts_receivable", "revenue_overage", overage, None, None);
    usage_alerts(startup, currency, time, crossed, overage, outputs);
    Ok(())
}

/// The rate card in effect at the usage's start, and the cost it gives
/// (§7): billable time at least the card's minimum, GPU-ms, cost rounded
/// half-even to micros; figures that leave 64 bits are `invalid_field`.
fn price(rates: &RateBook, usage: &GpuUsage) -> Result<Priced, Rejection> {
    let key = (usage.gpu_model.clone(), usage.region.clone(), usage.tier);
    let Some((&effective_from, card)) =
        rates.cards.get(&key).and_then(|cards| cards.range(..=usage.started_at).next_back())
    else {
        return reject(
            Reason::NoRate,
            format!("no rate for {} effective at {}", rate_key_text(&key), format_millis(usage.started_at)),
        );
    };
    let duration = i128::from(usage.ended_at - usage.started_at);
    let billable_ms = duration.max(1000 * i128::from(card.min_billable_seconds));
    let Ok(billable_ms) = i64::try_from(billable_ms) else {
        return reject(Reason::InvalidField, "billable_ms is beyond 64 bits");
    };
    let Ok(gpu_ms) = i64::try_from(i128::from(usage.gpu_count) * i128::from(billable_ms)) else {
        return reject(Reason::InvalidField, "gpu_ms is beyond 64 bits");
    };
    let cost =
        mul_div_round(i128::from(gpu_ms), i128::from(card.price_per_gpu_hour), 3_600_000).expect("fits 128 bits");
    let Ok(cost) = i64::try_from(cost) else {
        return reject(Reason::InvalidField, "cost is beyond 64 bits");
    };
    Ok(Priced {
        key,
        effective_from,
        price_per_gpu_hour: card.price_per_gpu_hour,
        currency: card.currency.clone(),
        billable_ms,
        gpu_ms,
        cost,
    })
}

/// Burn-down (§8): eligible grants by priority, expiry (none last),
/// effective_at, grant id — the index's order, which holds only open
/// grants with face left; enough of them to cover the cost are drawn,
/// each recognising revenue in proportion to its transaction price. Returns
/// the draws and the `grant_consumed` thresholds they crossed.
fn burn_down(startup: &mut Startup, currency: &str, time: Millis, cost: i64) -> (Vec<Drawn>, Vec<Crossed>) {
    let mut order: Vec<String> = Vec::new();
    let mut covered = 0i128;
    for (_, _, _, _, grant_id) in startup.index.burn.get(currency).into_iter().flatten() {
        if covered >= i128::from(cost) {
            break;
        }
        let grant = &startup.grants[grant_id];
        let eligible = grant.effective_at <= time && grant.expires_at.is_none_or(|expires_at| time < expires_at);
        if eligible {
            covered += i128::from(grant.remaining_face());
            order.push(grant_id.clone());
        }
    }
    let mut owed = cost;
    let mut draws = Vec::new();
    let mut crossed = Vec::new();
    for grant_id in order {
        if owed == 0 {
            break;
        }
        let drawn = startup
            .update_grant(&grant_id, |grant| {
                let face = grant.remaining_face().min(owed);
                let price = i128::from(grant.transaction_price);
                let denominator = i128::from(grant.face);
                let consumed_before = i128::from(grant.consumed_face);
                let revenue = (mul_div_round(consumed_before + i128::from(face), price, denominator)
                    .expect("fits 128 bits")
                    - mul_div_round(consumed_before, price, denominator).expect("fits 128 bits"))
                    as i64;
                grant.consumed_face += face;
                grant.revenue_compute += revenue;
                for (bit, threshold) in CONSUMED_THRESHOLDS.iter().enumerate() {
                    let reached =
                        i128::from(grant.consumed_face) * 100 >= i128::from(*threshold) * i128::from(grant.face);
                    if reached && grant.consumed_alerts & (1 << bit) == 0 {
                        grant.consumed_alerts |= 1 << bit;
                        crossed.push((grant.grant_id.clone(), *threshold, grant.remaining_face()));
                    }
                }
                Drawn {
                    grant_id: grant.grant_id.clone(),
                    deal_id: grant.deal_id.clone(),
                    consideration: grant.consideration,
                    face,
                    revenue,
                }
            })
            .expect("eligible grants exist");
        owed -= drawn.face;
        draws.push(drawn);
    }
    (draws, crossed)
}

/// `grant_consumed` for each threshold crossed, and `first_overage` the
/// first time a currency of the start-up goes into overage.
fn usage_alerts(
    startup: &mut Startup,
    currency: &str,
    time: Millis,
    crossed: Vec<Crossed>,
    overage: i64,
    outputs: &mut Vec<Output>,
) {
    for (grant_id, threshold, remaining) in crossed {
        let threshold_text = threshold.to_string();
        outputs.push(Output::Alert(Alert {
            alert_id: identity_hash(&[
                AlertKind::GrantConsumed.as_str(),
                &startup.id,
                currency,
                &grant_id,
                &threshold_text,
            ]),
            kind: AlertKind::GrantConsumed,
            startup: startup.id.clone(),
            currency: currency.to_owned(),
            grant_id: Some(grant_id),
            threshold: Some(threshold),
            expires_at: None,
            time: Ts(time),
            remaining_face: Some(remaining),
        }));
    }
    if overage > 0 && startup.overage_alerted.insert(currency.to_owned()) {
        outputs.push(Output::Alert(Alert {
            alert_id: identity_hash(&[AlertKind::FirstOverage.as_str(), &startup.id, currency, "", ""]),
            kind: AlertKind::FirstOverage,
            startup: startup.id.clone(),
            currency: currency.to_owned(),
            grant_id: None,
            threshold: None,
            expires_at: None,
            time: Ts(time),
            remaining_face: None,
        }));
    }
}

//! The balances record of a start-up (spec §10): its figures per currency
//! and every grant, derived from the state.

use crate::records::{Balances, CurrencyBalance, GrantBalance, InputOffset};
use crate::units::Ts;

use super::state::Startup;

/// The balances record of `startup`, task `task`, at `offsets`.
pub fn balances_of(startup: &Startup, task: u32, offsets: &[InputOffset]) -> Balances {
    let currencies = startup
        .figures
        .iter()
        .map(|(currency, figures)| {
            let grants: Vec<_> = startup.grants.values().filter(|grant| &grant.currency == currency).collect();
            let open = || grants.iter().filter(|grant| grant.is_open());
            // The fold keeps every one of these sums within 64 bits (rules:
            // `rpo_bound`); they are added in 128 bits all the same.
            let contract_liability = to_i64(open().map(|grant| i128::from(grant.unearned())).sum());
            let unallocated: i128 = startup
                .deals
                .values()
                .filter(|deal| &deal.currency == currency && !deal.cancelled)
                .map(|deal| i128::from(deal.transaction_price) - i128::from(deal.granted_price))
                .sum();
            CurrencyBalance {
                currency: currency.clone(),
                granted_face: figures.granted_face,
                consumed_face: figures.consumed_face,
                expired_face: figures.expired_face,
                revoked_face: figures.revoked_face,
                remaining_face: to_i64(grants.iter().map(|grant| i128::from(grant.remaining_face())).sum()),
                usage_cost: figures.usage_cost,
                usage_count: figures.usage_count,
                overage: figures.overage,
                revenue_compute: figures.revenue_compute,
                revenue_overage: figures.revenue_overage,
                revenue_breakage: figures.revenue_breakage,
                revocation_reversal: figures.revocation_reversal,
                contract_liability,
                escrow_remaining_face: to_i64(
                    open().filter(|grant| grant.escrow).map(|grant| i128::from(grant.remaining_face())).sum(),
                ),
                rpo: to_i64(i128::from(contract_liability) + unallocated),
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

/// A sum the fold bounds to 64 bits; saturates rather than panics if a
/// state written by another version breaks the bound.
fn to_i64(sum: i128) -> i64 {
    i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
}

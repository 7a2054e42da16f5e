//! Booking (§9): a rule's flows into their month, its journal entries, and
//! the 64-bit bound of the running figures.

use crate::events::{Event, Topic};
use crate::records::{identity_hash, JournalEntry, Output, PeriodFigures};
use crate::units::{Millis, Month, Ts};

use super::state::Startup;

/// Writes the journal entries of one source event, numbering their
/// positions and skipping zero amounts (§9).
pub(super) struct Entries<'a> {
    pub(super) topic: Topic,
    pub(super) startup: &'a str,
    pub(super) source: &'a str,
    pub(super) id: &'a str,
    pub(super) event_time: Millis,
    pub(super) period: Month,
    pub(super) adjusts_period: Option<Month>,
    pub(super) position: u32,
}

impl Entries<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn write(
        &mut self,
        outputs: &mut Vec<Output>,
        cause: &str,
        currency: &str,
        debit: &str,
        credit: &str,
        amount: i64,
        deal_id: Option<&str>,
        grant_id: Option<&str>,
    ) {
        debug_assert!(amount >= 0, "journal amounts are never negative");
        if amount == 0 {
            return;
        }
        let position = self.position.to_string();
        self.position += 1;
        let entry_id = identity_hash(&[self.topic.name(), self.startup, self.source, self.id, &position]);
        outputs.push(Output::Journal(JournalEntry {
            entry_id,
            cause: cause.to_owned(),
            startup: self.startup.to_owned(),
            currency: currency.to_owned(),
            debit: debit.to_owned(),
            credit: credit.to_owned(),
            amount,
            deal_id: deal_id.map(str::to_owned),
            grant_id: grant_id.map(str::to_owned),
            event_time: Ts(self.event_time),
            period: self.period,
            adjusts_period: self.adjusts_period,
            topic: self.topic.name().to_owned(),
            source: self.source.to_owned(),
            id: self.id.to_owned(),
        }));
    }
}

/// Books flows at `event_time` (§9): into the event's month if it is open,
/// else into the earliest open month as an adjustment of the event's month.
pub(super) fn book(
    startup: &mut Startup,
    event_time: Millis,
    currency: &str,
    flows: &PeriodFigures,
) -> (Month, Option<Month>) {
    let (period, adjusts) = startup.book.booking_month(Month::of(event_time));
    if startup.book.closed_through.is_none() {
        startup.book.first = Some(startup.book.first.map_or(period, |first| first.min(period)));
    }
    let month = startup.book.open.entry(period).or_default().entry(currency.to_owned()).or_default();
    month.total.add(flows);
    if let Some(adjusted) = adjusts {
        month.adjustments.entry(adjusted).or_default().add(flows);
    }
    startup.figures.entry(currency.to_owned()).or_default().add(flows);
    (period, adjusts)
}

/// The journal writer of `event`, booked in `period`.
pub(super) fn entries_for<'a>(
    topic: Topic,
    startup: &'a Startup,
    event: &'a Event,
    period: Month,
    adjusts_period: Option<Month>,
) -> Entries<'a> {
    Entries {
        topic,
        startup: &startup.id,
        source: &event.source,
        id: &event.id,
        event_time: event.time,
        period,
        adjusts_period,
        position: 0,
    }
}

/// Whether a running 64-bit figure can take `more`.
pub(super) fn fits_i64(total: i64, more: i64) -> bool {
    total.checked_add(more).is_some()
}

//! What-if pricing: the same history folded twice, once with the actual
//! rate cards and once with alternative ones, compared per start-up, month
//! and currency (usage cost, revenue recognized, overage).
//!
//! Figures come from the output records each fold derived: usage cost and
//! overage from usage-rated, revenue from the journal (credits to a
//! `revenue_*` account, less debits to one). The month is the booking month
//! (`period`), the month a statement shows the figure in; bookings into a
//! closed month's successor carry the month they were booked in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::records::Output;
use crate::units::Month;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub usage_cost: i64,
    pub revenue: i64,
    pub overage: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Actual,
    WhatIf,
}

/// (start-up, month, currency) → figures of the actual history and of the what-if.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub rows: BTreeMap<(String, Month, String), [Figures; 2]>,
}

impl Comparison {
    pub fn absorb(&mut self, side: Side, outputs: &[Output]) {
        let index = match side {
            Side::Actual => 0,
            Side::WhatIf => 1,
        };
        for output in outputs {
            match output {
                Output::UsageRated(usage) => {
                    let figures = &mut self.row(&usage.startup, usage.period, &usage.currency)[index];
                    figures.usage_cost += usage.cost;
                    figures.overage += usage.overage;
                }
                Output::Journal(entry) => {
                    let sign = i64::from(entry.credit.starts_with("revenue_"))
                        - i64::from(entry.debit.starts_with("revenue_"));
                    if sign != 0 {
                        self.row(&entry.startup, entry.period, &entry.currency)[index].revenue += sign * entry.amount;
                    }
                }
                Output::Statement(_) | Output::Alert(_) | Output::DeadLetter(_) => {}
            }
        }
    }

    fn row(&mut self, startup: &str, month: Month, currency: &str) -> &mut [Figures; 2] {
        self.rows.entry((startup.to_owned(), month, currency.to_owned())).or_default()
    }

    /// Totals over every row: actual and what-if.
    pub fn totals(&self) -> [Figures; 2] {
        let mut totals = [Figures::default(); 2];
        for sides in self.rows.values() {
            for (total, figures) in totals.iter_mut().zip(sides) {
                total.usage_cost += figures.usage_cost;
                total.revenue += figures.revenue;
                total.overage += figures.overage;
            }
        }
        totals
    }

    /// One line per row, amounts in micros (exact).
    pub fn csv(&self) -> String {
        let mut text = String::from(
            "startup,month,currency,usage_cost_actual,usage_cost_what_if,usage_cost_delta,\
             revenue_actual,revenue_what_if,revenue_delta,overage_actual,overage_what_if,overage_delta\n",
        );
        for ((startup, month, currency), [actual, what_if]) in &self.rows {
            let _ = writeln!(
                text,
                "{},{month},{currency},{},{},{},{},{},{},{},{},{}",
                csv_field(startup),
                actual.usage_cost,
                what_if.usage_cost,
                what_if.usage_cost - actual.usage_cost,
                actual.revenue,
                what_if.revenue,
                what_if.revenue - actual.revenue,
                actual.overage,
                what_if.overage,
                what_if.overage - actual.overage,
            );
        }
        text
    }

    /// A readable table in currency units (two decimals; the CSV is exact).
    pub fn table(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{:<20} {:<7} {:<4} {:>16} {:>16} {:>14} {:>16} {:>16} {:>14} {:>14} {:>14}",
            "startup",
            "month",
            "cur",
            "cost actual",
            "cost what-if",
            "cost delta",
            "revenue actual",
            "revenue what-if",
            "revenue delta",
            "overage actual",
            "overage what-if"
        );
        let line = |text: &mut String, startup: &str, month: &str, currency: &str, [actual, what_if]: &[Figures; 2]| {
            let _ = writeln!(
                text,
                "{startup:<20} {month:<7} {currency:<4} {:>16} {:>16} {:>14} {:>16} {:>16} {:>14} {:>14} {:>14}",
                units(actual.usage_cost),
                units(what_if.usage_cost),
                units(what_if.usage_cost - actual.usage_cost),
                units(actual.revenue),
                units(what_if.revenue),
                units(what_if.revenue - actual.revenue),
                units(actual.overage),
                units(what_if.overage),
            );
        };
        for ((startup, month, currency), sides) in &self.rows {
            line(&mut text, startup, &month.to_string(), currency, sides);
        }
        line(&mut text, "total (all currencies)", "", "", &self.totals());
        text
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
}

/// Micros as currency units with two decimals and thousands separators.
fn units(micros: i64) -> String {
    let cents = (micros as i128 * 100 / 1_000_000).unsigned_abs();
    let whole = (cents / 100).to_string();
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if micros < 0 && cents > 0 { "-" } else { "" };
    format!("{sign}{grouped}.{:02}", cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_round_towards_zero_and_group_thousands() {
        assert_eq!(units(1_234_567_890_000), "1,234,567.89");
        assert_eq!(units(-1_500_000), "-1.50");
        assert_eq!(units(0), "0.00");
        assert_eq!(units(9_999), "0.00");
        assert_eq!(units(-9_999), "0.00");
    }

    #[test]
    fn csv_quotes_fields_that_need_it() {
        assert_eq!(csv_field("acme"), "acme");
        assert_eq!(csv_field("a,\"b\""), "\"a,\"\"b\"\"\"");
    }
}

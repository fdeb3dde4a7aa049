//! The budgets page: every budget of the current governance model, with what its ledger
//! says is used and reserved against each limit, and where the period stands.
//!
//! The ledger keeps each budget's current totals, not their history, so the burn chart draws
//! used and reserved against the limit now, with a marker at the share of the period already
//! gone: spending ahead of time is what an operator looks for.

use aios_core::{AgentId, Money, RoleId, Timestamp};
use aios_governance::{
    Budget, BudgetKey, BudgetLimits, BudgetScope, BudgetUsage, Dimension, Period, Usage,
};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{Datelike, TimeZone};
use maud::{html, Markup};

use crate::charts::{burn_chart, BurnRow};
use crate::pages::{failed, html_response, message, time, S};

/// Where `now` falls in `period`: the window's start and end (UTC), the same windows the
/// ledgers reset by ([`Period::window`]); `None` for [`Period::Total`], which never resets.
pub(crate) fn period_bounds(period: Period, now: Timestamp) -> Option<(Timestamp, Timestamp)> {
    let at = |secs: i64| chrono::DateTime::from_timestamp(secs, 0);
    let fixed = |len: i64, shift: i64| {
        let start = (now.timestamp() + shift).div_euclid(len) * len - shift;
        Some((at(start)?, at(start + len)?))
    };
    match period {
        Period::Total => None,
        Period::Hour => fixed(3_600, 0),
        Period::Day => fixed(86_400, 0),
        // weeks start on Monday; 1970-01-01 was a Thursday
        Period::Week => fixed(604_800, 3 * 86_400),
        Period::Month => {
            let first = |y: i32, m: u32| chrono::Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single();
            let (y, m) = (now.year(), now.month());
            let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            Some((first(y, m)?, first(next.0, next.1)?))
        }
    }
}

/// The share of the window `bounds` gone at `now`, from 0 to 1.
fn elapsed(bounds: (Timestamp, Timestamp), now: Timestamp) -> f64 {
    let (start, end) = bounds;
    let len = (end - start).num_milliseconds() as f64;
    if len <= 0.0 {
        return 1.0;
    }
    ((now - start).num_milliseconds() as f64 / len).clamp(0.0, 1.0)
}

fn period_name(p: Period) -> &'static str {
    match p {
        Period::Total => "never resets",
        Period::Hour => "hourly",
        Period::Day => "daily",
        Period::Week => "weekly (from Monday)",
        Period::Month => "monthly",
    }
}

fn scope_text(scope: &BudgetScope) -> String {
    match scope {
        BudgetScope::Organisation => "the organisation".into(),
        BudgetScope::Role(r) => format!("role {r} (all its agents together)"),
        BudgetScope::Agent(a) => format!("agent {a}"),
        BudgetScope::Run => "each run, separately".into(),
    }
}

fn key_of(scope: &BudgetScope) -> Option<BudgetKey> {
    match scope {
        BudgetScope::Organisation => Some(BudgetKey::Organisation),
        BudgetScope::Role(r) => Some(BudgetKey::Role(RoleId::from_name(r))),
        BudgetScope::Agent(a) => Some(BudgetKey::Agent(AgentId::from_name(a))),
        BudgetScope::Run => None,
    }
}

/// An amount of dimension `d` as a human reads it (money with two decimals).
fn amount(d: Dimension, v: i64) -> String {
    match d {
        Dimension::Cost | Dimension::Payments => Money::from_minor(v).to_string(),
        _ => v.to_string(),
    }
}

/// One dimension's figures: (dimension, limit, used, reserved).
type Figures = (Dimension, Option<i64>, i64, i64);

/// The dimensions worth a row: limited ones, and unlimited ones something was spent in.
fn figures(limits: &BudgetLimits, committed: &Usage, reserved: &Usage) -> Vec<Figures> {
    let limit = limits.array();
    Dimension::ALL
        .iter()
        .map(|&d| {
            let l = limit[d as usize];
            (
                d,
                (l != i64::MAX).then_some(l),
                committed.get(d),
                reserved.get(d),
            )
        })
        .filter(|(_, l, u, r)| l.is_some() || *u != 0 || *r != 0)
        .collect()
}

fn burn_rows(figures: &[Figures]) -> Vec<BurnRow> {
    figures
        .iter()
        .map(|&(d, limit, used, reserved)| BurnRow {
            label: d.name().to_string(),
            used: used as f64,
            reserved: reserved as f64,
            limit: limit.map(|l| l as f64),
            text: match limit {
                Some(l) => format!(
                    "{} used + {} reserved of {} ({})",
                    amount(d, used),
                    amount(d, reserved),
                    amount(d, l),
                    share(used.saturating_add(reserved), l)
                ),
                None => format!(
                    "{} used + {} reserved, unlimited",
                    amount(d, used),
                    amount(d, reserved)
                ),
            },
        })
        .collect()
}

fn share(part: i64, whole: i64) -> String {
    if whole <= 0 {
        return "closed".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

fn budget_card(b: &Budget, usage: Option<&BudgetUsage>, now: Timestamp) -> Markup {
    let model_limits = BudgetLimits {
        limits: b.limits,
        period: b.period,
        alerts: b.alerts.clone(),
    };
    // what the ledger holds is what is in force; before anything drew on the budget, the
    // model's limits
    let limits = usage.map(|u| &u.limits).unwrap_or(&model_limits);
    let (committed, reserved) = usage
        .map(|u| (u.committed, u.reserved))
        .unwrap_or((Usage::ZERO, Usage::ZERO));
    let rows = figures(limits, &committed, &reserved);
    let bounds = period_bounds(limits.period, now);
    let per_run = b.scope == BudgetScope::Run;
    let alerts = limits
        .alerts
        .iter()
        .map(|a| format!("{a}%"))
        .collect::<Vec<_>>()
        .join(", ");
    html! {
        article.budget {
            h2 { "Budget " code { (b.key) } }
            dl {
                dt { "Scope" } dd { (scope_text(&b.scope)) }
                @if let Some(parent) = &b.parent { dt { "Part of" } dd { code { (parent) } } }
                dt { "Period" } dd {
                    (period_name(limits.period))
                    @if let Some((start, end)) = bounds {
                        ": this one from " (time(&start)) " to " (time(&end))
                    }
                }
                dt { "Alerts at" } dd { (if alerts.is_empty() { "-".to_string() } else { alerts }) }
            }
            @if per_run {
                p.hint { "Every run gets these limits when it starts; what a run used is kept with the run." }
                table.limits {
                    thead { tr { th { "Dimension" } th { "Limit per run" } } }
                    tbody { @for (d, l, _, _) in &rows { tr { td { (d.name()) } td { (l.map(|l| amount(*d, l)).unwrap_or_else(|| "unlimited".into())) } } } }
                }
            } @else {
                @if usage.is_none() {
                    p.hint { "Nothing has drawn on this budget yet." }
                }
                table.limits {
                    thead { tr { th { "Dimension" } th { "Limit" } th { "Used" } th { "Reserved" } th { "Left" } } }
                    tbody {
                        @for (d, l, u, r) in &rows {
                            tr {
                                td { (d.name()) }
                                td { (l.map(|l| amount(*d, l)).unwrap_or_else(|| "unlimited".into())) }
                                td { (amount(*d, *u)) }
                                td { (amount(*d, *r)) }
                                td { (l.map(|l| amount(*d, l.saturating_sub(u.saturating_add(*r)).max(0))).unwrap_or_else(|| "-".into())) }
                            }
                        }
                    }
                }
                (burn_chart(&format!("burn of budget {}", b.key), &burn_rows(&rows), bounds.map(|w| elapsed(w, now))))
            }
        }
    }
}

/// The budget of one run as its page shows it: the limits the run got, what it used and
/// holds, and the burn chart; nothing when the console has no ledger or the run none.
pub(crate) async fn run_budget(
    c: &crate::Console,
    run: aios_core::RunId,
) -> Result<Markup, String> {
    let Some(ledger) = &c.budgets else {
        return Ok(html! {});
    };
    let usage = ledger
        .usage(BudgetKey::Run(run))
        .await
        .map_err(|e| e.to_string())?;
    let Some(u) = usage else {
        return Ok(html! {});
    };
    let rows = figures(&u.limits, &u.committed, &u.reserved);
    Ok(html! {
        h2 { "Budget of this run" }
        (burn_chart(&format!("burn of the budget of run {run}"), &burn_rows(&rows), None))
    })
}

pub(crate) async fn budgets(State(c): S, headers: HeaderMap) -> Response {
    let s = match c.viewer(&headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(ledger) = &c.budgets else {
        return message(
            &c,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Budgets",
            "this console was mounted without the budget ledger",
        );
    };
    let governor = c.orchestrator.governor();
    let model = governor.model();
    let mut usages = Vec::with_capacity(model.budgets.len());
    for b in &model.budgets {
        let usage = match key_of(&b.scope) {
            Some(key) => match ledger.usage(key).await {
                Ok(u) => u,
                Err(e) => return failed(&c, &s, "the budget ledger could not be read", e),
            },
            None => None,
        };
        usages.push(usage);
    }
    let now = c.clock.now();
    let body = html! {
        p.hint { "The budgets of governance model version " (governor.version()) ", as the ledger holds them now (" (time(&now)) "). "
            "The ledger keeps each budget's totals for the current period, not their history: "
            "each chart shows used and reserved against the limit, and the share of the period gone." }
        p.legend {
            span { span.swatch.used {} "used" }
            span { span.swatch.reserved {} "reserved (calls in flight)" }
            span { span.swatch.now {} "time gone in the period" }
        }
        @if model.budgets.is_empty() {
            p.empty { "The governance model sets no budget (so nothing may be spent)." }
        }
        @for (b, u) in model.budgets.iter().zip(&usages) {
            (budget_card(b, u.as_ref(), now))
        }
    };
    html_response(StatusCode::OK, c.page("Budgets", Some(&s), body))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn t(s: &str) -> Timestamp {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn periods_are_the_windows_the_ledgers_reset_by() {
        let now = t("2026-12-02T15:30:00Z"); // a Wednesday
        let check = |p: Period, start: &str, end: &str| {
            let (a, b) = period_bounds(p, now).unwrap();
            assert_eq!((a, b), (t(start), t(end)), "{p:?}");
            // the same window as the ledger's, and the next one starts at the end
            assert_eq!(p.window(a), p.window(now), "{p:?}");
            assert_eq!(p.window(b), p.window(now) + 1, "{p:?}");
            assert_eq!(p.window(b - chrono::Duration::seconds(1)), p.window(now));
        };
        check(Period::Hour, "2026-12-02T15:00:00Z", "2026-12-02T16:00:00Z");
        check(Period::Day, "2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z");
        check(Period::Week, "2026-11-30T00:00:00Z", "2026-12-07T00:00:00Z");
        check(
            Period::Month,
            "2026-12-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
        );
        assert_eq!(period_bounds(Period::Total, now), None);
        // a Monday at midnight opens its week; before 1970 too
        let monday = t("2026-11-30T00:00:00Z");
        assert_eq!(period_bounds(Period::Week, monday).unwrap().0, monday);
        let old = t("1969-12-31T23:00:00Z");
        let (a, b) = period_bounds(Period::Week, old).unwrap();
        assert!(a <= old && old < b, "{a} {b}");
        assert_eq!(a, t("1969-12-29T00:00:00Z"));
    }

    #[test]
    fn the_share_of_the_period_gone() {
        let w = (t("2026-12-01T00:00:00Z"), t("2026-12-03T00:00:00Z"));
        assert_eq!(elapsed(w, t("2026-12-02T00:00:00Z")), 0.5);
        assert_eq!(elapsed(w, t("2026-11-01T00:00:00Z")), 0.0);
        assert_eq!(elapsed(w, t("2027-01-01T00:00:00Z")), 1.0);
        assert_eq!(elapsed((w.0, w.0), w.0), 1.0);
    }

    #[test]
    fn rows_are_the_limited_dimensions_and_what_was_spent_unlimited() {
        let limits = BudgetLimits::total(aios_governance::Limits {
            cost: Some(Money::from_minor(5_000)),
            ..Default::default()
        });
        let used = Usage::cost(Money::from_minor(1_250)).with_tokens(300);
        let reserved = Usage::cost(Money::from_minor(250));
        let f = figures(&limits, &used, &reserved);
        assert_eq!(
            f,
            vec![
                (Dimension::Cost, Some(5_000), 1_250, 250),
                (Dimension::Tokens, None, 300, 0)
            ]
        );
        let rows = burn_rows(&f);
        assert_eq!(rows[0].text, "12.50 used + 2.50 reserved of 50.00 (30%)");
        assert_eq!(rows[1].text, "300 used + 0 reserved, unlimited");
        assert_eq!(rows[1].limit, None);
        assert_eq!(share(1, 0), "closed");
    }
}

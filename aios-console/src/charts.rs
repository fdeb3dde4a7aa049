//! Charts as SVG, drawn on the server: horizontal bars, a gauge, budget burn and lines over
//! time. Every label is escaped
//! by the template; every number is clamped so a bad figure cannot draw outside the chart.

use maud::{html, Markup};

/// One bar: a label, the value drawn, and the text shown next to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// What the bar is (`pathway sales`).
    pub label: String,
    /// The value, in the chart's unit.
    pub value: f64,
    /// The value as shown (`72%`, `1.2 s`).
    pub text: String,
}

const WIDTH: f64 = 640.0;
const LABEL: f64 = 180.0;
const ROW: f64 = 26.0;
const PLOT: f64 = WIDTH - LABEL - 90.0;

/// Horizontal bars scaled to `max` (or to the largest value when `max` is `None`); a title
/// for screen readers. An empty list draws a chart that says there is nothing to show.
pub fn bar_chart(title: &str, bars: &[Bar], max: Option<f64>) -> Markup {
    let largest = bars
        .iter()
        .map(|b| b.value)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let max = max.filter(|m| m.is_finite() && *m > 0.0).unwrap_or(largest);
    let height = (bars.len().max(1) as f64) * ROW + 8.0;
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img"
            width=(WIDTH) height=(height) viewBox={ "0 0 " (WIDTH) " " (height) } {
            title { (title) }
            @if bars.is_empty() {
                text x="4" y="18" class="chart-empty" { "nothing to show yet" }
            }
            @for (i, b) in bars.iter().enumerate() {
                @let y = i as f64 * ROW + 4.0;
                @let w = scaled(b.value, max);
                text x=(LABEL - 6.0) y=(y + 15.0) text-anchor="end" class="chart-label" { (b.label) }
                rect x=(LABEL) y=(y) width=(w) height=(ROW - 8.0) class="chart-bar" {}
                text x=(LABEL + w + 6.0) y=(y + 15.0) class="chart-value" { (b.text) }
            }
        }
    }
}

/// A gauge from 0 to 100 % with `ratio` filled (over 1 shows full, in the warning colour).
pub fn gauge(title: &str, ratio: Option<f64>) -> Markup {
    let r = ratio.filter(|r| r.is_finite()).map(|r| r.max(0.0));
    let w = r.map(|r| r.min(1.0) * (WIDTH - 100.0)).unwrap_or(0.0);
    let class = if r.unwrap_or(0.0) > 1.0 {
        "chart-bar over"
    } else {
        "chart-bar"
    };
    html! {
        svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img"
            width=(WIDTH) height="34" viewBox={ "0 0 " (WIDTH) " 34" } {
            title { (title) }
            rect x="0" y="4" width=(WIDTH - 100.0) height="22" class="chart-track" {}
            rect x="0" y="4" width=(w) height="22" class=(class) {}
            text x=(WIDTH - 94.0) y="20" class="chart-value" {
                @match r {
                    Some(r) => { (format!("{:.0}%", r * 100.0)) }
                    None => { "no limit set" }
                }
            }
        }
    }
}

/// One dimension of a budget in a [`burn_chart`]: what is used (committed) and reserved
/// (held by calls in flight) against the limit, in one unit.
#[derive(Debug, Clone, PartialEq)]
pub struct BurnRow {
    /// What is limited (`cost`).
    pub label: String,
    /// Committed in the current period.
    pub used: f64,
    /// Reserved and not yet settled.
    pub reserved: f64,
    /// The limit (`None`: unlimited; the row then shows the figures without a bar).
    pub limit: Option<f64>,
    /// The figures as shown (`12.00 used + 3.00 reserved of 50.00`).
    pub text: String,
}

const BURN_ROW: f64 = 34.0;

/// A budget's burn: per dimension a track for the limit, the used part, the reserved part
/// after it (together past the limit: drawn to the limit in the warning colour), and, when
/// the budget resets by period, a marker at `elapsed`, the share of the period gone, so
/// spending ahead of time shows at a glance.
pub fn burn_chart(title: &str, rows: &[BurnRow], elapsed: Option<f64>) -> Markup {
    let top = if elapsed.is_some() { 16.0 } else { 4.0 };
    let height = (rows.len().max(1) as f64) * BURN_ROW + top + 4.0;
    let elapsed = elapsed.filter(|e| e.is_finite()).map(|e| e.clamp(0.0, 1.0));
    html! {
        svg class="chart burn" xmlns="http://www.w3.org/2000/svg" role="img"
            width=(WIDTH) height=(height) viewBox={ "0 0 " (WIDTH) " " (height) } {
            title { (title) }
            @if rows.is_empty() {
                text x="4" y=(top + 14.0) class="chart-empty" { "no limits set" }
            }
            @for (i, r) in rows.iter().enumerate() {
                @let y = i as f64 * BURN_ROW + top;
                text x=(LABEL - 6.0) y=(y + 13.0) text-anchor="end" class="chart-label" { (r.label) }
                @match r.limit.filter(|l| l.is_finite() && *l > 0.0) {
                    Some(limit) => {
                        @let used = scaled(r.used, limit);
                        @let reserved = scaled(r.used + r.reserved.max(0.0), limit) - used;
                        @let over = r.used + r.reserved.max(0.0) > limit;
                        rect x=(LABEL) y=(y) width=(PLOT) height="18" class="chart-track" {}
                        rect x=(LABEL) y=(y) width=(used) height="18"
                            class=(if over { "chart-bar over" } else { "chart-bar" }) {}
                        rect x=(LABEL + used) y=(y) width=(reserved) height="18" class="chart-reserved" {}
                    }
                    None => {
                        @if r.limit == Some(0.0) {
                            rect x=(LABEL) y=(y) width=(PLOT) height="18" class="chart-bar over" {}
                        }
                    }
                }
                text x=(LABEL) y=(y + 30.0) class="chart-value" { (r.text) }
                @if let (Some(e), true) = (elapsed, r.limit.is_some()) {
                    // over the bar only, so the figures below stay readable
                    line x1=(LABEL + e * PLOT) y1=(y - 2.0) x2=(LABEL + e * PLOT) y2=(y + 20.0) class="chart-now" {}
                }
            }
            @if let Some(e) = elapsed {
                text x=(LABEL + e * PLOT) y="10" text-anchor=(if e < 0.25 { "start" } else if e > 0.75 { "end" } else { "middle" }) class="chart-value" {
                    (format!("{:.0}% of the period gone", e * 100.0))
                }
            }
        }
    }
}

/// One line of a [`line_chart`]: its name (for the legend) and one value per label of the
/// time axis (`None`: nothing to measure in that bucket, drawn as a gap).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// What the line is (`median`).
    pub name: String,
    /// The values, one per label.
    pub values: Vec<Option<f64>>,
}

const LINE_HEIGHT: f64 = 190.0;
const LINE_LEFT: f64 = 70.0;
const LINE_BOTTOM: f64 = 34.0;
const LINE_TOP: f64 = 24.0;

/// Values over time: one point per label of the time axis (`2026-11-30`), joined where
/// consecutive buckets have values, one line per series (at most four are drawn), on an
/// axis from 0 to `max` (or to the largest value), `unit` formatting the axis and the
/// points' tooltips. Without any value it draws a chart that says there is nothing to show.
pub fn line_chart(
    title: &str,
    labels: &[String],
    series: &[Series],
    max: Option<f64>,
    unit: &dyn Fn(f64) -> String,
) -> Markup {
    let series = &series[..series.len().min(4)];
    let finite = |v: &Option<f64>| v.filter(|v| v.is_finite());
    let n = labels.len();
    let values = || {
        series
            .iter()
            .flat_map(|s| s.values.iter().take(n).filter_map(finite))
    };
    let largest = values().fold(0.0_f64, f64::max);
    let max = max
        .filter(|m| m.is_finite() && *m > 0.0)
        .unwrap_or(largest)
        .max(f64::MIN_POSITIVE);
    let plot_w = WIDTH - LINE_LEFT - 20.0;
    let plot_h = LINE_HEIGHT - LINE_BOTTOM - LINE_TOP;
    let x = |i: usize| {
        if n > 1 {
            LINE_LEFT + i as f64 * plot_w / (n - 1) as f64
        } else {
            LINE_LEFT + plot_w / 2.0
        }
    };
    let y = |v: f64| LINE_TOP + plot_h - (v.clamp(0.0, max) / max) * plot_h;
    // per series, the runs of consecutive points with values, each a polyline
    let lines: Vec<Vec<String>> = series
        .iter()
        .map(|s| {
            let mut segments = vec![];
            let mut current = String::new();
            for (i, v) in s.values.iter().take(n).enumerate() {
                match finite(v) {
                    Some(v) => current.push_str(&format!("{:.1},{:.1} ", x(i), y(v))),
                    None if !current.is_empty() => segments.push(std::mem::take(&mut current)),
                    None => {}
                }
            }
            if !current.is_empty() {
                segments.push(current);
            }
            segments
        })
        .collect();
    // the axis at 0, half and the top, each label once (all zeros: only 0)
    let mut ticks: Vec<(f64, String)> = vec![];
    for f in [0.0, 0.5, 1.0] {
        let label = unit(max * f);
        if !matches!(ticks.last(), Some((_, l)) if *l == label) {
            ticks.push((f, label));
        }
    }
    // at most about eight labels on the time axis
    let every = n.div_ceil(8).max(1);
    html! {
        svg class="chart line" xmlns="http://www.w3.org/2000/svg" role="img"
            width=(WIDTH) height=(LINE_HEIGHT) viewBox={ "0 0 " (WIDTH) " " (LINE_HEIGHT) } {
            title { (title) }
            @if values().next().is_none() {
                text x=(LINE_LEFT) y="50" class="chart-empty" { "nothing to show yet" }
            } @else {
                @for (f, label) in &ticks {
                    line x1=(LINE_LEFT) x2=(LINE_LEFT + plot_w) y1=(y(max * f)) y2=(y(max * f)) class="chart-grid" {}
                    text x=(LINE_LEFT - 6.0) y=(y(max * f) + 4.0) text-anchor="end" class="chart-value" { (label) }
                }
                @for (k, (s, segments)) in series.iter().zip(&lines).enumerate() {
                    @let class = format!("chart-line s{k}");
                    @for seg in segments {
                        polyline points=(seg.trim_end()) class=(class) {}
                    }
                    @for (i, v) in s.values.iter().take(n).enumerate() {
                        @if let Some(v) = finite(v) {
                            circle cx=(x(i)) cy=(y(v)) r="3" class={ "chart-point s" (k) } {
                                title { (labels[i]) " " (s.name) ": " (unit(v)) }
                            }
                        }
                    }
                    @if series.len() > 1 {
                        rect x=(LINE_LEFT + k as f64 * 130.0) y="6" width="10" height="10" class={ "chart-key s" (k) } {}
                        text x=(LINE_LEFT + k as f64 * 130.0 + 14.0) y="15" class="chart-label" { (s.name) }
                    }
                }
            }
            @for (i, l) in labels.iter().enumerate() {
                @if i % every == 0 || i + 1 == n {
                    text x=(x(i)) y=(LINE_HEIGHT - 12.0) text-anchor="middle" class="chart-label" { (l) }
                }
            }
        }
    }
}

fn scaled(value: f64, max: f64) -> f64 {
    if !value.is_finite() || value <= 0.0 || max <= 0.0 {
        return 0.0;
    }
    (value / max).min(1.0) * PLOT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(label: &str, value: f64) -> Bar {
        Bar {
            label: label.into(),
            value,
            text: value.to_string(),
        }
    }

    #[test]
    fn bars_scale_to_the_largest_and_stay_inside() {
        let svg = bar_chart("t", &[bar("a", 50.0), bar("b", 100.0)], None).into_string();
        assert!(svg.contains(&format!("width=\"{}\"", PLOT / 2.0)), "{svg}");
        assert!(svg.contains(&format!("width=\"{PLOT}\"")), "{svg}");
        // a bad or too large value draws nothing or a full bar, never outside
        let svg = bar_chart("t", &[bar("a", f64::NAN), bar("b", 300.0)], Some(100.0)).into_string();
        assert!(svg.contains("width=\"0\""), "{svg}");
        assert!(svg.contains(&format!("width=\"{PLOT}\"")), "{svg}");
        assert!(!svg.contains("=\"NaN\""), "{svg}");
    }

    #[test]
    fn labels_are_escaped_and_empty_charts_say_so() {
        let svg = bar_chart("<t>", &[bar("<script>x</script>", 1.0)], None).into_string();
        assert!(!svg.contains("<script>"), "{svg}");
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        let empty = bar_chart("t", &[], None).into_string();
        assert!(empty.contains("nothing to show"), "{empty}");
    }

    #[test]
    fn the_gauge_fills_by_ratio_and_marks_overspend() {
        let half = gauge("b", Some(0.5)).into_string();
        assert!(half.contains(&format!("width=\"{}\"", (WIDTH - 100.0) / 2.0)));
        assert!(half.contains("50%"));
        let over = gauge("b", Some(1.5)).into_string();
        assert!(over.contains("over") && over.contains("150%"), "{over}");
        assert!(gauge("b", None).into_string().contains("no limit"));
    }
    #[test]
    fn burn_rows_stack_used_and_reserved_within_the_limit() {
        let row = |used: f64, reserved: f64, limit: Option<f64>| BurnRow {
            label: "cost".into(),
            used,
            reserved,
            limit,
            text: "t".into(),
        };
        let svg = burn_chart("b", &[row(25.0, 25.0, Some(100.0))], Some(0.5)).into_string();
        assert!(svg.contains(&format!("width=\"{}\"", PLOT / 4.0)), "{svg}");
        assert!(svg.contains("chart-reserved"), "{svg}");
        assert!(svg.contains("50% of the period gone"), "{svg}");
        // over the limit: drawn to the limit, in the warning colour, never past it
        let over = burn_chart("b", &[row(80.0, 60.0, Some(100.0))], None).into_string();
        assert!(over.contains("chart-bar over"), "{over}");
        assert!(
            over.contains(&format!("width=\"{}\"", PLOT * 0.8)),
            "{over}"
        );
        assert!(!over.contains("period gone"), "{over}");
        let r = (PLOT - PLOT * 0.8).to_string();
        assert!(over.contains(&format!("width=\"{r}\"")), "{over}");
        // bad figures draw nothing outside; unlimited rows draw no bar
        let bad = burn_chart(
            "b",
            &[row(f64::NAN, -5.0, Some(100.0)), row(3.0, 0.0, None)],
            Some(7.0),
        )
        .into_string();
        assert!(!bad.contains("NaN") && !bad.contains("width=\"-"), "{bad}");
        assert!(bad.contains("100% of the period gone"), "{bad}");
        assert!(burn_chart("b", &[], None)
            .into_string()
            .contains("no limits set"));
        let hostile = burn_chart(
            "<b>",
            &[BurnRow {
                label: "<script>".into(),
                ..row(1.0, 0.0, None)
            }],
            None,
        )
        .into_string();
        assert!(
            !hostile.contains("<script>") && hostile.contains("&lt;script&gt;"),
            "{hostile}"
        );
    }

    #[test]
    fn lines_break_at_gaps_and_stay_on_the_axis() {
        let labels: Vec<String> = ["d1", "d2", "d3", "d4"].map(String::from).to_vec();
        let line = |name: &str, values: Vec<Option<f64>>| Series {
            name: name.into(),
            values,
        };
        let unit = |v: f64| format!("{v:.0}%");
        let one = [line(
            "autonomy",
            vec![Some(50.0), Some(100.0), None, Some(250.0)],
        )];
        let svg = line_chart("autonomy", &labels, &one, Some(100.0), &unit).into_string();
        assert_eq!(
            svg.matches("<polyline").count(),
            2,
            "a gap splits the line: {svg}"
        );
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(!svg.contains("chart-key"), "no legend for one line: {svg}");
        // 250 on an axis to 100 is drawn at the top, not above the chart
        assert!(svg.contains(&format!(",{LINE_TOP:.1}")), "{svg}");
        assert!(!svg.contains(",-"), "{svg}");
        assert!(
            svg.contains("d1") && svg.contains("d4") && svg.contains("100%"),
            "{svg}"
        );
        // two lines, a legend; values beyond the labels are not drawn
        let two = [
            line(
                "median",
                vec![Some(1.0), Some(2.0), Some(3.0), Some(4.0), Some(99.0)],
            ),
            line("p95", vec![Some(2.0), None, None, None]),
        ];
        let svg = line_chart("latency", &labels, &two, None, &unit).into_string();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("chart-key").count(), 2, "{svg}");
        assert!(
            svg.contains("4%") && !svg.contains("99%"),
            "the axis ends at 4: {svg}"
        );
        let empty =
            line_chart("t", &labels[..1], &[line("x", vec![None])], None, &unit).into_string();
        assert!(empty.contains("nothing to show"), "{empty}");
        let hostile = line_chart(
            "t",
            &["<i>x</i>".to_string()],
            &[line("<b>", vec![Some(1.0)])],
            None,
            &unit,
        )
        .into_string();
        assert!(
            !hostile.contains("<i>") && hostile.contains("&lt;i&gt;"),
            "{hostile}"
        );
        assert!(
            !hostile.contains("<b>") && hostile.contains("&lt;b&gt;"),
            "{hostile}"
        );
        let odd = line_chart(
            "t",
            &labels[..2],
            &[line("x", vec![Some(f64::INFINITY), Some(f64::NAN)])],
            None,
            &unit,
        )
        .into_string();
        assert!(
            odd.contains("nothing to show") && !odd.contains("NaN") && !odd.contains("inf"),
            "{odd}"
        );
    }
}

//! Charts as SVG, drawn on the server: horizontal bars and a gauge. Every label is escaped
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
}

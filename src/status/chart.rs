//! Small charts of the last hour, drawn as inline SVG: no script, no
//! external asset, readable air-gapped and in a screenshot.
//!
//! The x axis is the last hour (now at the right edge), so a berth that
//! started ten minutes ago shows ten minutes of line on the right; a gap
//! in the values (a minute without cache lookups has no hit ratio) is a
//! gap in the line.

use maud::{html, Markup};

const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 60.0;
const HOUR: f64 = 3600.0;

/// One chart: a title, its points (unix seconds, value), the value at the
/// top of the scale (`None`: the largest value), and how to print values.
pub struct Chart<'a> {
    pub title: &'a str,
    pub points: Vec<(u64, Option<f64>)>,
    pub top: Option<f64>,
    pub format: fn(f64) -> String,
}

impl Chart<'_> {
    /// The chart as a figure with its caption, ending at `now`.
    pub fn render(&self, now: u64) -> Markup {
        let largest = self
            .points
            .iter()
            .filter_map(|(_, v)| *v)
            .fold(0.0_f64, f64::max);
        let top = self.top.unwrap_or(largest).max(f64::MIN_POSITIVE);
        let latest = self.points.iter().rev().find_map(|(_, v)| *v);
        let segments = segments(&self.points, now, top);
        html! {
            figure.chart {
                figcaption {
                    span.chart-title { (self.title) }
                    span.chart-now { "now " (latest.map_or("–".to_owned(), self.format)) }
                }
                svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) preserveAspectRatio="none"
                    role="img" aria-label=(self.title) {
                    line.chart-axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                    @for segment in &segments {
                        @if segment.len() == 1 {
                            circle.chart-dot cx=(segment[0].0) cy=(segment[0].1) r="2" {}
                        } @else {
                            polyline.chart-line points=(polyline(segment)) {}
                        }
                    }
                }
                div.chart-scale {
                    span { "1 h ago" }
                    span { "scale " ((self.format)(top)) }
                }
            }
        }
    }
}

/// The points as SVG coordinates, split where a value is missing.
fn segments(points: &[(u64, Option<f64>)], now: u64, top: f64) -> Vec<Vec<(f64, f64)>> {
    let start = now.saturating_sub(HOUR as u64);
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut current = Vec::new();
    for (at, value) in points {
        match value {
            Some(v) if *at >= start => {
                let x = (*at - start) as f64 / HOUR * WIDTH;
                let y = HEIGHT - (v / top).clamp(0.0, 1.0) * (HEIGHT - 2.0);
                current.push((round(x), round(y)));
            }
            _ => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn polyline(points: &[(f64, f64)]) -> String {
    points
        .iter()
        .map(|(x, y)| format!("{x},{y}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_value_breaks_the_line() {
        let now = 10_000;
        let points = vec![
            (now - 180, Some(1.0)),
            (now - 120, Some(0.5)),
            (now - 60, None),
            (now, Some(0.0)),
        ];
        let s = segments(&points, now, 1.0);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].len(), 2);
        assert_eq!(s[1], vec![(WIDTH, HEIGHT)]);
        assert_eq!(s[0][0].1, 2.0, "the top of the scale is at the top");
    }

    #[test]
    fn the_chart_is_inline_svg() {
        let chart = Chart {
            title: "requests/s",
            points: vec![(100, Some(2.0)), (160, Some(4.0))],
            top: None,
            format: |v| format!("{v:.1}"),
        };
        let html = chart.render(160).into_string();
        assert!(html.contains("<svg"), "{html}");
        assert!(html.contains("<polyline"), "{html}");
        assert!(html.contains("now 4.0"), "{html}");
    }
}

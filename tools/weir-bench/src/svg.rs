//! A latency-by-percentile plot in SVG, in the style of HdrHistogram plots:
//! the x axis spreads the tail (50%, 90%, 99%, 99.9%, ...) evenly by
//! plotting -log10(1 - percentile/100).

use std::fmt::Write;

use crate::stats::Percentiles;

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 160.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 50.0;
/// The x axis ends at 99.9999% (six nines).
const NINES_MAX: f64 = 6.0;
const COLORS: [&str; 3] = ["#1f77b4", "#d62728", "#2ca02c"];

fn nines(percentile: f64) -> f64 {
    let remaining = (1.0 - percentile / 100.0).max(10f64.powf(-NINES_MAX));
    -remaining.log10()
}

/// Renders one line per named latency curve.
pub fn render(title: &str, series: &[(&str, &Percentiles)]) -> String {
    let plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let max_ms = series
        .iter()
        .flat_map(|(_, percentiles)| percentiles.curve.iter().map(|(_, ms)| *ms))
        .fold(0.0f64, f64::max)
        .max(0.001);
    let y_max = nice_ceiling(max_ms);
    let x = |percentile: f64| MARGIN_LEFT + nines(percentile) / NINES_MAX * plot_width;
    let y = |ms: f64| MARGIN_TOP + plot_height - ms / y_max * plot_height;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="24" font-size="15">{}</text>"#, MARGIN_LEFT, escape(title));

    for (label, percentile) in [
        ("0%", 0.0),
        ("90%", 90.0),
        ("99%", 99.0),
        ("99.9%", 99.9),
        ("99.99%", 99.99),
        ("99.999%", 99.999),
        ("99.9999%", 99.9999),
    ] {
        let px = x(percentile);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{MARGIN_TOP}" x2="{px:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            MARGIN_TOP + plot_height
        );
        let _ = writeln!(
            svg,
            r#"<text x="{px:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            MARGIN_TOP + plot_height + 18.0
        );
    }
    for step in 0..=5 {
        let ms = y_max * step as f64 / 5.0;
        let py = y(ms);
        let _ = writeln!(
            svg,
            r##"<line x1="{MARGIN_LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/>"##,
            MARGIN_LEFT + plot_width
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            MARGIN_LEFT - 6.0,
            py + 4.0,
            format_ms(ms)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        MARGIN_LEFT + plot_width / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">latency (ms)</text>"#,
        MARGIN_TOP + plot_height / 2.0,
        MARGIN_TOP + plot_height / 2.0
    );

    for (index, (name, percentiles)) in series.iter().enumerate() {
        if percentiles.curve.is_empty() {
            continue;
        }
        let color = COLORS[index % COLORS.len()];
        let points: Vec<String> =
            percentiles.curve.iter().map(|(percentile, ms)| format!("{:.1},{:.1}", x(*percentile), y(*ms))).collect();
        let _ =
            writeln!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, points.join(" "));
        let legend_y = MARGIN_TOP + 20.0 * index as f64 + 10.0;
        let legend_x = MARGIN_LEFT + plot_width + 15.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{legend_x:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{color}" stroke-width="3"/>"#,
            legend_x + 20.0
        );
        let _ = writeln!(svg, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, legend_x + 26.0, legend_y + 4.0, escape(name));
    }
    svg.push_str("</svg>\n");
    svg
}

/// Rounds up to 1, 2 or 5 times a power of ten.
fn nice_ceiling(value: f64) -> f64 {
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if value <= step * magnitude {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

fn format_ms(ms: f64) -> String {
    if ms >= 10.0 || ms == 0.0 {
        format!("{ms:.0}")
    } else if ms >= 1.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_has_one_line_per_series() {
        let mut histogram = crate::stats::new_histogram();
        for micros in 1..=10_000 {
            crate::stats::record_micros(&mut histogram, micros);
        }
        let percentiles = Percentiles::from_histogram(&histogram);
        let svg = render(
            "test <run>",
            &[("produce-ack", &percentiles), ("end-to-end", &percentiles), ("fetch", &Percentiles::default())],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("test &lt;run&gt;"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn nice_ceiling_rounds_up() {
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(0.012), 0.02);
        assert_eq!(nice_ceiling(100.0), 100.0);
    }
}

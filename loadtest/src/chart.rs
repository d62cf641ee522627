//! An SVG chart of runs over time: deliveries per second (top) and p50/p99
//! latency (bottom), one line per run. Hand-written (a few polylines) rather
//! than a plotting crate: this is the whole of what the harness draws.

use std::fmt::Write;

use crate::storm::Report;

const W: f64 = 900.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 80.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf",
];

pub fn svg(title: &str, runs: &[Report]) -> String {
    let t_max = runs
        .iter()
        .flat_map(|r| r.timeline.last())
        .map(|s| s.t)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let rate_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter())
        .map(|s| s.deliveries_per_sec)
        .fold(1.0, f64::max);
    let lat_max = runs
        .iter()
        .flat_map(|r| r.timeline.iter())
        .map(|s| s.p99_us as f64 / 1000.0)
        .fold(1.0, f64::max);
    let h = 60.0 + 2.0 * (PANEL_H + 50.0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="24" font-size="15">{}</text>"#,
        escape(title)
    );
    let panels = [
        ("deliveries/s", 50.0, rate_max),
        (
            "latency ms (solid p99, dashed p50)",
            50.0 + PANEL_H + 50.0,
            lat_max,
        ),
    ];
    for (label, top, max) in panels {
        let bottom = top + PANEL_H;
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{PANEL_H}" fill="none" stroke="#999"/>"##,
            W - LEFT - 20.0
        );
        let _ = writeln!(out, r#"<text x="{LEFT}" y="{}">{label}</text>"#, top - 6.0);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LEFT - 6.0,
            top + 12.0,
            fmt(max)
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{bottom}" text-anchor="end">0</text>"#,
            LEFT - 6.0
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{} s</text>"#,
            W - 20.0,
            bottom + 16.0,
            t_max
        );
        let _ = writeln!(out, r#"<text x="{LEFT}" y="{}">0 s</text>"#, bottom + 16.0);
    }
    let x = |t: u64| LEFT + (t as f64 / t_max) * (W - LEFT - 20.0);
    let y = |v: f64, top: f64, max: f64| top + PANEL_H - (v / max).min(1.0) * PANEL_H;
    for (i, r) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line = |f: &dyn Fn(&crate::storm::Sample) -> f64, top: f64, max: f64| {
            r.timeline
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.t), y(f(s), top, max)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let (top_rate, top_lat) = (panels[0].1, panels[1].1);
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            line(&|s| s.deliveries_per_sec, top_rate, rate_max)
        );
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            line(&|s| s.p99_us as f64 / 1000.0, top_lat, lat_max)
        );
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1" stroke-dasharray="4 3" points="{}"/>"#,
            line(&|s| s.p50_us as f64 / 1000.0, top_lat, lat_max)
        );
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">{} @ {} ev/s</text>"#,
            LEFT + 10.0 + 160.0 * i as f64,
            h - 12.0,
            escape(&r.io),
            r.rate
        );
    }
    out.push_str("</svg>\n");
    out
}

fn fmt(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

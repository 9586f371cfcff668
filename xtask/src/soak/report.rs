//! The soak's samples, their verdicts and the results files: a CSV of
//! every sample, an SVG chart (hand-written polylines: three panels need
//! no plotting crate) and a markdown summary.

use std::fmt::Write as _;

/// One sample of the agent.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    /// Seconds since the agent started.
    pub t: f64,
    pub rss_kib: f64,
    pub fds: f64,
    pub series: f64,
    pub maps: f64,
    pub map_memlock_bytes: f64,
    /// Entries in the agent's hash maps (sampled less often: `None` between).
    pub map_entries: Option<f64>,
    pub produced: f64,
    pub received: f64,
    pub lost: f64,
    /// Largest produced − (received + lost) over the rings at this sample.
    pub ring_gap: f64,
    pub task_restarts: f64,
    pub tasks_down: f64,
    pub anomalies: f64,
    pub otlp_ok: f64,
    pub otlp_failed: f64,
}

impl Sample {
    pub const CSV_HEADER: &'static str = "t_s,rss_kib,fds,series,maps,map_memlock_bytes,map_entries,\
events_produced,events_received,events_lost,ring_gap_max,task_restarts,tasks_down,anomalies,\
otlp_exports_ok,otlp_exports_failed";

    pub fn csv(&self) -> String {
        format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.t,
            self.rss_kib,
            self.fds,
            self.series,
            self.maps,
            self.map_memlock_bytes,
            self.map_entries.map(|e| e.to_string()).unwrap_or_default(),
            self.produced,
            self.received,
            self.lost,
            self.ring_gap,
            self.task_restarts,
            self.tasks_down,
            self.anomalies,
            self.otlp_ok,
            self.otlp_failed,
        )
    }
}

/// A least-squares line through (t, y): slope per second and intercept.
pub fn fit(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let mt = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mt).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mt) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    Some((slope, my - slope * mt))
}

/// How one quantity moved after the warm-up.
#[derive(Debug, Clone)]
pub struct Trend {
    pub name: &'static str,
    pub unit: &'static str,
    pub first: f64,
    pub last: f64,
    pub min: f64,
    pub max: f64,
    /// Least-squares slope, per hour.
    pub slope_per_hour: f64,
    /// The fitted line's change over the judged window.
    pub drift: f64,
    /// Most drift allowed.
    pub allowed: f64,
}

impl Trend {
    /// `values` after the warm-up, judged flat when the fitted line moves
    /// less than `share` of the mean (or `floor`, whichever is larger)
    /// over the window.
    pub fn judge(
        name: &'static str,
        unit: &'static str,
        values: &[(f64, f64)],
        share: f64,
        floor: f64,
    ) -> Option<Trend> {
        let (slope, _) = fit(values)?;
        let ys = values.iter().map(|p| p.1);
        let mean = ys.clone().sum::<f64>() / values.len() as f64;
        let span = values.last()?.0 - values.first()?.0;
        Some(Trend {
            name,
            unit,
            first: values.first()?.1,
            last: values.last()?.1,
            min: ys.clone().fold(f64::INFINITY, f64::min),
            max: ys.fold(f64::NEG_INFINITY, f64::max),
            slope_per_hour: slope * 3600.0,
            drift: slope * span,
            allowed: (share * mean).max(floor),
        })
    }

    pub fn flat(&self) -> bool {
        self.drift.abs() <= self.allowed
    }

    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {} – {} | {:+.2} {}/h | {:+.2} (allowed ±{:.2}) | {} |",
            self.name,
            num(self.first),
            num(self.last),
            num(self.min),
            num(self.max),
            self.slope_per_hour,
            self.unit,
            self.drift,
            self.allowed,
            if self.flat() { "flat" } else { "**DRIFTS**" },
        )
    }
}

pub fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// A shaded span on the chart (an incident or an outage).
pub struct Span {
    pub from: f64,
    pub to: f64,
    pub color: &'static str,
}

/// A panel: title, value of a sample, colour.
type Panel = (&'static str, fn(&Sample) -> f64, &'static str);

/// Three stacked panels (RSS in MiB, open fds, /metrics series) against
/// minutes since the agent started; the warm-up end as a dashed line,
/// incidents and collector outages shaded.
pub fn svg(samples: &[Sample], warmup: f64, spans: &[Span]) -> String {
    const W: f64 = 900.0;
    const PANEL_H: f64 = 170.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 30.0;
    const GAP: f64 = 45.0;
    let panels: [Panel; 3] = [
        ("agent RSS (MiB)", |s| s.rss_kib / 1024.0, "#1f77b4"),
        ("open file descriptors", |s| s.fds, "#d62728"),
        ("/metrics series", |s| s.series, "#2ca02c"),
    ];
    let h = TOP + panels.len() as f64 * (PANEL_H + GAP) + 10.0;
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let x = |t: f64| LEFT + (t / t_max) * (W - LEFT - RIGHT);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="{W}" height="{h}" fill="white"/><text x="{LEFT}" y="18" font-size="14">Sonde soak: agent footprint over {:.0} min (shaded: incidents red, collector outages grey; dashed: end of warm-up)</text>"#,
        t_max / 60.0
    );
    for (i, (title, f, color)) in panels.iter().enumerate() {
        let top = TOP + i as f64 * (PANEL_H + GAP) + 15.0;
        let bottom = top + PANEL_H;
        let ys: Vec<f64> = samples.iter().map(f).collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        // A flat line sits mid-panel; the axis starts at zero when that
        // is near, so small wiggles do not look like growth.
        let (lo, hi) = if !lo.is_finite() {
            (0.0, 1.0)
        } else if lo > 0.0 && lo < 0.5 * hi {
            (0.0, hi * 1.1)
        } else {
            let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.05).max(1.0);
            (lo - pad, hi + pad)
        };
        let y = |v: f64| bottom - (v - lo) / (hi - lo) * PANEL_H;
        let _ = writeln!(
            out,
            r#"<text x="{LEFT}" y="{}" font-weight="bold">{title}</text>"#,
            top - 4.0
        );
        for s in spans {
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{top:.1}" width="{:.1}" height="{PANEL_H}" fill="{}" fill-opacity="0.18"/>"#,
                x(s.from),
                (x(s.to) - x(s.from)).max(1.0),
                s.color
            );
        }
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{top:.1}" width="{:.1}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
            W - LEFT - RIGHT
        );
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{top:.1}" x2="{0:.1}" y2="{bottom:.1}" stroke="#444" stroke-dasharray="4 3"/>"##,
            x(warmup)
        );
        for v in [lo, (lo + hi) / 2.0, hi] {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                LEFT - 5.0,
                y(v) + 4.0,
                num((v * 10.0).round() / 10.0)
            );
        }
        let points: Vec<String> = samples
            .iter()
            .zip(&ys)
            .map(|(s, v)| format!("{:.1},{:.1}", x(s.t), y(*v)))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#,
            points.join(" ")
        );
        for m in [0.0, t_max / 2.0, t_max] {
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{:.0} min</text>"#,
                x(m),
                bottom + 15.0,
                m / 60.0
            );
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_finds_the_slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 + 2.0 * i as f64)).collect();
        let (slope, intercept) = fit(&points).unwrap();
        assert!((slope - 2.0).abs() < 1e-9 && (intercept - 3.0).abs() < 1e-9);
        assert!(fit(&points[..1]).is_none());
        assert!(fit(&[(1.0, 1.0), (1.0, 2.0)]).is_none());
    }

    #[test]
    fn a_slow_leak_drifts_and_noise_does_not() {
        // 100 MiB growing 10 % over the hour: drifts.
        let leak: Vec<(f64, f64)> = (0..360)
            .map(|i| (i as f64 * 10.0, 100.0 + 10.0 * i as f64 / 360.0))
            .collect();
        let t = Trend::judge("rss", "MiB", &leak, 0.05, 0.0).unwrap();
        assert!(!t.flat(), "{t:?}");
        assert!((t.slope_per_hour - 10.0).abs() < 0.1, "{t:?}");
        // ±2 % noise around a flat line: flat.
        let noise: Vec<(f64, f64)> = (0..360)
            .map(|i| (i as f64 * 10.0, 100.0 + if i % 2 == 0 { 2.0 } else { -2.0 }))
            .collect();
        assert!(
            Trend::judge("rss", "MiB", &noise, 0.05, 0.0)
                .unwrap()
                .flat()
        );
        // Small counts get an absolute floor: 20 → 21 fds is not a leak.
        let fds: Vec<(f64, f64)> = (0..100)
            .map(|i| (i as f64, if i < 50 { 20.0 } else { 21.0 }))
            .collect();
        assert!(Trend::judge("fds", "", &fds, 0.05, 2.0).unwrap().flat());
    }

    #[test]
    fn the_chart_is_one_svg_with_a_line_per_panel() {
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                t: i as f64 * 10.0,
                rss_kib: 30_000.0 + i as f64,
                fds: 40.0,
                series: 900.0,
                ..Sample::default()
            })
            .collect();
        let spans = [Span {
            from: 50.0,
            to: 60.0,
            color: "red",
        }];
        let svg = svg(&samples, 30.0, &spans);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(
            Sample::CSV_HEADER.split(',').count(),
            samples[0].csv().split(',').count()
        );
    }
}

//! The PNG chart: every scenario's panels in a grid, drawn with plotters'
//! bitmap backend. Text uses DejaVu Sans (Debian's fonts-dejavu-core).

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use plotters::prelude::*;

use super::report::{Panel, num};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const PANEL_W: u32 = 760;
const PANEL_H: u32 = 480;
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

fn register_font() -> anyhow::Result<()> {
    let bytes = std::fs::read(FONT).with_context(|| {
        format!("reading {FONT} for the chart's text: install Debian's fonts-dejavu-core")
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a font plotters can read"))
}

/// Draws `panels` two per row into `path`.
pub fn draw(panels: &[&Panel], path: &Path) -> anyhow::Result<()> {
    if panels.is_empty() {
        bail!("nothing to chart");
    }
    register_font()?;
    let cols = panels.len().min(2);
    let rows = panels.len().div_ceil(cols);
    let size = (PANEL_W * cols as u32, PANEL_H * rows as u32);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    for (area, panel) in root.split_evenly((rows, cols)).iter().zip(panels) {
        draw_panel(area, panel).with_context(|| format!("drawing {:?}", panel.title))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

fn draw_panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
) -> anyhow::Result<()> {
    let points = panel.series.iter().flat_map(|s| &s.points);
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        bail!("no points");
    }
    if x0 == x1 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.15 } else { 1.0 };
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&panel.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(panel.x_label.as_str())
                .y_desc(panel.y_label.as_str())
                .x_labels(8)
                .y_labels(8)
                .x_label_formatter(&|x| num(*x))
                .y_label_formatter(&|y| num(*y))
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(e)?;
            for (i, s) in panel.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(
                        s.points.iter().copied(),
                        color.stroke_width(2),
                    ))
                    .map_err(e)?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(e)?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(e)?;
        }};
    }
    if panel.log_x {
        finish!(
            builder
                .build_cartesian_2d((x0.max(1e-9)..x1).log_scale(), 0.0..y1)
                .map_err(e)?
        );
    } else {
        finish!(builder.build_cartesian_2d(x0..x1, 0.0..y1).map_err(e)?);
    }
    Ok(())
}

//! PNG plots of the report (plotters, bitmap backend, text through ab_glyph with DejaVu Sans
//! from the system's fonts, so no fontconfig or freetype is needed).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use plotters::prelude::*;

use super::results::{Figure, Results};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(127, 127, 127),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// Draws every plot there are figures for; the files written.
pub fn draw(dir: &Path, results: &Results) -> Result<Vec<PathBuf>> {
    register_font()?;
    let mut written = Vec::new();
    for (metric, file, title) in [
        (
            "connect_latency",
            "connect_latency.png",
            "TCP connect latency (p50) vs services",
        ),
        (
            "conn_rate",
            "conn_rate.png",
            "New connections per second vs services",
        ),
        (
            "masq_conn_rate",
            "masq_conn_rate.png",
            "Connections per second from the host, masqueraded NodePort",
        ),
        (
            "program_full",
            "program_full.png",
            "Program N services from empty (p50)",
        ),
        (
            "endpoint_change",
            "endpoint_change.png",
            "Endpoint change until traffic follows (p50)",
        ),
    ] {
        let figs: Vec<&Figure> = results
            .figures
            .iter()
            .filter(|f| f.metric == metric)
            .collect();
        if figs.is_empty() {
            continue;
        }
        let path = dir.join(file);
        lines_vs_n(&path, title, &figs)?;
        written.push(path);
    }
    for (metric, file, title) in [
        (
            "ns_per_packet",
            "ns_per_packet.png",
            "Datapath cost per packet (BPF_PROG_TEST_RUN)",
        ),
        (
            "sustained_conn_rate",
            "sustained_conn_rate.png",
            "Sustained connections per second, masqueraded NodePort (median over rounds)",
        ),
        (
            "gc_pass",
            "gc_pass.png",
            "One conntrack GC pass: wall and CPU time (p50)",
        ),
    ] {
        let figs: Vec<&Figure> = results
            .figures
            .iter()
            .filter(|f| f.metric == metric)
            .collect();
        if figs.is_empty() {
            continue;
        }
        let path = dir.join(file);
        bars(&path, title, &figs)?;
        written.push(path);
    }
    Ok(written)
}

fn register_font() -> Result<()> {
    if !Path::new(FONT).exists() {
        crate::toolchain::apt_install(&["fonts-dejavu-core"], "the bench plots' text")?;
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("reading {FONT}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(bytes.into()))
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

/// p50 against N (log scale), one line per subject and endpoint count.
fn lines_vs_n(path: &Path, title: &str, figs: &[&Figure]) -> Result<()> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for f in figs {
        let name = format!("{} (E={})", f.subject, f.endpoints);
        let point = (f.services as f64, f.p50);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push(point),
            None => series.push((name, vec![point])),
        }
    }
    for (_, points) in &mut series {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let xmin = figs.iter().map(|f| f.services).min().unwrap_or(1) as f64;
    let xmax = figs.iter().map(|f| f.services).max().unwrap_or(1) as f64;
    let ymax = figs.iter().map(|f| f.p50).fold(0.0, f64::max) * 1.2 + f64::EPSILON;
    let root = BitMapBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin * 0.7..xmax * 1.4).log_scale(), 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc("services (N)")
        .x_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc(figs[0].unit.as_str())
        .draw()?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(move |p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One bar per subject (at the smallest size measured), the floor program among them.
fn bars(path: &Path, title: &str, figs: &[&Figure]) -> Result<()> {
    let size = figs
        .iter()
        .map(|f| (f.services, f.endpoints))
        .min()
        .unwrap_or_default();
    let figs: Vec<&&Figure> = figs
        .iter()
        .filter(|f| (f.services, f.endpoints) == size)
        .collect();
    let names: Vec<String> = figs.iter().map(|f| f.subject.clone()).collect();
    let ymax = figs.iter().map(|f| f.p50).fold(0.0, f64::max) * 1.2 + f64::EPSILON;
    let root = BitMapBackend::new(path, (1100, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..names.len() as f64, 0.0..ymax)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc(figs[0].unit.as_str())
        .draw()?;
    chart.draw_series(figs.iter().enumerate().map(|(i, f)| {
        let color = if f.subject == "floor" {
            COLORS[3]
        } else {
            COLORS[0]
        };
        Rectangle::new(
            [(i as f64 + 0.1, 0.0), (i as f64 + 0.9, f.p50)],
            color.filled(),
        )
    }))?;
    // Names on the bars: the subjects are long, an axis would overlap them.
    chart.draw_series(figs.iter().enumerate().map(|(i, f)| {
        Text::new(
            format!("{} {:.0}", f.subject, f.p50),
            (i as f64 + 0.15, f.p50 + ymax * 0.02),
            ("sans-serif", 13).into_font(),
        )
    }))?;
    root.present()?;
    Ok(())
}

//! SVG plots of a run (plotters, SVG backend): latency CDFs per system, throughput bars, RSS per
//! idle connection. A plot whose data is missing from the run is not drawn.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::peers::System;
use crate::report::Results;

const SIZE: (u32, u32) = (860, 520);

fn color(system: System) -> RGBColor {
    match system {
        System::Ferry => RGBColor(0xd6, 0x27, 0x28),
        System::FerryRedis => RGBColor(0xff, 0x7f, 0x0e),
        System::Mosquitto => RGBColor(0x1f, 0x77, 0xb4),
        System::Nats => RGBColor(0x2c, 0xa0, 0x2c),
        System::Redis => RGBColor(0x94, 0x67, 0xbd),
    }
}

/// plotters' errors borrow the backend; keep only their text.
fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// Draws every plot the results have data for into `dir`; returns the files written.
pub fn all(results: &Results, dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut written = Vec::new();
    if !results.latency.is_empty() {
        latency_cdf(results, &dir.join("latency_cdf.svg"))?;
        written.push("latency_cdf.svg".into());
    }
    if !results.throughput.is_empty() {
        throughput(results, &dir.join("throughput.svg"))?;
        written.push("throughput.svg".into());
    }
    if results
        .connections
        .as_ref()
        .is_some_and(|c| !c.samples.is_empty())
    {
        rss(results, &dir.join("rss_per_connection.svg"))?;
        written.push("rss_per_connection.svg".into());
    }
    Ok(written)
}

/// Send→deliver CDF at 50 % of each system's peak (log latency axis).
fn latency_cdf(results: &Results, path: &Path) -> anyhow::Result<()> {
    let rows: Vec<_> = results
        .latency
        .iter()
        .filter(|l| l.load_pct == 50)
        .collect();
    let rows = if rows.is_empty() {
        results.latency.iter().collect()
    } else {
        rows
    };
    let max_ms = rows
        .iter()
        .map(|r| r.max_us as f64 / 1e3)
        .fold(1.0f64, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "send→deliver latency CDF at 50 % of each system's peak",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0.01f64..max_ms * 1.2).log_scale(), 0f64..1f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("latency, ms (log)")
        .y_desc("fraction delivered within")
        .draw()
        .map_err(err)?;
    for r in rows {
        let c = color(r.system);
        let points: Vec<(f64, f64)> = r
            .cdf
            .iter()
            .map(|&(us, q)| ((us as f64 / 1e3).max(0.01), q))
            .collect();
        chart
            .draw_series(LineSeries::new(points, c.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} ({}%)", r.system.name(), r.load_pct))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Acked sends/s per system and body size.
fn throughput(results: &Results, path: &Path) -> anyhow::Result<()> {
    let rows = &results.throughput;
    let max = rows.iter().map(|r| r.per_sec).fold(1.0f64, f64::max);
    let labels: Vec<String> = rows
        .iter()
        .map(|r| format!("{} {} B", r.system.name(), r.body))
        .collect();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("closed-loop acked sends per second", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..rows.len() as f64, 0f64..max * 1.15)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - x.floor() - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("acked/s")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, r)| {
            Rectangle::new(
                [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, r.per_sec)],
                color(r.system).filled(),
            )
        }))
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Server RSS per idle connection as connections were opened, against the 16 KiB goal.
fn rss(results: &Results, path: &Path) -> anyhow::Result<()> {
    let Some(c) = &results.connections else {
        return Ok(());
    };
    let max_n = c.samples.iter().map(|s| s.0).max().unwrap_or(1) as f64;
    let max_kib = c.samples.iter().map(|s| s.1).fold(20.0f64, f64::max);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("ferry-server RSS per idle connection", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_n * 1.05, 0f64..max_kib * 1.2)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("idle authenticated connections")
        .y_desc("KiB per connection")
        .draw()
        .map_err(err)?;
    let ferry = color(System::Ferry);
    chart
        .draw_series(LineSeries::new(
            c.samples.iter().map(|&(n, k)| (n as f64, k)),
            ferry.stroke_width(2),
        ))
        .map_err(err)?
        .label("ferry-server")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], ferry.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            [(0.0, 16.0), (max_n * 1.05, 16.0)],
            BLACK.stroke_width(1),
        ))
        .map_err(err)?
        .label("goal: 16 KiB")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

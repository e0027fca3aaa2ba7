//! The output: the table, the JSON, the plot, and the generated part of BENCHMARKS.md (the
//! method and the findings there are written by hand and kept as they are).
use std::path::Path;

use serde::Serialize;

/// One measured figure: min/median/max over the repetitions, and its ratio to a baseline.
#[derive(Serialize, Clone)]
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub baseline: Option<String>,
    pub ratio: Option<f64>,
    /// The goal from the issue, if any, and whether this run met it.
    pub goal: Option<String>,
    pub met: Option<bool>,
    /// A sweep's point: its curve and its x (flows, listeners, targets).
    pub series: Option<String>,
    pub x: Option<f64>,
}

fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

pub fn figure(section: &'static str, name: &str, unit: &'static str, v: Vec<f64>) -> Figure {
    let (min, median, max) = spread(v);
    Figure {
        section,
        name: name.into(),
        unit,
        min,
        median,
        max,
        baseline: None,
        ratio: None,
        goal: None,
        met: None,
        series: None,
        x: None,
    }
}

impl Figure {
    pub fn vs(mut self, base: &Figure) -> Self {
        self.baseline = Some(base.name.clone());
        self.ratio = Some(self.median / base.median);
        self
    }
    pub fn at(mut self, series: &str, x: f64) -> Self {
        self.series = Some(series.into());
        self.x = Some(x);
        self
    }
    pub fn goal(mut self, text: &str, met: bool) -> Self {
        self.goal = Some(text.into());
        self.met = Some(met);
        self
    }
}

pub fn table(figs: &[Figure]) -> String {
    let mut o = format!(
        "| {:<62} | {:>10} | {:>10} | {:>10} | {:<9} | {:>24} | {:<28} |\n",
        "what", "min", "median", "max", "unit", "ratio (median)", "goal (this run)"
    );
    o += &format!(
        "|{:-<64}|{:->12}|{:->12}|{:->12}|{:-<11}|{:->26}|{:-<30}|\n",
        "", "", "", "", "", "", ""
    );
    for f in figs {
        let ratio = match (&f.ratio, &f.baseline) {
            (Some(r), Some(b)) => format!("{r:.2}x {}", short(b)),
            _ => String::new(),
        };
        let goal = match (&f.goal, f.met) {
            (Some(g), Some(true)) => format!("{g}: met"),
            (Some(g), Some(false)) => format!("{g}: NOT met"),
            _ => String::new(),
        };
        o += &format!(
            "| {:<62} | {:>10.1} | {:>10.1} | {:>10.1} | {:<9} | {:>24} | {:<28} |\n",
            f.name, f.min, f.median, f.max, f.unit, ratio, goal
        );
    }
    o
}

fn short(baseline: &str) -> &str {
    if baseline.starts_with("floor") {
        "floor"
    } else if baseline.starts_with("bare") {
        "XDP_PASS"
    } else if baseline.contains("routed") {
        "routed"
    } else if baseline.starts_with("XDP forwarding floor") {
        "XDP floor"
    } else if baseline.starts_with("XDP_DROP") {
        "XDP_DROP baseline"
    } else if baseline.starts_with("nftables") {
        "nftables"
    } else {
        baseline
    }
}

/// A bar's label: the figure's name without its parenthesised details (the table has them).
fn short_label(name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0;
    for ch in name.replace("xlb: ", "xlb ").chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if depth == 0 => out.push(ch),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub fn plot(path: &Path, figs: &[Figure]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let bars: Vec<&Figure> = figs
        .iter()
        .filter(|f| f.section == "program" && !f.name.starts_with("measuring"))
        .collect();
    let max = bars.iter().map(|f| f.max).fold(0.0, f64::max) * 1.15;
    let height = 80 + 24 * u32::try_from(bars.len()).unwrap_or(40);
    let root = BitMapBackend::new(path, (1100, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "xlb: cost per packet (BPF_PROG_TEST_RUN, median; whiskers min-max)",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(500)
        .build_cartesian_2d(0f64..max, (0..bars.len()).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .x_desc("ns per packet")
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => bars
                .get(*i)
                .map(|f| short_label(&f.name))
                .unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    for (i, f) in bars.iter().enumerate() {
        let color = if f.name.starts_with("xlb") {
            RGBColor(31, 119, 180)
        } else {
            RGBColor(150, 150, 150)
        };
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (0.0, SegmentValue::Exact(i)),
                (f.median, SegmentValue::Exact(i + 1)),
            ],
            color.filled(),
        )))?;
        chart.draw_series(std::iter::once(PathElement::new(
            vec![
                (f.min, SegmentValue::CenterOf(i)),
                (f.max, SegmentValue::CenterOf(i)),
            ],
            BLACK.stroke_width(2),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// The sweeps: one panel per swept quantity (live flows, listeners, targets; log x axis), a
/// curve per case, and Maglev build time against targets.
pub fn plot_sweeps(path: &Path, figs: &[Figure]) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (1000, 1080)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((3, 2));
    let groups: [(&str, &str, &str); 6] = [
        ("live flows", "live flows in the table", "ns per packet"),
        ("replies", "clients replied to", "ns per packet"),
        ("table size", "max_connections", "ns per packet"),
        ("listeners", "listeners", "ns per packet"),
        (
            "targets per listener",
            "targets per listener",
            "ns per packet",
        ),
        ("Maglev", "targets", "ms per table (M = 65,537)"),
    ];
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
    for (panel, (prefix, xdesc, ydesc)) in panels.iter().zip(groups) {
        let mut series: Vec<(String, Vec<&Figure>)> = Vec::new();
        for f in figs {
            let s = match (&f.series, f.x) {
                (Some(s), Some(_)) if s.starts_with(prefix) => s.clone(),
                _ => continue,
            };
            match series.iter_mut().find(|(n, _)| *n == s) {
                Some((_, v)) => v.push(f),
                None => series.push((s, vec![f])),
            }
        }
        if series.is_empty() {
            continue;
        }
        let all = series.iter().flat_map(|(_, v)| v.iter());
        let (x0, x1) = all.clone().fold((f64::MAX, 0f64), |(a, b), f| {
            let x = f.x.unwrap_or(1.0);
            (a.min(x), b.max(x))
        });
        let ymax = all.map(|f| f.max).fold(0.0, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("cost against {xdesc}"), ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((x0 * 0.8..x1 * 1.25).log_scale(), 0f64..ymax)?;
        chart.configure_mesh().x_desc(xdesc).y_desc(ydesc).draw()?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            let line: Vec<(f64, f64)> =
                pts.iter().map(|f| (f.x.unwrap_or(1.0), f.median)).collect();
            chart
                .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            chart.draw_series(line.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
            for f in pts {
                let x = f.x.unwrap_or(1.0);
                chart.draw_series(std::iter::once(PathElement::new(
                    vec![(x, f.min), (x, f.max)],
                    BLACK.stroke_width(1),
                )))?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

/// Where the generated part of the report starts and ends; the rest is prose kept by hand.
const BEGIN: &str = "<!-- generated by `cargo xtask bench`: begin -->";
const END: &str = "<!-- generated by `cargo xtask bench`: end -->";

/// Replace the generated part of `path` (between the markers) with `generated`, keeping the
/// hand-written rest; a report without the markers gets them, with the old text after.
pub fn write_report(path: &Path, generated: &str) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{generated}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{block}\n\n{old}"),
    };
    std::fs::write(path, new)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_keeps_its_hand_written_prose_and_replaces_the_generated_part() {
        let dir = std::env::temp_dir().join(format!("xlb-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("BENCHMARKS.md");
        std::fs::write(
            &path,
            format!("# B\n\nintro\n\n{BEGIN}\nold table\n{END}\n\n## Findings\n\nkept\n"),
        )
        .unwrap();
        write_report(&path, "new table").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# B\n\nintro\n\n{BEGIN}\nnew table\n{END}\n\n## Findings\n\nkept\n")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

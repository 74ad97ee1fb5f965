//! Line plots and histograms written as PNG and SVG with plotters and a bundled font (DejaVu Sans,
//! embedded in the binary), so no system font library is needed.

use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Once;
use thiserror::Error;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        for style in [
            FontStyle::Normal,
            FontStyle::Bold,
            FontStyle::Italic,
            FontStyle::Oblique,
        ] {
            plotters::style::register_font("sans-serif", style, FONT)
                .unwrap_or_else(|_| panic!("the bundled DejaVu font is a valid TrueType file"));
        }
    });
}

/// A figure that can draw itself on any plotters backend.
trait Figure {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
        path: &Path,
    ) -> Result<(), PlotError>
    where
        DB::ErrorType: 'static;
}

/// Draws `figure` to `<stem>.png` (1000×650) and `<stem>.svg`. Each file is drawn under a
/// temporary name in the same directory and renamed into place, so an existing plot is never
/// left half written.
fn write_png_and_svg<F: Figure>(figure: &F, stem: &Path) -> Result<(PathBuf, PathBuf), PlotError> {
    register_font();
    // appended, not `with_extension`: a stem such as `e4-lr_6000_lr0.02_784-256-10` has a dot
    // that is not an extension
    let with_ext = |ext: &str| {
        let mut name = stem.as_os_str().to_owned();
        name.push(".");
        name.push(ext);
        PathBuf::from(name)
    };
    let (png, svg) = (with_ext("png"), with_ext("svg"));
    let temp = |ext: &str| {
        let name = stem
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        stem.with_file_name(format!(".{name}.tmp-{}.{ext}", std::process::id()))
    };
    let finish = |tmp: &Path, target: &Path, drawn: Result<(), PlotError>| {
        let renamed =
            drawn.and_then(|()| std::fs::rename(tmp, target).map_err(|e| draw_err(target, e)));
        if renamed.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        renamed
    };
    let tmp = temp("png");
    let drawn = figure.draw(
        BitMapBackend::new(&tmp, (1000, 650)).into_drawing_area(),
        &png,
    );
    finish(&tmp, &png, drawn)?;
    let tmp = temp("svg");
    let drawn = figure.draw(SVGBackend::new(&tmp, (1000, 650)).into_drawing_area(), &svg);
    finish(&tmp, &svg, drawn)?;
    Ok((png, svg))
}

/// Why a plot could not be written.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PlotError {
    /// Drawing or writing failed.
    #[error("cannot draw plot {path}: {message}")]
    Draw {
        /// The file being written.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Nothing to plot.
    #[error("plot {0}: no finite data points")]
    Empty(String),
}

/// One named line of a [`LinePlot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// `(x, y)` points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A line plot with optional logarithmic axes.
///
/// ```
/// use synbal::plot::{LinePlot, Series};
/// let dir = std::env::temp_dir().join("synbal-doc-plot");
/// std::fs::create_dir_all(&dir).unwrap();
/// let plot = LinePlot {
///     title: "decay".into(), x_label: "sweep".into(), y_label: "imbalance".into(),
///     log_x: false, log_y: true,
///     series: vec![Series { label: "a".into(), points: (0..10).map(|i| (i as f64, 0.5f64.powi(i))).collect() }],
/// };
/// let (png, svg) = plot.write(&dir.join("decay")).unwrap();
/// assert!(png.exists() && svg.exists());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LinePlot {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Logarithmic x axis (points with `x ≤ 0` are dropped).
    pub log_x: bool,
    /// Logarithmic y axis (points with `y ≤ 0` are dropped).
    pub log_y: bool,
    /// The lines.
    pub series: Vec<Series>,
}

const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Tick label: `1e-6` style on log axes (plotters' default prints `0.9999999` for 1), at most 4
/// decimals without trailing zeros otherwise.
fn tick(v: f64, log: bool) -> String {
    if log {
        format!("{v:.0e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".into()
        } else {
            s.into()
        }
    }
}

fn draw_err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError::Draw {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl LinePlot {
    /// The points that can be drawn on the chosen axes (finite, positive on log axes).
    fn kept(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.series
            .iter()
            .map(|s| {
                let pts = s
                    .points
                    .iter()
                    .copied()
                    .filter(|&(x, y)| {
                        x.is_finite()
                            && y.is_finite()
                            && (!self.log_x || x > 0.0)
                            && (!self.log_y || y > 0.0)
                    })
                    .collect();
                (s.label.clone(), pts)
            })
            .collect()
    }
}

impl Figure for LinePlot {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
        path: &Path,
    ) -> Result<(), PlotError>
    where
        DB::ErrorType: 'static,
    {
        let series = self.kept();
        let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
        if all.is_empty() {
            return Err(PlotError::Empty(self.title.clone()));
        }
        let (mut x0, mut x1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (mut y0, mut y1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let widen = |lo: &mut f64, hi: &mut f64, log: bool| {
            if log {
                *lo /= 1.5;
                *hi *= 1.5;
            } else {
                let pad = if *hi > *lo {
                    0.03 * (*hi - *lo)
                } else {
                    lo.abs().max(1.0) * 0.1
                };
                *lo -= pad;
                *hi += pad;
            }
        };
        widen(&mut x0, &mut x1, self.log_x);
        widen(&mut y0, &mut y1, self.log_y);
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        macro_rules! body {
            ($chart:expr) => {{
                let mut chart = $chart;
                chart
                    .configure_mesh()
                    .x_desc(self.x_label.as_str())
                    .y_desc(self.y_label.as_str())
                    .x_label_formatter(&|v| tick(*v, self.log_x))
                    .y_label_formatter(&|v| tick(*v, self.log_y))
                    .label_style(("sans-serif", 14))
                    .draw()
                    .map_err(|e| draw_err(path, e))?;
                for (k, (label, pts)) in series.iter().enumerate() {
                    let color = COLORS[k % COLORS.len()];
                    chart
                        .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                        .map_err(|e| draw_err(path, e))?
                        .label(label.as_str())
                        .legend(move |(x, y)| {
                            PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
                        });
                }
                chart
                    .configure_series_labels()
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 13))
                    .position(SeriesLabelPosition::UpperRight)
                    .draw()
                    .map_err(|e| draw_err(path, e))?;
            }};
        }
        let mut builder = ChartBuilder::on(&root);
        builder
            .caption(self.title.as_str(), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(70);
        match (self.log_x, self.log_y) {
            (false, false) => body!(builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(|e| draw_err(path, e))?),
            (false, true) => body!(builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(|e| draw_err(path, e))?),
            (true, false) => body!(builder
                .build_cartesian_2d((x0..x1).log_scale(), y0..y1)
                .map_err(|e| draw_err(path, e))?),
            (true, true) => body!(builder
                .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
                .map_err(|e| draw_err(path, e))?),
        }
        root.present().map_err(|e| draw_err(path, e))?;
        Ok(())
    }
}

impl LinePlot {
    /// Writes `<stem>.png` (1000×650) and `<stem>.svg`; returns both paths.
    pub fn write(&self, stem: &Path) -> Result<(PathBuf, PathBuf), PlotError> {
        write_png_and_svg(self, stem)
    }
}

/// A histogram of values in equal-width bins (on `log10` of the values when `log_x`).
///
/// ```
/// use synbal::plot::Histogram;
/// let dir = std::env::temp_dir().join("synbal-doc-hist");
/// std::fs::create_dir_all(&dir).unwrap();
/// let h = Histogram { title: "t".into(), x_label: "x".into(), values: vec![1e-12, 2e-12, 5e-13],
///                     bins: 10, log_x: true };
/// assert!(h.write(&dir.join("h")).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Title.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// The values.
    pub values: Vec<f64>,
    /// Number of bins.
    pub bins: usize,
    /// Bin `log10(value)` (values ≤ 0 dropped).
    pub log_x: bool,
}

impl Histogram {
    /// `(bin lower edge, bin upper edge, count)` for every bin.
    pub fn counts(&self) -> Vec<(f64, f64, usize)> {
        let v: Vec<f64> = self
            .values
            .iter()
            .copied()
            .filter(|x| x.is_finite() && (!self.log_x || *x > 0.0))
            .map(|x| if self.log_x { x.log10() } else { x })
            .collect();
        if v.is_empty() {
            return Vec::new();
        }
        let bins = self.bins.max(1);
        let lo = v.iter().copied().fold(f64::MAX, f64::min);
        let mut hi = v.iter().copied().fold(f64::MIN, f64::max);
        if hi <= lo {
            hi = lo + 1.0;
        }
        let w = (hi - lo) / bins as f64;
        let mut c = vec![0usize; bins];
        for x in v {
            let k = (((x - lo) / w) as usize).min(bins - 1);
            c[k] += 1;
        }
        c.into_iter()
            .enumerate()
            .map(|(k, n)| (lo + k as f64 * w, lo + (k + 1) as f64 * w, n))
            .collect()
    }
}

impl Figure for Histogram {
    fn draw<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, Shift>,
        path: &Path,
    ) -> Result<(), PlotError>
    where
        DB::ErrorType: 'static,
    {
        let counts = self.counts();
        if counts.is_empty() {
            return Err(PlotError::Empty(self.title.clone()));
        }
        let x0 = counts[0].0;
        let x1 = counts[counts.len() - 1].1;
        let ymax = counts.iter().map(|c| c.2).max().unwrap_or(1) as f64 * 1.1;
        root.fill(&WHITE).map_err(|e| draw_err(path, e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.title.as_str(), ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, 0.0..ymax)
            .map_err(|e| draw_err(path, e))?;
        let xdesc = if self.log_x {
            format!("log10 {}", self.x_label)
        } else {
            self.x_label.clone()
        };
        chart
            .configure_mesh()
            .x_desc(xdesc)
            .y_desc("count")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| draw_err(path, e))?;
        chart
            .draw_series(counts.iter().map(|&(a, b, n)| {
                Rectangle::new([(a, 0.0), (b, n as f64)], COLORS[0].mix(0.8).filled())
            }))
            .map_err(|e| draw_err(path, e))?;
        root.present().map_err(|e| draw_err(path, e))?;
        Ok(())
    }
}

impl Histogram {
    /// Writes `<stem>.png` and `<stem>.svg`; returns both paths.
    pub fn write(&self, stem: &Path) -> Result<(PathBuf, PathBuf), PlotError> {
        write_png_and_svg(self, stem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stem with a dot in its name (a learning rate) keeps it: `<stem>.png`, not a replaced
    /// "extension", so the plots of two rates do not overwrite each other.
    #[test]
    fn stems_with_dots_keep_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let plot = |lr: f64| LinePlot {
            title: format!("lr {lr}"),
            x_label: "epoch".into(),
            y_label: "accuracy".into(),
            log_x: false,
            log_y: false,
            series: vec![Series {
                label: "plain".into(),
                points: vec![(0.0, 0.1), (1.0, lr)],
            }],
        };
        let mut written = Vec::new();
        for lr in [0.02, 0.05] {
            let (png, svg) = plot(lr)
                .write(&dir.path().join(format!("e4-lr_6000_lr{lr}_784-256-10")))
                .unwrap();
            written.push((png, svg));
        }
        for ((png, svg), lr) in written.iter().zip(["0.02", "0.05"]) {
            let stem = format!("e4-lr_6000_lr{lr}_784-256-10");
            assert_eq!(
                png.file_name().unwrap().to_str(),
                Some(&*format!("{stem}.png"))
            );
            assert_eq!(
                svg.file_name().unwrap().to_str(),
                Some(&*format!("{stem}.svg"))
            );
            assert!(png.exists() && svg.exists());
            assert!(std::fs::read_to_string(svg)
                .unwrap()
                .contains(&format!("lr {lr}")));
        }
    }
}

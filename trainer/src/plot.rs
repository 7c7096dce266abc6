//! `signrt-train plot RUN_DIR [RUN_DIR...]`: training curves from each run's
//! `metrics.jsonl` (and its `config.toml` for the learning rates and the
//! clipping threshold), drawn with the runtime's raster charts
//! ([`signrt_runtime::report::chart`]). Several runs share each panel, one
//! line per run, to compare seeds or ablations.

use signrt_runtime::report::chart::{self, Panel, Scale, Series, Style};
use signrt_runtime::report::{write_png, ReportError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: no step lines: nothing to plot")]
    Empty { path: PathBuf },
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// The loss components of a step line, in the order of its `weights`.
pub const LOSSES: [&str; 4] = ["l_align", "l_gru", "l_cls", "l_ctc"];

/// One `kind = "step"` line.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepLine {
    pub step: u64,
    pub loss: f64,
    pub losses: [f64; 4],
    pub weights: [f64; 4],
    pub grad_norm: f64,
    pub lr_scale: f64,
    pub frames_per_s: f64,
    /// Per learning-rate group gradient norms, when the run logged them.
    pub group_norms: BTreeMap<String, f64>,
}

/// (step, WER, the evaluated model's name) of one `kind = "eval"` line.
pub type EvalPoint = (u64, f64, String);

/// A run's metrics, as read from its directory.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunMetrics {
    /// The directory's name: the run's label in the legends.
    pub name: String,
    /// The step lines by step (a resumed run's later line for a step wins).
    pub steps: Vec<StepLine>,
    /// (step, WER) of each evaluation, with the evaluated model's name.
    pub evals: Vec<EvalPoint>,
    /// Each group's base learning rate (`training.learning_rates`).
    pub learning_rates: BTreeMap<String, f64>,
    /// `training.grad_clip`, and whether it applies per module.
    pub grad_clip: Option<f64>,
    pub clip_per_module: bool,
    /// `training.weighting` (fixed or gradnorm), as the config says it.
    pub weighting: Option<String>,
}

fn field(v: &serde_json::Value, key: &str) -> Result<f64, String> {
    v.get(key)
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| format!("step line without a number `{key}`"))
}

/// A norm or a loss that may be `null`: the trainer writes a non-finite
/// value so (an f16 step whose gradients overflowed and was skipped); it
/// reads as NaN, and the charts leave it out.
fn finite_or_null(v: &serde_json::Value, key: &str) -> Result<f64, String> {
    match v.get(key) {
        Some(serde_json::Value::Null) => Ok(f64::NAN),
        _ => field(v, key),
    }
}

fn parse_step(v: &serde_json::Value) -> Result<StepLine, String> {
    let mut s = StepLine {
        step: field(v, "step")? as u64,
        loss: finite_or_null(v, "loss")?,
        grad_norm: finite_or_null(v, "grad_norm")?,
        lr_scale: field(v, "lr_scale")?,
        frames_per_s: field(v, "frames_per_s")?,
        ..StepLine::default()
    };
    for (i, k) in LOSSES.iter().enumerate() {
        s.losses[i] = finite_or_null(v, k)?;
    }
    let w = v
        .get("weights")
        .and_then(|w| w.as_array())
        .filter(|w| w.len() == 4)
        .ok_or("step line without `weights` (4 numbers)")?;
    for (i, x) in w.iter().enumerate() {
        s.weights[i] = x.as_f64().ok_or("`weights` holds a non-number")?;
    }
    if let Some(g) = v.get("group_norms").and_then(|g| g.as_object()) {
        for (k, x) in g {
            let x = match x {
                serde_json::Value::Null => f64::NAN,
                x => x
                    .as_f64()
                    .ok_or(format!("group_norms.{k} is not a number"))?,
            };
            s.group_norms.insert(k.clone(), x);
        }
    }
    Ok(s)
}

/// Reads `metrics.jsonl`'s step and eval lines; other kinds and blank lines
/// are skipped. A malformed line is an error naming the file and line.
pub fn read_metrics(path: &Path) -> Result<(Vec<StepLine>, Vec<EvalPoint>), PlotError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Io {
        path: path.into(),
        source,
    })?;
    let mut steps = BTreeMap::new();
    let mut evals = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad = |message: String| PlotError::Line {
            path: path.into(),
            line: i + 1,
            message,
        };
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("step") => {
                let s = parse_step(&v).map_err(bad)?;
                steps.insert(s.step, s);
            }
            Some("eval") => {
                let step = v.get("step").and_then(|s| s.as_u64());
                let wer = v.pointer("/report/wer").and_then(|w| w.as_f64());
                let (Some(step), Some(wer)) = (step, wer) else {
                    return Err(bad("eval line without `step` and `report.wer`".into()));
                };
                let model = v.get("model").and_then(|m| m.as_str()).unwrap_or("");
                evals.push((step, wer, model.to_string()));
            }
            Some(_) => {}
            None => return Err(bad("a line without `kind`".into())),
        }
    }
    Ok((steps.into_values().collect(), evals))
}

/// The learning rates, clipping and weighting from a run's `config.toml`
/// (missing: no learning-rate panel lines and no clipping marks).
fn read_config(path: &Path, run: &mut RunMetrics) -> Result<(), PlotError> {
    if !path.is_file() {
        log::warn!(
            "{}: not found: no learning rates or clipping threshold",
            path.display()
        );
        return Ok(());
    }
    let bad = |message: String| PlotError::Config {
        path: path.into(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|source| PlotError::Io {
        path: path.into(),
        source,
    })?;
    let v: toml::Value = toml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let t = v.get("training");
    if let Some(lr) = t
        .and_then(|t| t.get("learning_rates"))
        .and_then(|l| l.as_table())
    {
        for (k, x) in lr {
            let x = x
                .as_float()
                .or_else(|| x.as_integer().map(|i| i as f64))
                .ok_or_else(|| bad(format!("training.learning_rates.{k} is not a number")))?;
            run.learning_rates.insert(k.clone(), x);
        }
    }
    let num = |k: &str| {
        t.and_then(|t| t.get(k))
            .and_then(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
    };
    run.grad_clip = num("grad_clip").filter(|c| *c > 0.0);
    run.clip_per_module = t
        .and_then(|t| t.get("grad_clip_per_module"))
        .and_then(|x| x.as_bool())
        .unwrap_or(false);
    run.weighting = t
        .and_then(|t| t.get("weighting"))
        .and_then(|x| x.as_str())
        .map(String::from);
    Ok(())
}

/// Reads a run directory: `metrics.jsonl` (required) and `config.toml`.
pub fn read_run(dir: &Path) -> Result<RunMetrics, PlotError> {
    let metrics = dir.join("metrics.jsonl");
    let (steps, evals) = read_metrics(&metrics)?;
    if steps.is_empty() {
        return Err(PlotError::Empty { path: metrics });
    }
    let name = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| dir.display().to_string());
    let mut run = RunMetrics {
        name,
        steps,
        evals,
        ..RunMetrics::default()
    };
    read_config(&dir.join("config.toml"), &mut run)?;
    Ok(run)
}

/// A series' name: the metric's, prefixed by the run's when several runs share the panel.
fn label(runs: &[RunMetrics], run: &RunMetrics, what: &str) -> String {
    match (runs.len() > 1, what.is_empty()) {
        (false, _) => what.to_string(),
        (true, true) => run.name.clone(),
        (true, false) => format!("{}: {what}", run.name),
    }
}

fn line(name: String, mut points: Vec<(f64, f64)>) -> Series {
    // skipped steps' norms and losses (NaN) are gaps, not points
    points.retain(|p| p.1.is_finite());
    Series {
        name,
        points,
        ..Series::default()
    }
}

/// A log scale when every value is positive, else linear.
fn scale_for(series: &[Series]) -> Scale {
    let all_positive = series
        .iter()
        .flat_map(|s| s.points.iter())
        .all(|p| p.1 > 0.0 || !p.1.is_finite());
    if all_positive {
        Scale::Log10
    } else {
        Scale::Linear
    }
}

fn per_step(runs: &[RunMetrics], what: &str, f: impl Fn(&StepLine) -> f64) -> Vec<Series> {
    runs.iter()
        .map(|r| {
            let pts = r.steps.iter().map(|s| (s.step as f64, f(s))).collect();
            line(label(runs, r, what), pts)
        })
        .collect()
}

fn panel(title: &str, scale: Scale, series: Vec<Series>) -> Panel {
    Panel {
        title: title.into(),
        x_label: "step".into(),
        scale,
        series,
        y_range: None,
    }
}

/// Each loss component, then the weighted total.
pub fn loss_panels(runs: &[RunMetrics]) -> Vec<Panel> {
    let names = ["L_align", "L_gru", "L_cls", "L_ctc"];
    let mut out: Vec<Panel> = (0..4)
        .map(|i| {
            let s = per_step(runs, "", |st| st.losses[i]);
            panel(
                &format!("{} (before its weight)", names[i]),
                scale_for(&s),
                s,
            )
        })
        .collect();
    let s = per_step(runs, "", |st| st.loss);
    out.push(panel("L_total (weighted sum)", scale_for(&s), s));
    out
}

/// The four loss weights.
pub fn weights_panel(runs: &[RunMetrics]) -> Panel {
    let kinds: Vec<String> = runs.iter().filter_map(|r| r.weighting.clone()).collect();
    let kind = if kinds.is_empty() {
        String::new()
    } else {
        format!(" ({})", kinds.join(", "))
    };
    let series = runs
        .iter()
        .flat_map(|r| {
            (0..4).map(move |i| {
                let pts = r
                    .steps
                    .iter()
                    .map(|s| (s.step as f64, s.weights[i]))
                    .collect();
                line(label(runs, r, &format!("w_{}", &LOSSES[i][2..])), pts)
            })
        })
        .collect();
    panel(&format!("loss weights{kind}"), Scale::Linear, series)
}

/// Each group's learning rate: its base rate times the schedule's scale.
pub fn lr_panel(runs: &[RunMetrics]) -> Panel {
    let mut series = Vec::new();
    for r in runs {
        for (g, base) in &r.learning_rates {
            let pts = r
                .steps
                .iter()
                .map(|s| (s.step as f64, base * s.lr_scale))
                .collect();
            series.push(line(label(runs, r, g), pts));
        }
        if r.learning_rates.is_empty() {
            let pts = r
                .steps
                .iter()
                .map(|s| (s.step as f64, s.lr_scale))
                .collect();
            series.push(line(label(runs, r, "scale (no config.toml)"), pts));
        }
    }
    let scale = scale_for(&series);
    panel("learning rate per group", scale, series)
}

/// Steps whose gradient was clipped: the global norm over the threshold, or
/// with per-module clipping any module's.
pub fn clipped_steps(run: &RunMetrics) -> Vec<u64> {
    let Some(c) = run.grad_clip else {
        return vec![];
    };
    run.steps
        .iter()
        .filter(|s| {
            if s.grad_norm.is_nan() {
                false // skipped (f16 overflow), not clipped
            } else if run.clip_per_module && !s.group_norms.is_empty() {
                s.group_norms.values().any(|&n| n > c)
            } else {
                s.grad_norm > c
            }
        })
        .map(|s| s.step)
        .collect()
}

/// The global gradient norm and each module's, the threshold, and ticks
/// along the top at the steps that were clipped.
pub fn grad_panel(runs: &[RunMetrics]) -> Panel {
    let mut series = Vec::new();
    for r in runs {
        let pts = r
            .steps
            .iter()
            .map(|s| (s.step as f64, s.grad_norm))
            .collect();
        series.push(line(label(runs, r, "global"), pts));
        if runs.len() > 1 {
            // one run's modules already fill the palette: compare the global norms
            continue;
        }
        let groups: Vec<&String> = r.steps.iter().flat_map(|s| s.group_norms.keys()).collect();
        let mut groups: Vec<&String> = groups.into_iter().collect();
        groups.sort();
        groups.dedup();
        for g in groups {
            let pts = r
                .steps
                .iter()
                .filter_map(|s| s.group_norms.get(g).map(|&n| (s.step as f64, n)))
                .collect();
            series.push(line(label(runs, r, g), pts));
        }
    }
    for r in runs {
        if let Some(c) = r.grad_clip {
            let (a, b) = (
                r.steps[0].step as f64,
                r.steps[r.steps.len() - 1].step as f64,
            );
            series.push(Series {
                name: label(runs, r, &format!("clip at {c}")),
                points: vec![(a, c), (b, c)],
                color: Some(image::Rgb([160, 160, 160])),
                style: Style::Line,
            });
            let events = clipped_steps(r);
            series.push(Series {
                name: label(runs, r, &format!("clipped ({})", steps(events.len()))),
                points: events.into_iter().map(|s| (s as f64, 0.0)).collect(),
                color: Some(image::Rgb([200, 0, 0])),
                style: Style::TopTicks,
            });
        }
    }
    // norms span decades (a ConvGRU spike); a zero norm (a group not
    // training yet) is left out of the log scale
    let title = if runs.len() > 1 {
        "global gradient norm (log scale); clipping events along the top"
    } else {
        "gradient norm per module (log scale); clipping events along the top"
    };
    panel(title, Scale::Log10, series)
}

fn steps(n: usize) -> String {
    format!("{n} step{}", if n == 1 { "" } else { "s" })
}

/// The evaluations' WER, in per cent.
pub fn wer_panel(runs: &[RunMetrics]) -> Panel {
    let mut series = Vec::new();
    for r in runs {
        let mut models: Vec<&str> = r.evals.iter().map(|e| e.2.as_str()).collect();
        models.sort();
        models.dedup();
        for m in &models {
            let pts = r
                .evals
                .iter()
                .filter(|e| e.2 == *m)
                .map(|e| (e.0 as f64, 100.0 * e.1))
                .collect();
            let what = if models.len() > 1 {
                format!("dev WER ({m})")
            } else {
                "dev WER".into()
            };
            series.push(Series {
                style: Style::Points,
                ..line(label(runs, r, &what), pts)
            });
        }
    }
    let mut p = panel("dev WER (%)", Scale::Linear, series);
    // from 0, so that a change of a few points is not read as a collapse
    let wers = p.series.iter().flat_map(|s| s.points.iter().map(|q| q.1));
    p.y_range = chart::axis_range(wers.chain([0.0]).map(|w| w * 1.04), 5);
    if p.series.iter().all(|s| s.points.is_empty()) {
        p.title.push_str(": no evaluations in metrics.jsonl");
    }
    p
}

/// Training speed.
pub fn fps_panel(runs: &[RunMetrics]) -> Panel {
    panel(
        "frames/s",
        Scale::Linear,
        per_step(runs, "", |s| s.frames_per_s),
    )
}

/// The figures `plot` writes: file name, title and panels.
pub fn figures(runs: &[RunMetrics]) -> Vec<(&'static str, String, Vec<Panel>)> {
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let who = names.join(", ");
    // each panel is built once: its own figure, and again in the overview
    let losses = loss_panels(runs);
    let singles = [
        ("weights.png", "loss weights", weights_panel(runs)),
        ("lr.png", "learning rate", lr_panel(runs)),
        ("grad_norms.png", "gradient norms", grad_panel(runs)),
        ("dev_wer.png", "dev WER", wer_panel(runs)),
        ("fps.png", "frames/s", fps_panel(runs)),
    ];
    let mut overview = vec![losses.last().cloned().unwrap_or_default()];
    overview.extend(singles.iter().map(|(_, _, p)| p.clone()));
    let mut out = vec![("losses.png", format!("losses: {who}"), losses)];
    for (file, title, p) in singles {
        out.push((file, format!("{title}: {who}"), vec![p]));
    }
    out.push(("curves.png", format!("training curves: {who}"), overview));
    out
}

/// Pixel width of the figures and height of one panel.
pub const FIGURE_WIDTH: u32 = 1000;
pub const PANEL_HEIGHT: u32 = 240;

/// Reads every run and writes the figures into `out` (made if missing);
/// returns the files written.
pub fn plot_runs(dirs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let runs = dirs
        .iter()
        .map(|d| read_run(d))
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(out).map_err(|source| PlotError::Io {
        path: out.into(),
        source,
    })?;
    let mut written = Vec::new();
    for (file, title, panels) in figures(&runs) {
        let img = chart::figure(&title, &panels, FIGURE_WIDTH, PANEL_HEIGHT);
        let path = out.join(file);
        write_png(&img, &path)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(norms: &[(f64, f64)], per_module: bool) -> RunMetrics {
        RunMetrics {
            steps: norms
                .iter()
                .enumerate()
                .map(|(i, &(g, m))| StepLine {
                    step: i as u64 + 1,
                    grad_norm: g,
                    group_norms: [("conv_gru".to_string(), m)].into(),
                    ..StepLine::default()
                })
                .collect(),
            grad_clip: Some(1.0),
            clip_per_module: per_module,
            ..RunMetrics::default()
        }
    }

    #[test]
    fn clipping_events_follow_the_threshold() {
        let norms = [(0.5, 0.2), (1.5, 0.9), (0.8, 1.2), (1.0, 1.0)];
        // global: only step 2 is over 1.0 (equal is not clipped)
        assert_eq!(clipped_steps(&run_with(&norms, false)), vec![2]);
        // per module: the module's own norm decides, step 3
        assert_eq!(clipped_steps(&run_with(&norms, true)), vec![3]);
        let none = RunMetrics {
            grad_clip: None,
            ..run_with(&norms, false)
        };
        assert!(clipped_steps(&none).is_empty());
    }

    /// An f16 step skipped for overflow logs `null` norms: it reads, and the
    /// gradient panel leaves it out; a missing field is still an error.
    #[test]
    fn a_skipped_step_is_a_gap() {
        let line = |g: &str| {
            serde_json::from_str::<serde_json::Value>(&format!(
                r#"{{"kind":"step","step":{g},"loss":2.0,"l_align":1,"l_gru":1,"l_cls":1,"l_ctc":1,
                "weights":[1,1,1,1],"grad_norm":{g2},"group_norms":{{"conv_gru":{g2}}},
                "lr_scale":1,"frames_per_s":5,"overflow":{o}}}"#,
                g2 = if g == "1" { "null" } else { "0.5" },
                o = g == "1"
            ))
            .unwrap()
        };
        let steps: Vec<StepLine> = ["1", "2"]
            .iter()
            .map(|g| parse_step(&line(g)).unwrap())
            .collect();
        assert!(steps[0].grad_norm.is_nan() && steps[0].group_norms["conv_gru"].is_nan());
        let run = RunMetrics {
            steps,
            ..RunMetrics::default()
        };
        let p = grad_panel(&[run]);
        assert!(
            p.series.iter().all(|s| s.points == vec![(2.0, 0.5)]),
            "{:?}",
            p.series
        );
        let mut bad = line("2");
        bad.as_object_mut().unwrap().remove("grad_norm");
        assert!(parse_step(&bad).unwrap_err().contains("grad_norm"));
    }

    #[test]
    fn the_learning_rate_is_the_base_rate_times_the_scale() {
        let mut r = run_with(&[(0.1, 0.1), (0.1, 0.1)], false);
        r.steps[1].lr_scale = 0.5;
        r.steps[0].lr_scale = 1.0;
        r.learning_rates.insert("conv_gru".into(), 2e-3);
        let p = lr_panel(&[r]);
        assert_eq!(p.series.len(), 1);
        assert_eq!(p.series[0].points, vec![(1.0, 2e-3), (2.0, 1e-3)]);
        assert_eq!(p.scale, Scale::Log10);
    }
}

//! `signrt doctor`: one command that says whether this machine, this bundle
//! and its cameras are ready, and what to do where they are not.

use crate::bundle::Bundle;
use crate::memory;
use crate::pipeline::{Pipeline, RunOptions, Settings};
use crate::source::{FrameSource, Y4mSource};
use std::path::{Path, PathBuf};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Check {
    pub what: &'static str,
    pub verdict: Verdict,
    pub detail: String,
}

/// What to check against.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    pub threads: usize,
    pub camera: (usize, usize),
    pub budget: Option<usize>,
    /// A clip to recognise (default: the shipped samples beside the bundle).
    pub sample: Option<PathBuf>,
    /// Which of the bundle's graphs to run (`--precision`).
    pub precision: crate::Precision,
}

fn check(what: &'static str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        what,
        verdict,
        detail: detail.into(),
    }
}

/// Runs every check; the bundle's are skipped (failed) when it cannot be opened.
pub fn run(dir: &Path, o: &DoctorOptions) -> Vec<Check> {
    let mut out = vec![cpu_check()];
    let bundle = match Bundle::open(dir).and_then(|b| b.with_precision(o.precision)) {
        Ok(b) => {
            out.push(check(
                "bundle",
                Verdict::Ok,
                format!("{}: every file's size and sha256 match", dir.display()),
            ));
            b
        }
        Err(e) => {
            out.push(check("bundle", Verdict::Fail, e.to_string()));
            out.extend(cameras());
            return out;
        }
    };
    out.push(check(
        "precision",
        Verdict::Ok,
        format!(
            "running the {} graphs: {}",
            bundle.choice.precision, bundle.choice.reason
        ),
    ));
    let d = bundle.prepare_isa();
    out.push(check(
        "dispatch",
        Verdict::Ok,
        format!(
            "{d}; tract's tiers: {}; matrix kernels: {}",
            crate::isa::tract_tiers(),
            crate::isa::matmul_kernels()
                .map(|(what, k)| format!("{what} {}", k.unwrap_or_else(|| "none".into())))
                .join(", ")
        ),
    ));
    out.extend(cameras());
    out.push(memory_check(&bundle, o));
    out.push(sample_check(&bundle, o));
    out
}

fn cpu_check() -> Check {
    let cpu = crate::precision::Cpu::detect();
    let f = cpu.x86;
    let arch = std::env::consts::ARCH;
    let mut detail = arch.to_string();
    if arch == "x86_64" {
        detail += &format!(
            ": avx2 {} fma {} avx512f {} avx512-vnni {} avx-vnni {} amx-int8 {}",
            f.avx2, f.fma, f.avx512f, f.avx512vnni, f.avxvnni, f.amx_int8
        );
    }
    if arch == "aarch64" {
        detail += &format!(": dotprod {}", cpu.dotprod);
    }
    let verdict = if f.int8_needs_avx_kernel() {
        detail += " (AVX2 without AVX-512/VNNI: int8 graphs are slow here; a bundle with float graphs runs them)";
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    check("cpu", verdict, detail)
}

fn cameras() -> Vec<Check> {
    let devs = crate::camera::video_devices();
    if devs.is_empty() {
        return vec![check(
            "cameras",
            Verdict::Warn,
            "no /dev/video* device (files, folders and stdin still work)",
        )];
    }
    devs.iter().map(|d| camera_check(d)).collect()
}

#[cfg(feature = "v4l2")]
fn camera_check(dev: &str) -> Check {
    match crate::camera::offered_formats(dev) {
        Ok(f) if crate::camera::choose_format(&fourccs(&f)).is_some() => check(
            "camera",
            Verdict::Ok,
            format!("{dev}: offers {}", f.join(", ")),
        ),
        Ok(f) => check(
            "camera",
            Verdict::Warn,
            format!(
                "{dev}: offers {} but signrt reads YUYV or MJPG: pipe it through ffmpeg",
                f.join(", ")
            ),
        ),
        Err(e) => check("camera", Verdict::Warn, e.to_string()),
    }
}

#[cfg(feature = "v4l2")]
fn fourccs(f: &[String]) -> Vec<[u8; 4]> {
    f.iter()
        .filter_map(|s| s.as_bytes().try_into().ok())
        .collect()
}

#[cfg(not(feature = "v4l2"))]
fn camera_check(dev: &str) -> Check {
    check(
        "camera",
        Verdict::Warn,
        format!("{dev}: this signrt has no V4L2 support (built without `v4l2`)"),
    )
}

fn memory_check(bundle: &Bundle, o: &DoctorOptions) -> Check {
    let s = Settings {
        threads: o.threads,
        frame_size: Some(o.camera),
        ..Settings::default()
    };
    match Pipeline::with_settings(bundle, s) {
        Err(e) => check("memory", Verdict::Fail, e.to_string()),
        Ok(p) => {
            let (w, h) = o.camera;
            let need = format!(
                "needs {} for {w}x{h} frames on {} thread(s)",
                p.need.describe(),
                o.threads
            );
            match o.budget {
                Some(b) if p.need.total() > b => check(
                    "memory",
                    Verdict::Fail,
                    format!("{need}: more than the budget {}", memory::mib(b)),
                ),
                Some(b) => check(
                    "memory",
                    Verdict::Ok,
                    format!("{need}, within the budget {}", memory::mib(b)),
                ),
                None => check("memory", Verdict::Ok, need),
            }
        }
    }
}

/// The clip to try: the one given, else the first shipped sample beside the bundle.
fn sample_of(bundle: &Bundle, o: &DoctorOptions) -> Option<PathBuf> {
    o.sample.clone().or_else(|| {
        let dir = bundle.dir.parent()?.join("samples");
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "y4m"))
            .collect();
        v.sort();
        v.into_iter().next()
    })
}

fn sample_check(bundle: &Bundle, o: &DoctorOptions) -> Check {
    let Some(clip) = sample_of(bundle, o) else {
        return check(
            "sample",
            Verdict::Warn,
            "no sample clip to try (give one with --sample CLIP.y4m)",
        );
    };
    let run = || -> Result<String, String> {
        let mut src = Y4mSource::open_file(&clip).map_err(|e| e.to_string())?;
        let s = Settings {
            threads: o.threads,
            beam: 5,
            frame_size: src.size(),
            ..Settings::default()
        };
        let mut p = Pipeline::with_settings(bundle, s).map_err(|e| e.to_string())?;
        let opts = RunOptions {
            fps: 25.0,
            memory_budget: None,
        };
        let sum = p.run(&mut src, &opts, |_| {}).map_err(|e| e.to_string())?;
        Ok(sum.glosses)
    };
    match run() {
        Ok(g) if g.is_empty() => check(
            "sample",
            Verdict::Warn,
            format!("{}: decoded, but recognised nothing", clip.display()),
        ),
        Ok(g) => check("sample", Verdict::Ok, format!("{}: {g}", clip.display())),
        Err(e) => check("sample", Verdict::Fail, e),
    }
}

//! The synthetic signer corpus: `signrt-train synth`.
//!
//! No real sign-language video can be downloaded here, so the project makes its
//! own: a procedural 2-D signer (background, body, head, arms, two hands with
//! handshapes) signs sentences of 2–8 glosses from a vocabulary in which a third
//! of the glosses differ from a partner only by the direction of their movement
//! (see [`glosses`]). Every video varies colours and textures, body position and
//! scale, signing speed (frames per gloss vary about 2×), camera jitter, noise
//! and lighting; hands travel between signs, and idle frames open and close each
//! video. Train, dev and test are split **by signer** (PHOENIX's
//! signer-independent setting).
//!
//! Output is the seed's layout (`<out>/<split>/<id>/frame_0001.jpg`,
//! `<out>/annotations/<split>_gloss_eng.csv`), plus `<split>_gloss_spans.csv`
//! with each gloss's true frames (real datasets have no such frame labels: they
//! are used only with `training.frame_labels = "spans"`) and `synth.json`.
//! The same arguments give byte-identical output.

pub mod glosses;
pub mod render;

use glosses::{GlossSpec, Hands, Handshape};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use render::{Canvas, Rgb};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const SPLITS: [&str; 3] = ["train", "dev", "test"];

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("--{arg}: {message}")]
    Arg { arg: &'static str, message: String },
    #[error("{path}: {message}")]
    Path { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to generate.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SynthConfig {
    pub videos: usize,
    pub glosses: usize,
    pub signers: usize,
    pub size: usize,
    pub seed: u64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            videos: 100,
            glosses: 24,
            signers: 10,
            size: 112,
            seed: 0,
        }
    }
}

/// A signer's fixed traits.
#[derive(Debug, Clone, Serialize)]
pub struct Signer {
    pub id: usize,
    pub split: &'static str,
    pub skin: Rgb,
    pub hair: Rgb,
    pub shirt: Rgb,
    pub scale: f32,
    pub amp: f32,
    pub speed: f32,
}

/// Everything that varies per video besides the sentence.
#[derive(Debug, Clone, Serialize)]
pub struct Style {
    pub skin: Rgb,
    pub hair: Rgb,
    pub shirt: Rgb,
    pub stripe: Rgb,
    pub stripe_period: f32,
    pub bg_top: Rgb,
    pub bg_bottom: Rgb,
    pub texture: u32,
    pub tex_amp: f32,
    pub tex_period: f32,
    /// Neck base as a share of the frame, and the torso width as a share of the frame.
    pub neck: (f32, f32),
    pub unit: f32,
    pub amp: f32,
    pub gain: f32,
    pub noise: f32,
    pub jitter: f32,
    pub flicker: f32,
}

/// One step of a video's timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Step {
    /// Hands at rest.
    Rest,
    /// Gloss `g` at phase t.
    Sign { g: usize, t: f32 },
    /// Moving from the end of `from` (None = rest) to the start of `to` (None = rest), at fraction f.
    Travel {
        from: Option<usize>,
        to: Option<usize>,
        f: f32,
    },
}

#[derive(Debug, Clone)]
pub struct VideoPlan {
    pub id: String,
    pub split: &'static str,
    pub index: usize,
    pub signer: usize,
    pub glosses: Vec<usize>,
    /// (start, end) frame of each gloss, 0-based inclusive.
    pub spans: Vec<(usize, usize)>,
    pub style: Style,
    pub timeline: Vec<Step>,
    pub render_seed: u64,
}

pub struct CorpusPlan {
    pub config: SynthConfig,
    pub vocab: Vec<GlossSpec>,
    pub signers: Vec<Signer>,
    pub videos: Vec<VideoPlan>,
}

fn rgb<R: Rng>(rng: &mut R, lo: f32, hi: f32) -> Rgb {
    [
        rng.random_range(lo..hi),
        rng.random_range(lo..hi),
        rng.random_range(lo..hi),
    ]
}

fn signer_traits(id: usize, split: &'static str, seed: u64) -> Signer {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ 0x5157_4E45_5200_0000 ^ (id as u64).wrapping_mul(0x9E37_79B9),
    );
    let tone = rng.random_range(0.0f32..1.0);
    let skin = [
        120.0 + 120.0 * tone,
        80.0 + 110.0 * tone,
        60.0 + 100.0 * tone,
    ];
    Signer {
        id,
        split,
        skin,
        hair: rgb(&mut rng, 10.0, 120.0),
        shirt: rgb(&mut rng, 20.0, 230.0),
        scale: rng.random_range(0.9..1.1),
        amp: rng.random_range(0.85..1.15),
        speed: rng.random_range(0.85..1.15),
    }
}

fn style_for<R: Rng>(s: &Signer, rng: &mut R) -> Style {
    let jit = |rng: &mut R, c: Rgb, a: f32| -> Rgb {
        [
            (c[0] + rng.random_range(-a..a)).clamp(0.0, 255.0),
            (c[1] + rng.random_range(-a..a)).clamp(0.0, 255.0),
            (c[2] + rng.random_range(-a..a)).clamp(0.0, 255.0),
        ]
    };
    let shirt = if rng.random_bool(0.5) {
        s.shirt
    } else {
        rgb(rng, 20.0, 230.0)
    };
    Style {
        skin: jit(rng, s.skin, 12.0),
        hair: s.hair,
        shirt,
        stripe: jit(rng, shirt, 60.0),
        stripe_period: if rng.random_bool(0.4) {
            rng.random_range(2.0..6.0)
        } else {
            0.0
        },
        bg_top: rgb(rng, 30.0, 230.0),
        bg_bottom: rgb(rng, 30.0, 230.0),
        texture: rng.random_range(0..4),
        tex_amp: rng.random_range(5.0..35.0),
        tex_period: rng.random_range(3.0..12.0),
        neck: (
            0.5 + rng.random_range(-0.06..0.06),
            0.5 + rng.random_range(-0.05..0.05),
        ),
        unit: 0.36 * s.scale * rng.random_range(0.93..1.07),
        amp: s.amp,
        gain: rng.random_range(0.75..1.2),
        noise: rng.random_range(2.0..7.0),
        jitter: rng.random_range(0.0..1.5),
        flicker: rng.random_range(0.0..0.04),
    }
}

/// Splits signers: dev and test get max(1, round(S/10)) each, train the rest.
pub fn signer_splits(signers: usize) -> Vec<&'static str> {
    let k = ((signers as f64 / 10.0).round() as usize).max(1);
    (0..signers)
        .map(|i| {
            if i >= signers - k {
                "test"
            } else if i >= signers - 2 * k {
                "dev"
            } else {
                "train"
            }
        })
        .collect()
}

/// Plans the whole corpus (no pixels).
pub fn plan(cfg: &SynthConfig) -> Result<CorpusPlan, SynthError> {
    let (n_train, n_dev, n_test) = split_sizes(cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let vocab = glosses::vocabulary(cfg.glosses, &mut rng);
    let splits = signer_splits(cfg.signers);
    let signers: Vec<Signer> = (0..cfg.signers)
        .map(|i| signer_traits(i, splits[i], cfg.seed))
        .collect();
    let train_sents = train_sentences(&mut rng, cfg.glosses, n_train);
    let train_set: HashSet<Vec<usize>> = train_sents.iter().cloned().collect();
    let dev_sents = heldout_sentences(&mut rng, cfg.glosses, &train_set, n_dev);
    let test_sents = heldout_sentences(&mut rng, cfg.glosses, &train_set, n_test);
    let mut videos = Vec::new();
    for (split, sents) in [
        ("train", train_sents),
        ("dev", dev_sents),
        ("test", test_sents),
    ] {
        let pool: Vec<usize> = signers
            .iter()
            .filter(|x| x.split == split)
            .map(|x| x.id)
            .collect();
        for (k, s) in sents.into_iter().enumerate() {
            let signer = &signers[pool[k % pool.len()]];
            let index = videos.len();
            videos.push(plan_video(cfg.seed, signer, split, index, s));
        }
    }
    Ok(CorpusPlan {
        config: cfg.clone(),
        vocab,
        signers,
        videos,
    })
}

/// Refuses arguments that cannot make a signer-independent corpus; else the
/// (train, dev, test) video counts, dev and test a tenth each.
fn split_sizes(cfg: &SynthConfig) -> Result<(usize, usize, usize), SynthError> {
    let arg = |arg, message: String| Err(SynthError::Arg { arg, message });
    if cfg.signers < 3 {
        return arg(
            "signers",
            format!(
                "{} signers cannot be split by signer into train, dev and test; use at least 3",
                cfg.signers
            ),
        );
    }
    if cfg.glosses < 2 || cfg.glosses > glosses::max_glosses() {
        return arg(
            "glosses",
            format!(
                "{} is out of range: use 2 to {}",
                cfg.glosses,
                glosses::max_glosses()
            ),
        );
    }
    if cfg.size < 32 || cfg.size > 1024 {
        return arg(
            "size",
            format!("{} px is out of range: use 32 to 1024", cfg.size),
        );
    }
    let n_dev = ((cfg.videos as f64 * 0.1).round() as usize).max(1);
    let n_test = n_dev;
    if cfg.videos < n_dev + n_test + 1 {
        return arg(
            "videos",
            format!(
                "{} videos cannot fill train, dev and test; use at least 3",
                cfg.videos
            ),
        );
    }
    let n_train = cfg.videos - n_dev - n_test;
    let needed = cfg.glosses.div_ceil(8);
    if n_train < needed {
        return arg(
            "videos",
            format!("{n_train} train videos cannot show all {} glosses (8 per sentence at most): use more videos or fewer glosses", cfg.glosses),
        );
    }
    Ok((n_train, n_dev, n_test))
}

/// A random sentence of `len` glosses out of `v`, never one gloss twice in a row.
fn random_sentence(rng: &mut ChaCha8Rng, v: usize, len: usize) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::with_capacity(len);
    while out.len() < len {
        let g = rng.random_range(0..v);
        if out.last() != Some(&g) {
            out.push(g);
        }
    }
    out
}

/// The train sentences, shuffled: the first ones cover the whole vocabulary,
/// so every gloss is seen in training.
fn train_sentences(rng: &mut ChaCha8Rng, v: usize, n_train: usize) -> Vec<Vec<usize>> {
    use rand::seq::SliceRandom;
    let mut train_sents: Vec<Vec<usize>> = Vec::new();
    let mut all: Vec<usize> = (0..v).collect();
    all.shuffle(rng);
    let mut i = 0;
    while i < all.len() {
        let len = rng.random_range(2..=8).min(all.len() - i).max(1);
        let mut s = all[i..i + len].to_vec();
        if s.len() < 2 {
            let extra = (s[0] + 1 + rng.random_range(0..v - 1)) % v;
            s.push(extra);
        }
        train_sents.push(s);
        i += len;
    }
    while train_sents.len() < n_train {
        let len = rng.random_range(2..=8);
        train_sents.push(random_sentence(rng, v, len));
    }
    train_sents.shuffle(rng);
    train_sents
}

/// `n` dev or test sentences, none of them a train sentence.
fn heldout_sentences(
    rng: &mut ChaCha8Rng,
    v: usize,
    train_set: &HashSet<Vec<usize>>,
    n: usize,
) -> Vec<Vec<usize>> {
    (0..n)
        .map(|_| loop {
            let len = rng.random_range(2..=8);
            let s = random_sentence(rng, v, len);
            if !train_set.contains(&s) {
                break s;
            }
        })
        .collect()
}

/// One video of `sentence` by `signer`: its own seed (from the corpus seed and
/// its index) draws its style, speed, timeline and render seed.
fn plan_video(
    seed: u64,
    signer: &Signer,
    split: &'static str,
    index: usize,
    sentence: Vec<usize>,
) -> VideoPlan {
    let mut vrng = ChaCha8Rng::seed_from_u64(
        seed ^ 0xA11C_E000_0000_0000 ^ (index as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
    );
    let st = style_for(signer, &mut vrng);
    let speed = vrng.random_range(0.75f32..1.5) * signer.speed;
    let (timeline, spans) = timeline_of(&mut vrng, &sentence, speed);
    VideoPlan {
        id: format!("s{:02}_v{index:05}", signer.id),
        split,
        index,
        signer: signer.id,
        glosses: sentence,
        spans,
        style: st,
        timeline,
        render_seed: vrng.random(),
    }
}

/// A video's steps and each gloss's span: rest, then for each gloss a travel
/// to it and its sign, then a travel back to rest and rest again.
fn timeline_of(
    vrng: &mut ChaCha8Rng,
    sentence: &[usize],
    speed: f32,
) -> (Vec<Step>, Vec<(usize, usize)>) {
    let mut timeline = Vec::new();
    let mut spans = Vec::new();
    for _ in 0..vrng.random_range(2..=6) {
        timeline.push(Step::Rest);
    }
    let mut prev: Option<usize> = None;
    for &g in sentence {
        push_travel(vrng, &mut timeline, prev, Some(g));
        let n = ((8.0 * speed).round() as usize).clamp(5, 14);
        let start = timeline.len();
        for j in 0..n {
            timeline.push(Step::Sign {
                g,
                t: j as f32 / (n - 1) as f32,
            });
        }
        spans.push((start, timeline.len() - 1));
        prev = Some(g);
    }
    push_travel(vrng, &mut timeline, prev, None);
    for _ in 0..vrng.random_range(2..=6) {
        timeline.push(Step::Rest);
    }
    (timeline, spans)
}

/// Hands travel between signs over a few frames (2 to 4), never jumping.
fn push_travel(
    vrng: &mut ChaCha8Rng,
    timeline: &mut Vec<Step>,
    from: Option<usize>,
    to: Option<usize>,
) {
    let n_tr = vrng.random_range(2..=4);
    for j in 0..n_tr {
        timeline.push(Step::Travel {
            from,
            to,
            f: (j + 1) as f32 / (n_tr + 1) as f32,
        });
    }
}

/// Hand poses of one frame, in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pose {
    dom: (f32, f32),
    oth: (f32, f32),
    dom_shape: Handshape,
    oth_shape: Handshape,
    dom_angle: f32,
    oth_angle: f32,
}

struct Body {
    nx: f32,
    ny: f32,
    u: f32,
}

impl Body {
    fn new(st: &Style, size: usize) -> Self {
        let s = size as f32;
        Self {
            nx: st.neck.0 * s,
            ny: st.neck.1 * s,
            u: st.unit * s,
        }
    }
    /// Body units (x towards the dominant side = image left) to pixels.
    fn at(&self, bx: f32, by: f32) -> (f32, f32) {
        (self.nx - bx * self.u, self.ny + by * self.u)
    }
    fn rest(&self) -> Pose {
        Pose {
            dom: self.at(0.42, 1.1),
            oth: self.at(-0.42, 1.1),
            dom_shape: Handshape::Fist,
            oth_shape: Handshape::Fist,
            dom_angle: 0.0,
            oth_angle: 0.0,
        }
    }
}

fn sign_pose(body: &Body, g: &GlossSpec, t: f32, amp: f32) -> Pose {
    let (ax, ay) = g.location.anchor();
    let (ox, oy) = g.movement.offset(t, 0.5 * amp);
    let dom = body.at(ax + ox, ay + oy);
    let angle = match g.handshape {
        Handshape::Flat => 0.35,
        _ => 0.0,
    };
    let rest = body.rest();
    let (oth, oth_shape, oth_angle) = match g.hands {
        Hands::One => (rest.oth, Handshape::Fist, 0.0),
        Hands::Mirrored => (body.at(-(ax + ox).max(0.25), ay + oy), g.handshape, -angle),
        Hands::Base => (
            body.at(-0.15, 0.5),
            Handshape::Flat,
            std::f32::consts::FRAC_PI_2,
        ),
    };
    Pose {
        dom,
        oth,
        dom_shape: g.handshape,
        oth_shape,
        dom_angle: angle,
        oth_angle,
    }
}

fn pose_at(body: &Body, vocab: &[GlossSpec], step: Step, amp: f32) -> Pose {
    match step {
        Step::Rest => body.rest(),
        Step::Sign { g, t } => sign_pose(body, &vocab[g], t, amp),
        Step::Travel { from, to, f } => {
            let a = from.map_or_else(|| body.rest(), |g| sign_pose(body, &vocab[g], 1.0, amp));
            let b = to.map_or_else(|| body.rest(), |g| sign_pose(body, &vocab[g], 0.0, amp));
            let lerp =
                |p: (f32, f32), q: (f32, f32)| (p.0 + (q.0 - p.0) * f, p.1 + (q.1 - p.1) * f);
            let late = f >= 0.5;
            Pose {
                dom: lerp(a.dom, b.dom),
                oth: lerp(a.oth, b.oth),
                dom_shape: if late { b.dom_shape } else { a.dom_shape },
                oth_shape: if late { b.oth_shape } else { a.oth_shape },
                dom_angle: if late { b.dom_angle } else { a.dom_angle },
                oth_angle: if late { b.oth_angle } else { a.oth_angle },
            }
        }
    }
}

/// Hand radius in body units. Hands carry the signs: at 0.1 a 64-pixel frame
/// showed them 4–5 px wide, too small for a small CNN trained from scratch to
/// tell the glosses apart even with frame labels (docs/experiments.md, "The
/// synthetic signer's hands"); 0.16 makes them ~7 px.
const HAND: f32 = 0.16;

fn draw(cv: &mut Canvas, st: &Style, body: &Body, p: &Pose, shift: (f32, f32)) {
    render::background(
        cv,
        st.bg_top,
        st.bg_bottom,
        st.texture,
        st.tex_amp,
        st.tex_period,
    );
    let (jx, jy) = shift;
    let b = Body {
        nx: body.nx + jx,
        ny: body.ny + jy,
        u: body.u,
    };
    let sh = |p: (f32, f32)| (p.0 + jx, p.1 + jy);
    draw_torso_and_head(cv, st, &b);
    // arms: shoulder -> elbow -> hand
    let (dom, oth) = (sh(p.dom), sh(p.oth));
    draw_arm(cv, st, &b, -1.0, oth);
    draw_arm(cv, st, &b, 1.0, dom);
    let edge = darker(st.skin, 0.7);
    render::hand(
        cv,
        oth.0,
        oth.1,
        HAND * b.u,
        p.oth_shape,
        p.oth_angle,
        darker(st.skin, 0.95),
        edge,
    );
    render::hand(
        cv,
        dom.0,
        dom.1,
        HAND * b.u,
        p.dom_shape,
        p.dom_angle,
        st.skin,
        edge,
    );
}

/// A colour scaled towards black by `k`: shading without a second palette.
fn darker(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// Torso and neck, then the head with hair and eyes, drawn behind the arms.
fn draw_torso_and_head(cv: &mut Canvas, st: &Style, b: &Body) {
    let u = b.u;
    cv.torso(
        b.nx,
        b.ny,
        cv.h as f32 + u,
        1.05 * u,
        1.3 * u,
        st.shirt,
        st.stripe,
        st.stripe_period,
    );
    cv.capsule(
        b.nx,
        b.ny,
        b.nx,
        b.ny - 0.35 * u,
        0.13 * u,
        darker(st.skin, 0.9),
    );
    let (hx, hy) = (b.nx, b.ny - 0.7 * u);
    cv.ellipse(hx, hy - 0.06 * u, 0.33 * u, 0.4 * u, 0.0, st.hair);
    cv.ellipse(hx, hy, 0.29 * u, 0.36 * u, 0.0, st.skin);
    cv.ellipse(
        hx - 0.1 * u,
        hy - 0.05 * u,
        0.035 * u,
        0.035 * u,
        0.0,
        [30.0, 30.0, 30.0],
    );
    cv.ellipse(
        hx + 0.1 * u,
        hy - 0.05 * u,
        0.035 * u,
        0.035 * u,
        0.0,
        [30.0, 30.0, 30.0],
    );
}

/// One arm, shoulder -> elbow -> hand, the elbow bent outwards and down; the
/// sleeves clearly darker than the torso, so the arms stand out.
fn draw_arm(cv: &mut Canvas, st: &Style, b: &Body, side: f32, hand: (f32, f32)) {
    let u = b.u;
    let shoulder = b.at(side * 0.5, 0.1);
    let elbow = (
        (shoulder.0 + hand.0) / 2.0 - side * 0.18 * u,
        (shoulder.1 + hand.1) / 2.0 + 0.22 * u,
    );
    let sleeve = darker(st.shirt, 0.6);
    cv.capsule(shoulder.0, shoulder.1, elbow.0, elbow.1, 0.11 * u, sleeve);
    cv.capsule(elbow.0, elbow.1, hand.0, hand.1, 0.09 * u, sleeve);
}

/// Renders a planned video to RGB8 frames (`size`×`size`×3 bytes each).
pub fn render_video(v: &VideoPlan, vocab: &[GlossSpec], size: usize) -> Vec<Vec<u8>> {
    let body = Body::new(&v.style, size);
    let mut rng = ChaCha8Rng::seed_from_u64(v.render_seed);
    let mut cv = Canvas::new(size, size);
    v.timeline
        .iter()
        .map(|&step| {
            let p = pose_at(&body, vocab, step, v.style.amp);
            let shift = (
                rng.random_range(-1.0..=1.0) * v.style.jitter,
                rng.random_range(-1.0..=1.0) * v.style.jitter,
            );
            draw(&mut cv, &v.style, &body, &p, shift);
            let gain = v.style.gain * (1.0 + rng.random_range(-1.0..=1.0) * v.style.flicker);
            render::light_and_noise(&mut cv, gain, v.style.noise, rng.random());
            cv.rgb.clone()
        })
        .collect()
}

/// Renders gloss `g` alone over `n` frames with a clean style: no noise,
/// jitter or flicker (for tests of the movement pairs and for inspection).
pub fn render_gloss_clean(
    vocab: &[GlossSpec],
    g: usize,
    style: &Style,
    n: usize,
    size: usize,
) -> Vec<Vec<u8>> {
    let body = Body::new(style, size);
    let mut cv = Canvas::new(size, size);
    (0..n)
        .map(|j| {
            let t = if n > 1 {
                j as f32 / (n - 1) as f32
            } else {
                0.0
            };
            let p = pose_at(&body, vocab, Step::Sign { g, t }, style.amp);
            draw(&mut cv, style, &body, &p, (0.0, 0.0));
            cv.rgb.clone()
        })
        .collect()
}

/// A JPEG (quality 90) of one RGB8 frame.
pub fn encode_jpeg(rgb: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let enc = jpeg_encoder::Encoder::new(&mut out, 90);
    enc.encode(rgb, size as u16, size as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Counts written, for the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SplitSummary {
    pub videos: usize,
    pub frames: usize,
    pub signers: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SynthSummary {
    pub out: PathBuf,
    pub splits: Vec<(String, SplitSummary)>,
    pub vocabulary: usize,
    pub movement_pair_glosses: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.into(),
        source,
    }
}

/// Plans, renders and writes the corpus to `out` (atomically: into a staging
/// directory next to it, renamed into place at the end).
pub fn write_corpus(
    cfg: &SynthConfig,
    out: &Path,
    force: bool,
) -> Result<SynthSummary, SynthError> {
    let plan = plan(cfg)?;
    if out.exists() {
        let non_empty = std::fs::read_dir(out).map_err(io(out))?.next().is_some();
        if non_empty && !force {
            return Err(SynthError::Path {
                path: out.into(),
                message: "exists and is not empty; pass --force to replace it".into(),
            });
        }
    }
    let name = out.file_name().ok_or_else(|| SynthError::Path {
        path: out.into(),
        message: "has no file name".into(),
    })?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let stage = parent.join(format!(
        "{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(io(&stage))?;
    }
    let result = write_into(&plan, &stage);
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&stage);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io(out))?;
    }
    std::fs::rename(&stage, out).map_err(io(out))?;
    let mut splits = Vec::new();
    for s in SPLITS {
        let vids: Vec<&VideoPlan> = plan.videos.iter().filter(|v| v.split == s).collect();
        let mut signers: Vec<usize> = vids.iter().map(|v| v.signer).collect();
        signers.sort();
        signers.dedup();
        splits.push((
            s.to_string(),
            SplitSummary {
                videos: vids.len(),
                frames: vids.iter().map(|v| v.timeline.len()).sum(),
                signers,
            },
        ));
    }
    Ok(SynthSummary {
        out: out.into(),
        splits,
        vocabulary: plan.vocab.len(),
        movement_pair_glosses: plan.vocab.iter().filter(|g| g.pair_of.is_some()).count(),
    })
}

fn write_into(plan: &CorpusPlan, dir: &Path) -> Result<(), SynthError> {
    let size = plan.config.size;
    let ann = dir.join("annotations");
    std::fs::create_dir_all(&ann).map_err(io(&ann))?;
    plan.videos
        .par_iter()
        .try_for_each(|v| -> Result<(), SynthError> {
            let vd = dir.join(v.split).join(&v.id);
            std::fs::create_dir_all(&vd).map_err(io(&vd))?;
            for (k, f) in render_video(v, &plan.vocab, size).iter().enumerate() {
                let p = vd.join(format!("frame_{:04}.jpg", k + 1));
                let bytes = encode_jpeg(f, size).map_err(|m| SynthError::Path {
                    path: p.clone(),
                    message: m,
                })?;
                std::fs::write(&p, bytes).map_err(io(&p))?;
            }
            Ok(())
        })?;
    for s in SPLITS {
        let mut csv = String::from("folder_name,gloss_text\n");
        let mut spans = String::from("folder_name,position,gloss,start_frame,end_frame\n");
        for v in plan.videos.iter().filter(|v| v.split == s) {
            let names: Vec<&str> = v
                .glosses
                .iter()
                .map(|&g| plan.vocab[g].name.as_str())
                .collect();
            csv.push_str(&format!("{},{}\n", v.id, names.join(" ")));
            for (pos, (&g, &(a, b))) in v.glosses.iter().zip(&v.spans).enumerate() {
                spans.push_str(&format!(
                    "{},{},{},{},{}\n",
                    v.id,
                    pos + 1,
                    plan.vocab[g].name,
                    a + 1,
                    b + 1
                ));
            }
        }
        let p = ann.join(format!("{s}_gloss_eng.csv"));
        std::fs::write(&p, csv).map_err(io(&p))?;
        let p = ann.join(format!("{s}_gloss_spans.csv"));
        std::fs::write(&p, spans).map_err(io(&p))?;
    }
    let meta = serde_json::json!({
        "generator": concat!("signrt-train ", env!("CARGO_PKG_VERSION")),
        "config": plan.config,
        "glosses": plan.vocab,
        "signers": plan.signers.iter().map(|s| serde_json::json!({"id": s.id, "split": s.split})).collect::<Vec<_>>(),
    });
    let p = dir.join("synth.json");
    std::fs::write(&p, serde_json::to_string_pretty(&meta).unwrap_or_default()).map_err(io(&p))?;
    Ok(())
}

/// A random style for tests and inspection.
pub fn sample_style(seed: u64) -> Style {
    let s = signer_traits(0, "train", seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    style_for(&s, &mut rng)
}

pub mod cli {
    use super::*;
    use anyhow::Context;

    /// `signrt-train synth`.
    #[derive(clap::Args, Debug)]
    pub struct SynthArgs {
        /// Output directory (must be empty or absent unless --force).
        #[arg(long)]
        pub out: PathBuf,
        #[arg(long, default_value_t = 100)]
        pub videos: usize,
        /// Vocabulary size.
        #[arg(long, default_value_t = 24)]
        pub glosses: usize,
        #[arg(long, default_value_t = 10)]
        pub signers: usize,
        /// Frame side in pixels.
        #[arg(long, default_value_t = 112)]
        pub size: usize,
        #[arg(long, default_value_t = 0)]
        pub seed: u64,
        /// Replace a non-empty output directory.
        #[arg(long)]
        pub force: bool,
    }

    pub fn run(a: SynthArgs) -> anyhow::Result<()> {
        let cfg = SynthConfig {
            videos: a.videos,
            glosses: a.glosses,
            signers: a.signers,
            size: a.size,
            seed: a.seed,
        };
        let t0 = std::time::Instant::now();
        let s = write_corpus(&cfg, &a.out, a.force)
            .with_context(|| format!("writing the corpus to {}", a.out.display()))?;
        let secs = t0.elapsed().as_secs_f64();
        let frames: usize = s.splits.iter().map(|(_, x)| x.frames).sum();
        println!(
            "synthetic signer corpus in {} ({frames} frames of {}x{} in {secs:.1} s)",
            s.out.display(),
            a.size,
            a.size
        );
        println!(
            "vocabulary: {} glosses, {} of them in movement-only pairs (same handshape and place, opposite motion)",
            s.vocabulary, s.movement_pair_glosses
        );
        for (name, x) in &s.splits {
            println!(
                "  {name:<5} {:>5} videos {:>7} frames  signers {:?}",
                x.videos, x.frames, x.signers
            );
        }
        println!("annotations: {}", s.out.join("annotations").display());
        println!("signers never cross splits (signer-independent); *_gloss_spans.csv holds the true gloss frames (frame labels real data lacks; used only with training.frame_labels = \"spans\")");
        Ok(())
    }
}

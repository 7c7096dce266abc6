//! How tract dispatches on this CPU, and the one correction we make to it.
//!
//! tract 0.23.9 picks its int8 matrix kernel by instruction set. On an x86-64
//! CPU with AVX2 but neither AVX-512 nor AVX-VNNI (AMD Zen 1–3, Intel cores
//! from Haswell to Comet Lake) that is `avx2_mmm_i32_8x8`, whose
//! inner loop reads each column of A with a legacy-SSE `movq` between 256-bit
//! VEX instructions. Mixing the two encodings while the upper halves of the
//! YMM registers are in use costs a state transition on every iteration: on
//! the AMD EPYC host of the README it made the default int8 encoder take
//! 9–10 ms a frame on a quiet machine (22–25 ms beside a build) against
//! 0.24–0.5 ms for the float one, and a
//! two-instruction loop reproduces it in C (277 ns a step with `movq`, 4.5 ns
//! with `vmovq`; ARCHITECTURE.md, "int8 on AVX2-only x86-64").
//!
//! tract's own knob `TRACT_CPU_ISA` edits the instruction set it dispatches
//! on. With `-avx2` it takes the 128-bit `avx_mmm_i32_8x4` kernel instead,
//! which is VEX throughout; the float matrix kernels (AVX + FMA) stay. The
//! price is that tract's AVX2 sigmoid/tanh/exp routines fall back to its
//! portable ones, so only processes that run int8 graphs take it.
//! [`prepare`] installs that edit as a *deployment default*
//! (`tract_core::knobs::set_config_global`), on affected CPUs only, before
//! the first graph is loaded: the environment variable `TRACT_CPU_ISA`, when
//! set, wins over it, so a user can always choose otherwise (an empty value
//! keeps tract's own choice).

use std::sync::OnceLock;

/// The x86-64 features that decide tract's int8 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct X86Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    pub avxvnni: bool,
}

impl X86Features {
    /// This machine's features (all false off x86-64).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            X86Features {
                avx2: std::arch::is_x86_feature_detected!("avx2"),
                fma: std::arch::is_x86_feature_detected!("fma"),
                avx512f: std::arch::is_x86_feature_detected!("avx512f"),
                avxvnni: std::arch::is_x86_feature_detected!("avxvnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        X86Features::default()
    }

    /// True when tract would run int8 matrix products on `avx2_mmm_i32_8x8`:
    /// AVX2 without AVX-512 (whose tiers, with or without VNNI, need AVX2 left
    /// in the set) and without AVX-VNNI (which has its own VEX kernel).
    pub fn int8_needs_avx_kernel(&self) -> bool {
        self.avx2 && self.fma && !self.avx512f && !self.avxvnni
    }
}

/// What [`prepare`] did, for `signrt info` and `signrt bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatch {
    /// tract's own choice: this CPU is not affected.
    Default,
    /// `TRACT_CPU_ISA=-avx2` installed as the deployment default.
    AvoidAvx2Int8,
    /// The user set `TRACT_CPU_ISA` (value kept): it is theirs.
    User(String),
    /// Another deployment config set the knob first (tract's message).
    Config(String),
}

impl std::fmt::Display for Dispatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dispatch::Default => write!(f, "tract's default"),
            Dispatch::AvoidAvx2Int8 => write!(
                f,
                "TRACT_CPU_ISA=-avx2 (AVX2 without AVX-512/AVX-VNNI: tract's AVX2 int8 kernel is avoided; set TRACT_CPU_ISA to choose otherwise)"
            ),
            Dispatch::User(v) => write!(f, "TRACT_CPU_ISA={v:?} from the environment"),
            Dispatch::Config(e) => write!(f, "TRACT_CPU_ISA left as a tract config set it ({e})"),
        }
    }
}

/// The decision, from the features, the user's `TRACT_CPU_ISA` (if any) and
/// whether int8 graphs will run (a float-only process keeps tract's AVX2
/// routines: its LSTM window measured ~30 % slower without them).
pub fn decide(features: &X86Features, env: Option<&str>, int8: bool) -> Dispatch {
    match env {
        Some(v) => Dispatch::User(v.to_string()),
        None if int8 && features.int8_needs_avx_kernel() => Dispatch::AvoidAvx2Int8,
        None => Dispatch::Default,
    }
}

static DECIDED: OnceLock<Dispatch> = OnceLock::new();

/// Makes the decision once per process and installs it in tract; `int8`:
/// whether the graphs about to be loaded compute in int8. Call it before
/// tract loads a graph (every loader of ours does). tract reads the CPU's
/// features once, so the first call decides: a later call for int8 graphs
/// after a float-only decision only warns.
pub fn prepare(int8: bool) -> &'static Dispatch {
    let d = DECIDED.get_or_init(|| {
        let env = std::env::var("TRACT_CPU_ISA").ok();
        let d = decide(&X86Features::detect(), env.as_deref(), int8);
        let d = if d == Dispatch::AvoidAvx2Int8 {
            match tract_onnx::tract_core::knobs::set_config_global("TRACT_CPU_ISA", "-avx2") {
                Ok(()) => d,
                Err(e) => {
                    log::warn!("cannot set tract's TRACT_CPU_ISA: {e:#}");
                    Dispatch::Config(format!("{e:#}"))
                }
            }
        } else {
            d
        };
        log::debug!("tract dispatch: {d}");
        if d == Dispatch::AvoidAvx2Int8 {
            log::info!(
                "this CPU has AVX2 but no AVX-512/AVX-VNNI: int8 graphs run on tract's 128-bit kernel, at about half the speed of a float bundle here (quantize/README.md)"
            );
        }
        d
    });
    if int8 && *d == Dispatch::Default && X86Features::detect().int8_needs_avx_kernel() {
        log::warn!(
            "int8 graphs loaded after tract's CPU dispatch was set for float ones: they run on tract's slow AVX2 int8 kernel (set TRACT_CPU_ISA=-avx2)"
        );
    }
    d
}

/// The decision [`prepare`] made, if it ran.
pub fn decided() -> Option<&'static Dispatch> {
    DECIDED.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_avx2_without_avx512_or_avxvnni_is_steered() {
        // every combination of the four features, against the rule written out
        for bits in 0u8..16 {
            let f = X86Features {
                avx2: bits & 1 != 0,
                fma: bits & 2 != 0,
                avx512f: bits & 4 != 0,
                avxvnni: bits & 8 != 0,
            };
            let zen2 = bits == 0b0011;
            assert_eq!(f.int8_needs_avx_kernel(), zen2, "{f:?}");
            for int8 in [false, true] {
                let want = if zen2 && int8 {
                    Dispatch::AvoidAvx2Int8
                } else {
                    Dispatch::Default
                };
                assert_eq!(decide(&f, None, int8), want, "{f:?} int8 {int8}");
                // the user's setting always wins, even an empty one
                for v in ["", "+avx2", "-avx2,-fma"] {
                    assert_eq!(decide(&f, Some(v), int8), Dispatch::User(v.into()));
                }
            }
        }
    }
}

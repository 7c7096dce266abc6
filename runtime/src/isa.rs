//! How tract dispatches on this CPU, and the corrections we make to it.
//!
//! tract 0.23.9 picks its int8 matrix kernel by instruction set. Two tiers are
//! steered away from by default, on the CPUs concerned only:
//!
//! - **AVX2 without AVX-512 or AVX-VNNI** (AMD Zen 1–3, Intel cores from Haswell
//!   to Comet Lake): tract would run `avx2_mmm_i32_8x8`, whose inner loop reads
//!   each column of A with a legacy-SSE `movq` between 256-bit VEX instructions.
//!   Mixing the two encodings while the upper halves of the YMM registers are in
//!   use costs a state transition on every iteration, which makes it many times
//!   slower than it should be (figures and a C reproduction: docs/experiments.md,
//!   "int8 on AVX2-only x86-64"). `-avx2` gives the 128-bit `avx_mmm_i32_8x4`
//!   kernel instead, VEX throughout; the float kernels (AVX + FMA) stay. The
//!   price is that tract's AVX2 sigmoid/tanh/exp fall back to portable ones, so
//!   only processes that run int8 graphs take it.
//! - **Intel AMX** (`amx-int8`, Sapphire Rapids and later): tract's AMX kernels
//!   are correct with our patch (they read past the end of their B panels, a
//!   SIGSEGV whenever a panel ended at a mapping's edge: runtime/vendor/PATCHES.md),
//!   but on small encoders' products they are slower than the AVX-512 VNNI
//!   kernels beside them (docs/BENCHMARKS.md): tile set-up does not pay for
//!   itself at those sizes. `-amx-int8` keeps tract on AVX-512 VNNI unless the
//!   int8 encoder is large ([`LARGE_INT8_ENCODER_BYTES`]): with the lazy int8
//!   im2col (runtime/vendor/PATCHES.md), AMX runs a ResNet-18 encoder well ahead
//!   of VNNI.
//!
//! tract's own knob `TRACT_CPU_ISA` edits the instruction set it dispatches on.
//! [`prepare`] installs the edit as a *deployment default*
//! (`tract_core::knobs::set_config_global`), before the first graph is loaded:
//! the environment variable `TRACT_CPU_ISA`, when set, wins over it, so a user
//! can always choose otherwise (an empty value keeps tract's own choice).

use std::sync::OnceLock;

/// The x86-64 features that decide tract's int8 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct X86Features {
    pub avx2: bool,
    pub fma: bool,
    pub avx512f: bool,
    /// AVX-512 VNNI (`vpdpbusd` on 512-bit registers).
    pub avx512vnni: bool,
    pub avxvnni: bool,
    /// Intel AMX with int8 tiles (CPUID leaf 7: AMX-TILE and AMX-INT8).
    pub amx_int8: bool,
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
                avx512vnni: std::arch::is_x86_feature_detected!("avx512vnni"),
                avxvnni: std::arch::is_x86_feature_detected!("avxvnni"),
                amx_int8: cpuid_amx_int8(),
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

    /// True when tract would run int8 matrix products on its AMX kernels
    /// (it also needs AVX-512 for their epilogue).
    pub fn int8_would_use_amx(&self) -> bool {
        self.amx_int8 && self.avx512f
    }
}

/// CPUID leaf 7, sub-leaf 0, EDX bits 24 (AMX-TILE) and 25 (AMX-INT8): std's
/// feature detection has no stable name for them.
#[cfg(target_arch = "x86_64")]
fn cpuid_amx_int8() -> bool {
    // leaf 7 reads as zeros ("no AMX") on CPUs too old to have it
    let r = std::arch::x86_64::__cpuid_count(7, 0);
    r.edx & (3 << 24) == 3 << 24
}

/// What [`prepare`] did, for `signrt info` and `signrt bench`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatch {
    /// tract's own choice: this CPU is not affected.
    Default,
    /// `TRACT_CPU_ISA=-avx2` installed as the deployment default.
    AvoidAvx2Int8,
    /// `TRACT_CPU_ISA=-amx-int8` installed as the deployment default.
    AvoidAmxInt8,
    /// tract's own choice, AMX included: the int8 encoder is large.
    AmxForLargeEncoder,
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
            Dispatch::AvoidAmxInt8 => write!(
                f,
                "TRACT_CPU_ISA=-amx-int8 (Intel AMX: int8 runs on AVX-512 VNNI, faster than AMX on a small encoder; set TRACT_CPU_ISA= to use AMX)"
            ),
            Dispatch::AmxForLargeEncoder => write!(
                f,
                "tract's default, AMX included (the int8 encoder is large enough for AMX tiles to pay; set TRACT_CPU_ISA=-amx-int8 to choose otherwise)"
            ),
            Dispatch::User(v) => write!(f, "TRACT_CPU_ISA={v:?} from the environment"),
            Dispatch::Config(e) => write!(f, "TRACT_CPU_ISA left as a tract config set it ({e})"),
        }
    }
}

/// The int8 encoder file size from which AMX is left on: a ResNet-18 encoder
/// (11 MB in int8) runs faster on AMX than on AVX-512 VNNI, the default
/// model's (0.1 MB) slower (docs/BENCHMARKS.md, "Lazy int8 im2col").
pub const LARGE_INT8_ENCODER_BYTES: u64 = 1 << 20;

/// The decision, from the features, the user's `TRACT_CPU_ISA` (if any),
/// whether int8 graphs will run (a float-only process keeps tract's AVX2
/// routines, which its LSTM window needs: docs/experiments.md), and whether
/// the int8 encoder is large ([`LARGE_INT8_ENCODER_BYTES`]).
pub fn decide(features: &X86Features, env: Option<&str>, int8: bool, large: bool) -> Dispatch {
    match env {
        Some(v) => Dispatch::User(v.to_string()),
        None if int8 && features.int8_needs_avx_kernel() => Dispatch::AvoidAvx2Int8,
        None if int8 && features.int8_would_use_amx() && large => Dispatch::AmxForLargeEncoder,
        None if int8 && features.int8_would_use_amx() => Dispatch::AvoidAmxInt8,
        None => Dispatch::Default,
    }
}

static DECIDED: OnceLock<Dispatch> = OnceLock::new();

/// [`prepare_for`] a small (or no) int8 encoder.
pub fn prepare(int8: bool) -> &'static Dispatch {
    prepare_for(int8, false)
}

/// Makes the decision once per process and installs it in tract; `int8`:
/// whether the graphs about to be loaded compute in int8; `large`: whether
/// their int8 encoder is large. Call it before tract loads a graph (every
/// loader of ours does). tract reads the CPU's features once, so the first
/// call decides: a later call for int8 graphs after a float-only decision
/// only warns.
pub fn prepare_for(int8: bool, large: bool) -> &'static Dispatch {
    let d = DECIDED.get_or_init(|| {
        let env = std::env::var("TRACT_CPU_ISA").ok();
        let d = decide(&X86Features::detect(), env.as_deref(), int8, large);
        let edit = match d {
            Dispatch::AvoidAvx2Int8 => Some("-avx2"),
            Dispatch::AvoidAmxInt8 => Some("-amx-int8"),
            _ => None,
        };
        let d = if let Some(edit) = edit {
            match tract_onnx::tract_core::knobs::set_config_global("TRACT_CPU_ISA", edit) {
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
                "this CPU has AVX2 but no AVX-512/AVX-VNNI: int8 graphs run on tract's 128-bit kernel, still slower than a float bundle here (README, Troubleshooting)"
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

/// tract's int8/float kernel tiers for this CPU as dispatched (after [`prepare`]'s
/// edit), highest first, e.g. `avx512vnni-int8 > avx512 > fma > generic`.
pub fn tract_tiers() -> String {
    let isa = tract_linalg::isa::native();
    tract_linalg::mmm_tiers::for_isa(&isa)
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(" > ")
}

/// The kernel tract picks, on this CPU as dispatched, for an int8 (i8 × i8 → i32) and for an f32
/// matrix product the size of an encoder convolution's (64 output channels, 64 × 3 × 3 inputs, a
/// 16 × 16 map), weights packed ahead of time as a loaded graph's are. On aarch64 the int8 one
/// names whether tract uses the dot-product (`sdot`) instructions. None: no kernel fits.
pub fn matmul_kernels() -> [(&'static str, Option<String>); 2] {
    use tract_linalg::mmm::Query;
    use tract_onnx::prelude::DatumType;
    let pick = |acc: DatumType| {
        let mut q = Query::plain(acc, Some(64), Some(576), Some(256));
        q.allow_extractor = false;
        tract_linalg::MmmDispatch::native()
            .pick(&q)
            .map(|(mmm, _, _)| mmm.name().to_string())
    };
    [
        ("int8", pick(DatumType::I32)),
        ("f32", pick(DatumType::F32)),
    ]
}

/// The decision [`prepare`] made, if it ran.
pub fn decided() -> Option<&'static Dispatch> {
    DECIDED.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_avx2_without_avx512_or_avxvnni_and_amx_are_steered() {
        // every combination of the five features, against the rules written out
        for bits in 0u8..32 {
            let f = X86Features {
                avx2: bits & 1 != 0,
                fma: bits & 2 != 0,
                avx512f: bits & 4 != 0,
                avxvnni: bits & 8 != 0,
                amx_int8: bits & 16 != 0,
                ..Default::default()
            };
            let zen2 = bits & 0b1111 == 0b0011;
            let amx = bits & 16 != 0 && bits & 4 != 0;
            assert_eq!(f.int8_needs_avx_kernel(), zen2, "{f:?}");
            assert_eq!(f.int8_would_use_amx(), amx, "{f:?}");
            for (int8, large) in [(false, false), (false, true), (true, false), (true, true)] {
                let want = match (int8, zen2, amx, large) {
                    (true, true, _, _) => Dispatch::AvoidAvx2Int8,
                    (true, false, true, false) => Dispatch::AvoidAmxInt8,
                    (true, false, true, true) => Dispatch::AmxForLargeEncoder,
                    _ => Dispatch::Default,
                };
                assert_eq!(
                    decide(&f, None, int8, large),
                    want,
                    "{f:?} int8 {int8} {large}"
                );
                // the user's setting always wins, even an empty one
                for v in ["", "+avx2", "-avx2,-fma"] {
                    assert_eq!(decide(&f, Some(v), int8, large), Dispatch::User(v.into()));
                }
            }
        }
    }
}

//! Which of a bundle's graphs run, f32 or int8, chosen by the CPU.
//!
//! A quantised bundle may also carry its float graphs (`float_graphs` in the
//! manifest). int8 pays only where the CPU multiplies bytes with a dot-product
//! instruction: AVX-512 VNNI, AVX-VNNI or AMX on x86-64, `sdot` (dotprod) on
//! aarch64. Elsewhere, notably AVX2-only x86-64 (AMD Zen 1–3, Intel before Ice
//! Lake), tract's int8 kernels are slower than its f32 ones
//! (docs/BENCHMARKS.md), so `auto` takes the float graphs when the bundle has
//! them. The rule is [`choose`]; `--precision f32|int8` overrides it.

use crate::isa::X86Features;
use serde::{Deserialize, Serialize};

/// What a user asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// int8 where the CPU has int8 dot products and the bundle int8 graphs, else f32.
    #[default]
    Auto,
    F32,
    Int8,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        })
    }
}

/// The CPU family, for the rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
    Other,
}

/// What the choice needs to know about a CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub arch: Arch,
    pub x86: X86Features,
    /// aarch64 `sdot`/`udot` (Armv8.2 dotprod: Cortex-A55/A76/A78 and later).
    pub dotprod: bool,
}

impl Cpu {
    /// This machine.
    pub fn detect() -> Self {
        let arch = if cfg!(target_arch = "x86_64") {
            Arch::X86_64
        } else if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::Other
        };
        #[cfg(target_arch = "aarch64")]
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        #[cfg(not(target_arch = "aarch64"))]
        let dotprod = false;
        Cpu {
            arch,
            x86: X86Features::detect(),
            dotprod,
        }
    }

    /// The CPU's int8 dot-product instruction, if it has one tract uses.
    pub fn int8_dot(&self) -> Option<&'static str> {
        match self.arch {
            // where both are present, tract's int8 runs on VNNI unless the int8 encoder is large
            // (`isa::decide`); the label names the one a small encoder gets
            Arch::X86_64 if self.x86.avx512vnni && self.x86.avx512f => Some("AVX-512 VNNI"),
            Arch::X86_64 if self.x86.amx_int8 && self.x86.avx512f => Some("AMX"),
            Arch::X86_64 if self.x86.avxvnni => Some("AVX-VNNI"),
            Arch::Aarch64 if self.dotprod => Some("dotprod (sdot)"),
            _ => None,
        }
    }
}

/// What was chosen and why (for logs, `signrt info` and `signrt doctor`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// `F32` or `Int8`, never `Auto`.
    pub precision: Precision,
    pub reason: String,
}

/// The bundle cannot give what was asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the bundle has no {wanted} graphs (it has {has} only); leave --precision at auto or pick {has}")]
pub struct Unavailable {
    pub wanted: Precision,
    pub has: Precision,
}

/// The rule: an explicit request is honoured if the bundle has those graphs;
/// `auto` takes the only set a bundle has, else int8 on a CPU with int8 dot
/// products and f32 on any other.
pub fn choose(
    requested: Precision,
    has_f32: bool,
    has_int8: bool,
    cpu: &Cpu,
) -> Result<Choice, Unavailable> {
    let only = if has_int8 {
        Precision::Int8
    } else {
        Precision::F32
    };
    let pick = |precision: Precision, reason: String| Ok(Choice { precision, reason });
    match requested {
        Precision::F32 | Precision::Int8 => {
            let has = if requested == Precision::F32 { has_f32 } else { has_int8 };
            if has {
                pick(requested, "asked for (--precision)".into())
            } else {
                Err(Unavailable { wanted: requested, has: only })
            }
        }
        Precision::Auto if !(has_f32 && has_int8) => {
            pick(only, format!("the bundle has {only} graphs only"))
        }
        Precision::Auto => match cpu.int8_dot() {
            Some(isa) => pick(Precision::Int8, format!("this CPU has int8 dot products ({isa})")),
            None => pick(
                Precision::F32,
                "this CPU has no int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX or aarch64 dotprod): f32 is faster here".into(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x86(f: impl Fn(&mut X86Features)) -> Cpu {
        let mut x = X86Features {
            avx2: true,
            fma: true,
            ..Default::default()
        };
        f(&mut x);
        Cpu {
            arch: Arch::X86_64,
            x86: x,
            dotprod: false,
        }
    }

    fn arm(dotprod: bool) -> Cpu {
        Cpu {
            arch: Arch::Aarch64,
            x86: X86Features::default(),
            dotprod,
        }
    }

    /// The documented choice for each CPU family, for a bundle with both sets.
    #[test]
    fn auto_follows_the_cpu_table() {
        use Precision::{Int8, F32};
        let table: Vec<(&str, Cpu, Precision)> = vec![
            ("AVX2 only (Zen 2, Skylake client)", x86(|_| {}), F32),
            (
                "AVX-512 without VNNI (Skylake-SP)",
                x86(|x| x.avx512f = true),
                F32,
            ),
            (
                "AVX-512 VNNI (Cascade Lake, Zen 4)",
                x86(|x| {
                    x.avx512f = true;
                    x.avx512vnni = true
                }),
                Int8,
            ),
            ("AVX-VNNI (Alder Lake)", x86(|x| x.avxvnni = true), Int8),
            (
                "AMX (Sapphire Rapids)",
                x86(|x| {
                    x.avx512f = true;
                    x.avx512vnni = true;
                    x.avxvnni = true;
                    x.amx_int8 = true
                }),
                Int8,
            ),
            ("no SIMD at all", x86(|x| *x = X86Features::default()), F32),
            ("Cortex-A76/A78 (Pi 5, Orin): dotprod", arm(true), Int8),
            ("Cortex-A72/A57 (Pi 4, Nano)", arm(false), F32),
            (
                "another architecture",
                Cpu {
                    arch: Arch::Other,
                    x86: X86Features::default(),
                    dotprod: true,
                },
                F32,
            ),
        ];
        for (name, cpu, want) in table {
            let c = choose(Precision::Auto, true, true, &cpu).unwrap();
            assert_eq!(c.precision, want, "{name}: {}", c.reason);
        }
    }

    #[test]
    fn a_request_is_honoured_or_refused_and_auto_takes_the_only_set() {
        use Precision::{Auto, Int8, F32};
        let fast = x86(|x| x.avxvnni = true);
        let slow = x86(|_| {});
        for cpu in [fast, slow, arm(true), arm(false)] {
            for (f, i) in [(true, true), (true, false), (false, true)] {
                for req in [F32, Int8] {
                    let has = if req == F32 { f } else { i };
                    match choose(req, f, i, &cpu) {
                        Ok(c) => assert!(has && c.precision == req),
                        Err(e) => {
                            assert!(!has);
                            assert_eq!(e.has, if i { Int8 } else { F32 });
                        }
                    }
                }
                if !(f && i) {
                    let c = choose(Auto, f, i, &cpu).unwrap();
                    assert_eq!(c.precision, if i { Int8 } else { F32 });
                }
            }
        }
    }
}

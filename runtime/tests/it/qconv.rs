//! The vendored tract-core's lazy im2col for quantized convolutions (runtime/vendor/PATCHES.md)
//! against tract's eager im2col and a brute-force convolution: random shapes (kernels 1×1, 3×3,
//! 7×7; strides 1 and 2; dilations; padding; groups), i8 and u8 inputs, zero and non-zero input
//! zero points, and a few non-zero kernel zero points (which keep the eager path). Outputs are the
//! raw i32 accumulators, so every path must agree bit for bit.
//!
//! The int8 kernel tract picks depends on the CPU features it sees, which it reads once per
//! process: `every_int8_kernel` runs this binary again per `TRACT_CPU_ISA` edit, so one host
//! covers each kernel it can run (and with them both panel layouts lazy im2col writes).

use proptest::prelude::*;
use std::process::Command;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::knobs::KnobScope;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PaddingSpec, PoolSpec};
use tract_onnx::tract_core::ops::nn::DataFormat;

const CHILD: &str = "SIGNRT_TEST_QCONV_CHILD";

#[derive(Debug, Clone)]
struct Problem {
    ci: usize,
    co: usize,
    group: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pads: [usize; 4], // top, left, bottom, right
    unsigned: bool,
    x0: i32,
    k0: i32,
    x: Vec<i32>,
    k: Vec<i32>,
    bias: Vec<i32>,
}

impl Problem {
    fn out_hw(&self) -> (usize, usize) {
        let reach = (self.kernel - 1) * self.dilation + 1;
        let oh = (self.h + self.pads[0] + self.pads[2] - reach) / self.stride + 1;
        let ow = (self.w + self.pads[1] + self.pads[3] - reach) / self.stride + 1;
        (oh, ow)
    }

    /// The convolution by its definition: padding reads the zero point, so it adds nothing.
    fn brute_force(&self) -> Vec<i32> {
        let (oh, ow) = self.out_hw();
        let (cig, cog, kk) = (self.ci / self.group, self.co / self.group, self.kernel);
        let mut y = Vec::with_capacity(self.co * oh * ow);
        for o in 0..self.co {
            let g = o / cog;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = self.bias[o];
                    for c in 0..cig {
                        for ky in 0..kk {
                            for kx in 0..kk {
                                let iy = (oy * self.stride + ky * self.dilation) as isize
                                    - self.pads[0] as isize;
                                let ix = (ox * self.stride + kx * self.dilation) as isize
                                    - self.pads[1] as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= self.h as isize
                                    || ix >= self.w as isize
                                {
                                    continue;
                                }
                                let xi =
                                    ((g * cig + c) * self.h + iy as usize) * self.w + ix as usize;
                                let ki = ((o * cig + c) * kk + ky) * kk + kx;
                                acc += (self.x[xi] - self.x0) * (self.k[ki] - self.k0);
                            }
                        }
                    }
                    y.push(acc);
                }
            }
        }
        y
    }

    fn tensor(&self, values: &[i32], shape: &[usize]) -> TractResult<Tensor> {
        let t = tract_ndarray::ArrayD::from_shape_vec(shape, values.to_vec())?.into_tensor();
        let dt = if self.unsigned {
            u8::datum_type()
        } else {
            i8::datum_type()
        };
        t.cast_to_dt(dt).map(|t| t.into_owned())
    }

    fn model(&self) -> TractResult<TypedModel> {
        let mut m = TypedModel::default();
        let dt = if self.unsigned {
            u8::datum_type()
        } else {
            i8::datum_type()
        };
        let x = m.add_source("x", dt.fact([1, self.ci, self.h, self.w]))?;
        let kshape = [self.co, self.ci / self.group, self.kernel, self.kernel];
        let k = m.add_const("k", self.tensor(&self.k, &kshape)?)?;
        let bias = m.add_const("bias", tensor1(&self.bias))?;
        let x0 = m.add_const("x0", tensor0(self.x0))?;
        let k0 = m.add_const("k0", tensor0(self.k0))?;
        let one = m.add_const("one", tensor0(1f32))?;
        let y0 = m.add_const("y0", tensor0(0i32))?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                kernel_shape: tvec!(self.kernel, self.kernel),
                padding: PaddingSpec::Explicit(
                    tvec!(self.pads[0], self.pads[1]),
                    tvec!(self.pads[2], self.pads[3]),
                ),
                dilations: Some(tvec!(self.dilation, self.dilation)),
                strides: Some(tvec!(self.stride, self.stride)),
                input_channels: self.ci,
                output_channels: self.co,
            },
            kernel_fmt: KernelFormat::OIHW,
            group: self.group,
            q_params: Some(i32::datum_type()),
        };
        let y = m.wire_node("conv", conv, &[x, k, bias, x0, one, k0, one, y0, one])?;
        m.select_output_outlets(&y)?;
        Ok(m)
    }

    /// Optimises under `knobs` and runs; also says how the plan makes its patches: `Im2col`
    /// (tract's eager copy), `GatheredIm2col` (all panels gathered from the padded input) or
    /// `LazyIm2col` (each panel gathered as the product visits it).
    fn run(&self, knobs: &[(&str, &str)]) -> TractResult<(Vec<i32>, String)> {
        let scope = KnobScope::new(knobs.iter().copied())?;
        let plan = scope.enter(|| self.model()?.into_optimized()?.into_runnable())?;
        let path = plan
            .model()
            .nodes()
            .iter()
            .map(|n| n.op().name().to_string())
            .find(|name| name.ends_with("Im2col"))
            .unwrap_or_default();
        let x = self.tensor(&self.x, &[1, self.ci, self.h, self.w])?;
        let y = plan.run(tvec!(x.into_tvalue()))?.remove(0).into_tensor();
        let y = y.cast_to::<i32>()?;
        Ok((y.try_as_plain_ram()?.as_slice::<i32>()?.to_vec(), path))
    }
}

fn problem() -> impl Strategy<Value = Problem> {
    let geometry = (
        1usize..=2,
        1usize..=12,
        1usize..=20,
        prop::sample::select(vec![1usize, 3, 7]),
    );
    let more = (
        1usize..=2,
        1usize..=2,
        prop::array::uniform4(0usize..=3),
        any::<bool>(),
    );
    let points = (
        prop::sample::select(vec![0i32, 0, 1, 5, -7]),
        prop::sample::select(vec![0i32, 0, 0, 3]),
    );
    (geometry, more, points, 5usize..=24, 5usize..=24)
        .prop_filter(
            "the kernel fits",
            |((_, _, _, k), (_, dil, pads, _), _, h, w)| {
                let reach = (k - 1) * dil + 1;
                h + pads[0] + pads[2] >= reach && w + pads[1] + pads[3] >= reach
            },
        )
        .prop_flat_map(
            |((group, cig, cog, kernel), (stride, dilation, pads, unsigned), (x0, k0), h, w)| {
                let (ci, co) = (group * cig, group * cog);
                let lo: i32 = if unsigned { 0 } else { -128 };
                let shift = if unsigned { 128 } else { 0 };
                (
                    prop::collection::vec(lo..lo + 256, ci * h * w),
                    prop::collection::vec(lo..lo + 256, co * cig * kernel * kernel),
                    prop::collection::vec(-1000i32..1000, co),
                )
                    .prop_map(move |(x, k, bias)| Problem {
                        ci,
                        co,
                        group,
                        h,
                        w,
                        kernel,
                        stride,
                        dilation,
                        pads,
                        unsigned,
                        x0: x0 + shift,
                        k0: k0 + shift,
                        x,
                        k,
                        bias,
                    })
            },
        )
}

const EAGER: &[(&str, &str)] = &[(
    "TRACT_QUANT_IM2COL_GATHER_MIN_BYTES",
    "18446744073709551615",
)];
const AS_PICKED: &[(&str, &str)] = &[];
const GATHERED: &[(&str, &str)] = &[("TRACT_QUANT_IM2COL_GATHER_MIN_BYTES", "0")];
const LAZY_ALWAYS: &[(&str, &str)] = &[
    ("TRACT_LAZY_IM2COL_MIN_KERNEL", "1"),
    ("TRACT_QUANT_IM2COL_GATHER_MIN_BYTES", "0"),
    ("TRACT_QUANT_LAZY_IM2COL_MIN_BYTES", "0"),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn lazy_quantized_im2col_is_bit_identical(p in problem()) {
        let want = p.brute_force();
        let (eager, eager_path) = p.run(EAGER).unwrap();
        prop_assert!(
            !matches!(eager_path.as_str(), "GatheredIm2col" | "LazyIm2col"),
            "the knob did not keep the eager im2col: {}",
            eager_path
        );
        prop_assert_eq!(&eager, &want, "eager im2col against brute force");
        // A kernel zero point needs the patch sums that only the eager im2col has; a 1x1
        // convolution may become an einsum before codegen, with no im2col at all; and a
        // depth-wise one keeps tract's own rule (no gathered im2col).
        let depth_wise = p.group > 1 && p.group == p.ci && p.group == p.co;
        let k0_zero = p.k0 == if p.unsigned { 128 } else { 0 };
        let gathers = k0_zero && p.kernel > 1 && !depth_wise;
        for (knobs, expected) in
            [(AS_PICKED, None), (GATHERED, Some("GatheredIm2col")), (LAZY_ALWAYS, Some("LazyIm2col"))]
        {
            let (got, path) = p.run(knobs).unwrap();
            prop_assert_eq!(&got, &want, "{:?} ({})", knobs, path);
            if let (true, Some(expected)) = (gathers, expected) {
                prop_assert_eq!(path.as_str(), expected, "{:?}", knobs);
            }
        }
    }
}

/// The property test again in a process per CPU-feature edit, where the CPU has the feature.
#[test]
fn every_int8_kernel() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let edits = [
        "-amx-int8",
        "-amx-int8,-avx512vnni",
        "-amx-int8,-avx512vnni,-avxvnni",
        "-amx-int8,-avx512vnni,-avxvnni,-avx512f",
    ];
    for edit in edits {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "qconv::lazy_quantized_im2col_is_bit_identical",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("TRACT_CPU_ISA", edit)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "TRACT_CPU_ISA={edit}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

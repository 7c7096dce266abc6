//! Every int8 matrix kernel tract can run on this CPU, over the matrix shapes of our encoders'
//! convolutions, on two threads, with every large allocation placed flush against an unmapped
//! guard page. A kernel that reads past the end of a packed panel dies here with SIGSEGV every
//! time, instead of now and then in `signrt run` (where it depends on where the allocator put
//! the im2col buffer). tract 0.23.9's AMX kernels did: they load B 64 K at a time from panels
//! packed only to a multiple of 4 K (`runtime/vendor/PATCHES.md`).
//!
//! `cargo run -p signrt-runtime --example int8_guard`: prints each kernel and the shapes it ran,
//! checks every product against a plain triple loop, and exits 0; a wrong product exits 1.
//! With `--time`, it times the AVX-512 tiers' kernels on each shape instead (one thread).

use anyhow::bail;
use std::alloc::{GlobalAlloc, Layout, System};
use tract_linalg::mmm::{AsInputValue, FusedSpec, MatMatMul};
use tract_linalg::WeightType;
use tract_onnx::prelude::*;

/// Allocations of at least this many bytes get their own mapping, ending at a guard page.
const GUARDED: usize = 1024;
const PAGE: usize = 4096;

/// An allocator in the manner of Electric Fence: a large block ends exactly where an
/// inaccessible page begins, so the first byte read past it faults.
struct GuardAlloc;

fn guarded_len(l: &Layout) -> (usize, usize) {
    let user = l.size().next_multiple_of(l.align().max(16));
    (user, user.next_multiple_of(PAGE) + PAGE)
}

unsafe impl GlobalAlloc for GuardAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if l.size() < GUARDED || l.align() > PAGE {
            return unsafe { System.alloc(l) };
        }
        let (user, total) = guarded_len(&l);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let base = unsafe { libc::mmap(std::ptr::null_mut(), total, prot, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return std::ptr::null_mut();
        }
        let guard = unsafe { (base as *mut u8).add(total - PAGE) };
        if unsafe { libc::mprotect(guard as *mut libc::c_void, PAGE, libc::PROT_NONE) } != 0 {
            unsafe { libc::munmap(base, total) };
            return std::ptr::null_mut();
        }
        unsafe { guard.sub(user) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if l.size() < GUARDED || l.align() > PAGE {
            return unsafe { System.dealloc(p, l) };
        }
        let (user, total) = guarded_len(&l);
        let base = unsafe { p.add(user).add(PAGE).sub(total) };
        unsafe { libc::munmap(base as *mut libc::c_void, total) };
    }
}

#[global_allocator]
static ALLOC: GuardAlloc = GuardAlloc;

/// (output channels, input channels x kernel area, output positions) of the convolutions of the
/// small backbone at 64x64 (the default model) and of ResNet-18 at 112x112 and 224x224.
const SHAPES: &[(usize, usize, usize)] = &[
    (16, 27, 1024),
    (32, 144, 256),
    (64, 288, 64),
    (128, 576, 16),
    (64, 128, 16),
    (64, 147, 3136),
    (64, 147, 12544),
    (64, 576, 784),
    (128, 1152, 49),
    (128, 64, 196),
    (512, 4608, 16),
];

fn is_i8(w: &WeightType) -> bool {
    *w == WeightType::Plain(DatumType::I8)
}

/// A deterministic i8 matrix of `rows x cols` with values over the whole range.
fn matrix(rows: usize, cols: usize, seed: usize) -> (Vec<i8>, Tensor) {
    let v: Vec<i8> = (0..rows * cols)
        .map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed) >> 7) as u8 as i8)
        .collect();
    let t = tract_ndarray::Array2::from_shape_vec((rows, cols), v.clone())
        .expect("shape")
        .into_tensor();
    (v, t)
}

/// Runs `ker` with packing `p` on one shape and checks it against a triple loop; returns the
/// median time of `runs` products (packing B included, as a convolution's im2col does).
fn check(
    ker: &dyn MatMatMul,
    p: usize,
    (m, k, n): (usize, usize, usize),
    runs: usize,
) -> TractResult<std::time::Duration> {
    let ((a_rows, a), (b_rows, b)) = (matrix(m, k, 1), matrix(k, n, 2));
    let pa = ker.packings()[p].0.prepare_one(&a, 1, 0)?;
    let mut c = Tensor::zero::<i32>(&[m, n])?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t0 = std::time::Instant::now();
        product(ker, p, &*pa, &b, &mut c)?;
        times.push(t0.elapsed());
    }
    times.sort();
    let (a, b) = (&a_rows, &b_rows);
    let c = c.to_plain_array_view::<i32>()?;
    let c = c.as_slice().expect("contiguous");
    for i in 0..m {
        for j in 0..n {
            let want: i32 = (0..k)
                .map(|t| a[i * k + t] as i32 * b[t * n + j] as i32)
                .sum();
            if c[i * n + j] != want {
                bail!(
                    "{} {m}x{k}x{n}: C[{i},{j}] = {}, want {want}",
                    ker.name(),
                    c[i * n + j]
                );
            }
        }
    }
    Ok(times[times.len() / 2])
}

/// C = A B with `ker`, B packed here.
fn product(
    ker: &dyn MatMatMul,
    p: usize,
    pa: &dyn tract_linalg::mmm::MMMInputValue,
    b: &Tensor,
    c: &mut Tensor,
) -> TractResult<()> {
    let (m, n) = (c.shape()[0], c.shape()[1]);
    let pb = ker.packings()[p].1.prepare_one(b, 0, 1)?;
    unsafe {
        let store = ker.c_view(Some(0), Some(1)).wrap(&c.view_mut());
        let ops = [
            FusedSpec::AddMatMul {
                a: AsInputValue::Borrowed(pa),
                b: AsInputValue::Borrowed(&*pb),
                packing: p,
            },
            FusedSpec::Store(store),
        ];
        ker.run(m, n, &ops)?;
    }
    Ok(())
}

/// `--time`: the median time of each int8 kernel of the AVX-512 tiers on each shape, on one
/// thread (how AMX compares with AVX-512 VNNI on our encoders' products).
fn time(kernels: &[(Box<dyn MatMatMul>, usize)]) -> TractResult<()> {
    let picked: Vec<_> = kernels
        .iter()
        .filter(|(k, _)| k.name().starts_with("avx512"))
        .collect();
    print!("{:>18}", "m x k x n");
    for (k, _) in &picked {
        print!("  {:>24}", k.name());
    }
    println!("   (median us of 31 products, B packed in each)");
    for &shape in SHAPES {
        print!("{:>18}", format!("{}x{}x{}", shape.0, shape.1, shape.2));
        for (k, p) in &picked {
            let t = check(&**k, *p, shape, 31)?;
            print!("  {:>24.1}", t.as_secs_f64() * 1e6);
        }
        println!();
    }
    Ok(())
}

fn main() -> TractResult<()> {
    let isa = tract_linalg::isa::native();
    println!("instruction set: {isa:?}");
    let kernels: Vec<(Box<dyn MatMatMul>, usize)> = tract_linalg::mmm_routines::runnable_for(&isa)
        .into_iter()
        .filter(|k| k.built() && k.internal_type() == DatumType::I32)
        .flat_map(|k| {
            let p = k
                .packings()
                .iter()
                .position(|(a, b)| is_i8(&a.precursor()) && is_i8(&b.precursor()));
            p.map(|p| (k, p))
        })
        .collect();
    if kernels.is_empty() {
        bail!("no int8 matrix kernel runs on this CPU");
    }
    for (k, _) in &kernels {
        println!("kernel {}", k.name());
    }
    if std::env::args().any(|a| a == "--time") {
        return time(&kernels);
    }
    // two threads, as two encoder threads of `signrt run` would
    std::thread::scope(|s| {
        let runs: Vec<_> = (0..2)
            .map(|t| {
                let kernels = &kernels;
                s.spawn(move || -> TractResult<()> {
                    for (ker, p) in kernels {
                        for (i, &shape) in SHAPES.iter().enumerate() {
                            if i % 2 == t {
                                check(&**ker, *p, shape, 1)?;
                            }
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        runs.into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|_| bail!("a thread panicked")))
    })?;
    println!(
        "ok: {} kernels x {} shapes, every product equal to the triple loop",
        kernels.len(),
        SHAPES.len()
    );
    Ok(())
}

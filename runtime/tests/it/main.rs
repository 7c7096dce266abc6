//! The runtime's integration tests, one binary (each test binary links tract again):
//! - `cli`: `signrt run` end to end on a toy bundle, the output schema, the library example,
//!   `signrt doctor`;
//! - `hostile`: the default model fed real clients' streams and broken input;
//! - `parsers`: property tests of the parsers of untrusted input;
//! - `isa`: the CPU dispatch reaches tract before its first probe (in a process of its own);
//! - `qconv`: the vendored tract-core's lazy im2col for quantized convolutions, against the eager
//!   one and a brute-force convolution, on every int8 kernel this CPU has;
//! - `recognizer`: the push API and endpointing on the default model;
//! - `report`: `signrt run --report` (timeline PNGs and index.html) on the shipped samples.

mod cli;
mod hostile;
mod isa;
mod parsers;
mod qconv;
mod recognizer;
mod report;

/// Heap bytes counted per thread (the parser tests' allocation bound; this
/// binary's tests run on threads of their own, so they do not see each other).
mod thread_heap {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LIVE: Cell<usize> = const { Cell::new(0) };
        static PEAK: Cell<usize> = const { Cell::new(0) };
    }

    pub struct Counting;

    // SAFETY: System's allocation, with plain thread-local counters beside it
    // (const-initialised, no destructor: usable at any point of a thread's life).
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(l) };
            if !p.is_null() {
                let now = LIVE.with(|c| c.get()) + l.size();
                LIVE.with(|c| c.set(now));
                PEAK.with(|c| c.set(c.get().max(now)));
            }
            p
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(l) };
            if !p.is_null() {
                let now = LIVE.with(|c| c.get()) + l.size();
                LIVE.with(|c| c.set(now));
                PEAK.with(|c| c.set(c.get().max(now)));
            }
            p
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            unsafe { System.dealloc(p, l) };
            LIVE.with(|c| c.set(c.get().saturating_sub(l.size())));
        }
    }

    #[global_allocator]
    static A: Counting = Counting;

    pub fn live() -> usize {
        LIVE.with(|c| c.get())
    }
    pub fn peak() -> usize {
        PEAK.with(|c| c.get())
    }
    pub fn reset_peak() {
        PEAK.with(|c| c.set(LIVE.with(|l| l.get())));
    }
}

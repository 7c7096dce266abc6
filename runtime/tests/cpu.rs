//! `cpu::prepare` reaches tract before tract probes the CPU. Its own test
//! binary: tract probes once per process, so no other test may load a graph
//! first.

use signrt_runtime::cpu::{self, Dispatch, X86Features};
use tract_linalg::isa::{native, Isa};

#[test]
fn prepare_reaches_tract_before_its_first_probe() {
    let d = cpu::prepare(true).clone();
    let has_avx2 = native().has(Isa::X86_64Avx2);
    let f = X86Features::detect();
    match &d {
        Dispatch::AvoidAvx2Int8 => {
            assert!(f.int8_needs_avx_kernel());
            assert!(!has_avx2, "tract still dispatches on AVX2: {:?}", native());
        }
        Dispatch::Default => {
            assert!(!f.int8_needs_avx_kernel() && !f.int8_would_use_amx());
            assert_eq!(has_avx2, f.avx2, "{:?}", native());
        }
        Dispatch::AvoidAmxInt8 => {
            assert!(f.int8_would_use_amx());
            assert!(
                !native().has(Isa::X86_64AmxInt8),
                "tract still dispatches on AMX: {:?}",
                native()
            );
            assert!(native().has(Isa::X86_64Avx512Vnni), "{:?}", native());
        }
        // the environment's TRACT_CPU_ISA is the user's: nothing to check
        Dispatch::User(_) | Dispatch::Config(_) => {}
    }
    // a second call returns the first decision
    assert_eq!(cpu::prepare(false), &d);
    assert_eq!(cpu::decided(), Some(&d));
    eprintln!("dispatch: {d}; tract's set: {:?}", native());
}

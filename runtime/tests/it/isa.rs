//! `isa::prepare` reaches tract before tract probes the CPU. tract probes once
//! per process and the other tests of this binary load graphs, so the check
//! runs in a process of its own: this test binary again, with only this test
//! and `SIGNRT_TEST_ISA_CHILD` set.

use signrt_runtime::isa::{self, Dispatch, X86Features};
use std::process::Command;
use tract_linalg::isa::{native, Isa};

const CHILD: &str = "SIGNRT_TEST_ISA_CHILD";
const NAME: &str = "isa::prepare_reaches_tract_before_its_first_probe";

#[test]
fn prepare_reaches_tract_before_its_first_probe() {
    if std::env::var_os(CHILD).is_none() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        eprint!("{stderr}");
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "the test in its own process: {}\n{stdout}{stderr}",
            out.status
        );
        return;
    }
    let d = isa::prepare(true).clone();
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
        Dispatch::AmxForLargeEncoder => {
            assert!(f.int8_would_use_amx());
            assert!(native().has(Isa::X86_64AmxInt8), "{:?}", native());
        }
        // the environment's TRACT_CPU_ISA is the user's: nothing to check
        Dispatch::User(_) | Dispatch::Config(_) => {}
    }
    // a second call returns the first decision
    assert_eq!(isa::prepare(false), &d);
    assert_eq!(isa::decided(), Some(&d));
    eprintln!("dispatch: {d}; tract's set: {:?}", native());
}

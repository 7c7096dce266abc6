//! Word error rate the way the field measures it: the implementation lives in
//! the runtime (`signrt_runtime::wer`) so the trainer's evaluation and
//! `signrt-quantize`'s report share one alignment; it is re-exported here.

pub use signrt_runtime::wer::*;

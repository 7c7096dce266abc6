//! Helpers shared by the fused CPU ops ([`crate::ops::batchnorm`], [`crate::ops::lstm`]).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result};

/// The f32 data of a contiguous CPU storage, or an error naming the op and the operand.
pub(crate) fn f32_slice<'a>(
    op: &str,
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(d) = s else {
        candle_core::bail!("{op}: {what} must be f32, got {:?}", s.dtype());
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&d[a..b]),
        None => candle_core::bail!("{op}: {what} must be contiguous"),
    }
}

/// The error for a poisoned lock on an op's saved state.
pub(crate) fn poisoned<T>(op: &'static str) -> impl Fn(T) -> candle_core::Error {
    move |_| candle_core::Error::Msg(format!("{op}: saved-state lock poisoned"))
}

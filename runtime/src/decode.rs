//! CTC decoding: greedy and prefix beam search over per-frame log-probabilities.
//!
//! Not implemented yet.

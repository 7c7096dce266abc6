//! The quantizer's integration tests, one binary (each test binary links tract again):
//! - `bundle`: bundle in, bundle out; the quantised bundle streams in the runtime; bad input;
//! - `rewrite`: the rewrite against independent oracles (integer arithmetic, float originals).

mod bundle;
mod rewrite;

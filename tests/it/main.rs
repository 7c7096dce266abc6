//! Integration tests across the signrt crates: synth -> train -> export -> quantize -> run, and
//! the shipped default model. One test binary (each binary links tract and Candle again).

mod common;
mod e2e;
mod quantize;
mod shipped;

//! Writes a toy bundle and a matching sample clip, for trying the runtime (and
//! its cross-compiled build) before a trained model exists:
//! `cargo run -p signrt-runtime --example toy_bundle -- OUT_DIR`
//! writes OUT_DIR/bundle/ and OUT_DIR/sample.y4m.

use signrt_runtime::y4m::Y4mWriter;
use signrt_test_support::toy::{write_toy_bundle, ToySpec};

fn main() -> anyhow::Result<()> {
    let out = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: toy_bundle OUT_DIR"))?;
    let out = std::path::Path::new(&out);
    write_toy_bundle(&out.join("bundle"), ToySpec::default())?;
    let (w, h) = (32, 24);
    let mut y = Y4mWriter::new(Vec::new(), w, h, 25)?;
    for i in 0..60usize {
        let frame: Vec<u8> = (0..w * h)
            .flat_map(|p| {
                let (x, yy) = (p % w, p / w);
                let g = (((i / 4) * 41 + x * 7 + yy * 3 + (i % 5) * x) % 256) as u8;
                [g, g / 2, 255 - g]
            })
            .collect();
        y.write_rgb(&frame)?;
    }
    signrt_runtime::fsutil::write_atomic(&out.join("sample.y4m"), &y.finish()?)?;
    println!(
        "wrote {} and {}",
        out.join("bundle").display(),
        out.join("sample.y4m").display()
    );
    Ok(())
}

//! Runs one ONNX graph in tract on raw little-endian f32 input and writes the
//! first output the same way, for cross-checking against onnxruntime:
//! `run_onnx MODEL.onnx IN.f32 D0,D1,... OUT.f32`.

use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() == 4,
        "usage: run_onnx MODEL.onnx IN.f32 D0,D1,... OUT.f32"
    );
    let shape: Vec<usize> = a[2]
        .split(',')
        .map(|d| d.parse())
        .collect::<Result<_, _>>()?;
    let bytes = std::fs::read(&a[1])?;
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let plan = tract_onnx::onnx()
        .model_for_path(&a[0])?
        .into_optimized()?
        .into_runnable()?;
    let out = plan.run(tvec!(Tensor::from_shape(&shape, &data)?.into()))?;
    let v = out[0].to_plain_array_view::<f32>()?;
    let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&a[3], raw)?;
    println!("{:?}", v.shape());
    Ok(())
}

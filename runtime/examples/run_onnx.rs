//! Runs one ONNX graph in tract on raw little-endian f32 inputs and writes the
//! first output the same way, for cross-checking against onnxruntime:
//! `run_onnx MODEL.onnx IN.f32 D0,D1,... [IN2.f32 D0,D1,... ...] OUT.f32`.

use tract_onnx::prelude::*;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(
        a.len() >= 4 && a.len() % 2 == 0,
        "usage: run_onnx MODEL.onnx IN.f32 D0,D1,... [IN2.f32 D0,D1,... ...] OUT.f32"
    );
    let mut inputs = TVec::new();
    for pair in a[1..a.len() - 1].chunks(2) {
        let shape: Vec<usize> = pair[1]
            .split(',')
            .map(|d| d.parse())
            .collect::<Result<_, _>>()?;
        let bytes = std::fs::read(&pair[0])?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        inputs.push(Tensor::from_shape(&shape, &data)?.into());
    }
    let plan = tract_onnx::onnx()
        .model_for_path(&a[0])?
        .into_optimized()?
        .into_runnable()?;
    let out = plan.run(inputs)?;
    let v = out[0].to_plain_array_view::<f32>()?;
    let raw: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&a[a.len() - 1], raw)?;
    println!("{:?}", v.shape());
    Ok(())
}

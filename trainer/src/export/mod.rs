//! ONNX export: the trained model as a streaming model bundle
//! (`encoder.onnx`, `scorer.onnx`, `temporal.onnx`, `vocab.txt`, `manifest.json`).

pub mod layers;

use crate::model::visual::{BackboneNet, ConvBn};
use crate::model::FourStage;
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use layers::{Array, BatchNorm as BnParams};
use signrt_runtime::bundle::{InputSpec, Manifest, ModelInfo, StreamSpec};
use signrt_runtime::onnx::{write_model, Attr, Dim, GraphBuilder};
use signrt_runtime::Vocab;
use std::collections::BTreeMap;
use std::path::Path;

fn array(t: &Tensor) -> Result<Array> {
    Ok(Array::new(
        t.dims(),
        t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
    ))
}

fn vec1(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A conv followed by its (eval-mode) BatchNorm, folded into one ONNX Conv.
fn conv_bn(g: &mut GraphBuilder, name: &str, x: &str, cb: &ConvBn) -> Result<String> {
    let w = array(cb.conv.weight())?;
    let b = cb.conv.bias().map(vec1).transpose()?;
    let bn = BnParams {
        weight: vec1(
            cb.bn
                .weight_and_bias()
                .map(|(w, _)| w)
                .context("BatchNorm without affine parameters")?,
        )?,
        bias: vec1(
            cb.bn
                .weight_and_bias()
                .map(|(_, b)| b)
                .context("BatchNorm without affine parameters")?,
        )?,
        running_mean: vec1(cb.bn.running_mean())?,
        running_var: vec1(cb.bn.running_var())?,
        eps: cb.bn.eps() as f32,
    };
    let (wf, bf) = layers::fold_bn(&w, b.as_deref(), &bn);
    let cfg = cb.conv.config();
    Ok(layers::conv(g, name, x, &wf, &bf, cfg.stride, cfg.padding))
}

/// The encoder graph: frames (N,3,S,S) -> features (N,D,G,G).
pub fn encoder_graph(model: &FourStage, size: usize) -> Result<GraphBuilder> {
    let mut g = GraphBuilder::new("signrt_encoder");
    let s = size as i64;
    let mut h = g.input("frames", &[Dim::from("N"), 3.into(), s.into(), s.into()]);
    match &model.visual.net {
        BackboneNet::Small(stages) => {
            for (i, st) in stages.iter().enumerate() {
                let c = conv_bn(&mut g, &format!("s{i}"), &h, st)?;
                h = g.op("Relu", &[&c], vec![]);
            }
        }
        BackboneNet::Resnet { stem, layers } => {
            let c = conv_bn(&mut g, "stem", &h, stem)?;
            let r = g.op("Relu", &[&c], vec![]);
            h = g.op(
                "MaxPool",
                &[&r],
                vec![
                    ("kernel_shape", Attr::Ints(vec![3, 3])),
                    ("strides", Attr::Ints(vec![2, 2])),
                    ("pads", Attr::Ints(vec![1, 1, 1, 1])),
                ],
            );
            for (li, blocks) in layers.iter().enumerate() {
                for (bi, blk) in blocks.iter().enumerate() {
                    let mut y = h.clone();
                    let n = blk.convs.len();
                    for (ci, cb) in blk.convs.iter().enumerate() {
                        y = conv_bn(
                            &mut g,
                            &format!("layer{}.{bi}.conv{}", li + 1, ci + 1),
                            &y,
                            cb,
                        )?;
                        if ci + 1 < n {
                            y = g.op("Relu", &[&y], vec![]);
                        }
                    }
                    let id = match &blk.downsample {
                        Some(d) => {
                            conv_bn(&mut g, &format!("layer{}.{bi}.downsample", li + 1), &h, d)?
                        }
                        None => h.clone(),
                    };
                    let sum = g.op("Add", &[&y, &id], vec![]);
                    h = g.op("Relu", &[&sum], vec![]);
                }
            }
        }
    }
    // the backbone's output size, measured on the candle model
    let probe = Tensor::zeros((1, 3, size, size), DType::F32, &Device::Cpu)?;
    let (bh, bw) = backbone_hw(model, &probe)?;
    let grid = model.grid;
    let pooled = if (bh, bw) == (grid, grid) {
        h
    } else {
        let ph = crate::ops::pooling::pooling_matrix(bh, grid, &Device::Cpu)?;
        let pw = crate::ops::pooling::pooling_matrix(bw, grid, &Device::Cpu)?
            .t()?
            .contiguous()?;
        let phn = g.constant("pool.h", &[grid as i64, bh as i64], &vec1(&ph)?);
        let pwn = g.constant("pool.w_t", &[bw as i64, grid as i64], &vec1(&pw)?);
        let a = g.op("MatMul", &[&phn, &h], vec![]);
        g.op("MatMul", &[&a, &pwn], vec![])
    };
    let c = conv_bn(&mut g, "proj", &pooled, &model.visual.proj)?;
    g.node("Relu", &[&c], &["features"], vec![]);
    let (d, gg) = (model.feature_dim as i64, grid as i64);
    g.output(
        "features",
        &[Dim::from("N"), d.into(), gg.into(), gg.into()],
    );
    Ok(g)
}

fn backbone_hw(model: &FourStage, x: &Tensor) -> Result<(usize, usize)> {
    let mut h = x.clone();
    match &model.visual.net {
        BackboneNet::Small(stages) => {
            for s in stages {
                h = s.conv.forward_cb(&h)?;
            }
        }
        BackboneNet::Resnet { stem, layers } => {
            h = crate::ops::pooling::max_pool_3x3_s2(&stem.conv.forward_cb(&h)?)?;
            for l in layers {
                for b in l {
                    let mut y = h.clone();
                    for c in &b.convs {
                        y = c.conv.forward_cb(&y)?;
                    }
                    h = y;
                }
            }
        }
    }
    let (_, _, a, b) = h.dims4()?;
    Ok((a, b))
}

trait ForwardCb {
    fn forward_cb(&self, x: &Tensor) -> candle_core::Result<Tensor>;
}

impl ForwardCb for candle_nn::Conv2d {
    fn forward_cb(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_core::Module::forward(self, x)
    }
}

/// The scorer graph: features (1,T,D,G,G) and the ConvGRU state h0 (1,H,G,G)
/// -> the logits of the T-1 frame differences (1,T-1) and the state after them
/// (1,H,G,G). The softmax over a window's logits runs in the runtime, which
/// carries the state across the stream (every difference goes through the
/// ConvGRU once); from h0 = 0 over a whole clip it is the trainer's scorer.
pub fn scorer_graph(model: &FourStage) -> Result<GraphBuilder> {
    let k = &model.keyframe;
    let (d, gg) = (model.feature_dim as i64, model.grid as i64);
    let hd = k.gru.hidden as i64;
    let mut g = GraphBuilder::new("signrt_scorer");
    let f = g.input(
        "features",
        &[1.into(), Dim::from("T"), d.into(), gg.into(), gg.into()],
    );
    let h0 = g.input("h0", &[1.into(), hd.into(), gg.into(), gg.into()]);
    let m = g.time_differences(&f);
    let conv = |c: &candle_nn::Conv2d| -> Result<(Array, Vec<f32>)> {
        Ok((
            array(c.weight())?,
            c.bias().map(vec1).transpose()?.unwrap_or_default(),
        ))
    };
    let gru = layers::ConvGru {
        reset: conv(&k.gru.reset)?,
        update: conv(&k.gru.update)?,
        new: conv(&k.gru.new)?,
        hidden: k.gru.hidden,
    };
    let (last, hs) =
        layers::conv_gru_scan(&mut g, "gru", &m, &h0, &gru, model.feature_dim, model.grid);
    let pooled = g.op(
        "ReduceMean",
        &[&hs],
        vec![("axes", Attr::Ints(vec![3, 4])), ("keepdims", Attr::Int(0))],
    );
    let w = array(k.score.weight())?;
    let b = k
        .score
        .bias()
        .map(vec1)
        .transpose()?
        .unwrap_or_else(|| vec![0.0]);
    let logit = layers::linear(&mut g, "score", &pooled, &w, &b);
    let axes = g.constant_i64("c.axis2", &[1], &[2]);
    g.node("Squeeze", &[&logit, &axes], &["logits"], vec![]);
    g.node("Identity", &[&last], &["h_last"], vec![]);
    g.output("logits", &[1.into(), Dim::from("Tm1")]);
    g.output("h_last", &[1.into(), hd.into(), gg.into(), gg.into()]);
    Ok(g)
}

/// The temporal graph: keyframe features (1,K,D·G·G) -> CTC log-probs (1,K,V).
pub fn temporal_graph(model: &FourStage) -> Result<GraphBuilder> {
    let t = &model.temporal;
    let din = (model.feature_dim * model.grid * model.grid) as i64;
    let mut g = GraphBuilder::new("signrt_temporal");
    let mut h = g.input("keyframes", &[1.into(), Dim::from("K"), din.into()]);
    let dir = |d: &crate::model::temporal::LstmDir| -> Result<layers::LstmDirection> {
        Ok(layers::LstmDirection {
            w_ih: array(&d.w_ih)?,
            w_hh: array(&d.w_hh)?,
            b_ih: vec1(&d.b_ih)?,
            b_hh: vec1(&d.b_hh)?,
        })
    };
    for (i, (f, b)) in t.layers.iter().enumerate() {
        h = layers::bilstm_layer(&mut g, &format!("lstm{i}"), &h, &dir(f)?, &dir(b)?);
    }
    let (w, b) = model.ctc.weight_bias();
    let b = match b {
        Some(b) => vec1(b)?,
        None => vec![0.0; model.vocab_size],
    };
    let logits = layers::linear(&mut g, "ctc", &h, &array(w)?, &b);
    g.node(
        "LogSoftmax",
        &[&logits],
        &["log_probs"],
        vec![("axis", Attr::Int(2))],
    );
    g.output(
        "log_probs",
        &[1.into(), Dim::from("K"), (model.vocab_size as i64).into()],
    );
    Ok(g)
}

/// Streaming geometry written into the manifest.
#[derive(Debug, Clone, Copy)]
pub struct StreamGeometry {
    pub window: usize,
    pub stride: usize,
    pub fps: f32,
}

/// Writes a sealed float bundle for `model` into `dir`.
pub fn write_bundle(
    model: &FourStage,
    cfg: &crate::config::Config,
    vocab: &Vocab,
    dir: &Path,
    geometry: StreamGeometry,
) -> Result<Manifest> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let producer = concat!("signrt-train ", env!("CARGO_PKG_VERSION"));
    write_model(
        &encoder_graph(model, cfg.model.input_size)?.into_model(producer),
        &dir.join("encoder.onnx"),
    )?;
    write_model(
        &scorer_graph(model)?.into_model(producer),
        &dir.join("scorer.onnx"),
    )?;
    write_model(
        &temporal_graph(model)?.into_model(producer),
        &dir.join("temporal.onnx"),
    )?;
    vocab.save(&dir.join("vocab.txt"))?;
    let mut extra = BTreeMap::new();
    extra.insert("backbone".into(), serde_json::json!(cfg.model.backbone));
    extra.insert(
        "conv_gru_hidden".into(),
        serde_json::json!(cfg.model.hidden_dim),
    );
    extra.insert(
        "lstm_hidden".into(),
        serde_json::json!(cfg.model.lstm_hidden),
    );
    extra.insert(
        "lstm_layers".into(),
        serde_json::json!(cfg.model.lstm_layers),
    );
    extra.insert("selection".into(), serde_json::json!(cfg.model.selection));
    let mut m = Manifest::new(
        producer,
        ModelInfo {
            feature_dim: model.feature_dim,
            grid: model.grid,
            vocab_size: vocab.len(),
            scorer_hidden: model.keyframe.gru.hidden,
            extra,
        },
        InputSpec {
            height: cfg.model.input_size,
            width: cfg.model.input_size,
            mean: crate::train::MEAN,
            std: crate::train::STD,
        },
        StreamSpec {
            window: geometry.window,
            stride: geometry.stride,
            fps: geometry.fps,
        },
        cfg.model.keyframe_ratio as f32,
        cfg.model.score_scaling && cfg.model.selection == crate::config::Selection::Learned,
    );
    m.seal_and_write(dir)?;
    Ok(m)
}

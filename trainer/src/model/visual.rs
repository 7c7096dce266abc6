//! Stage 1: visual feature extraction.
//!
//! A backbone (ResNet-18/34/50 with torchvision's layer layout and parameter
//! names, or a small CPU backbone), then AdaptiveAvgPool2d(G,G) → Conv1x1(C→D)
//! → BatchNorm → ReLU, giving F (N,D,G,G) per frame; the model runs B·T frames
//! at once and reshapes to (B,T,D,G,G). D = 512 and G = 4 are the seed's
//! defaults. (The seed's `VisualEncoder(feature_dim=1024)` argument is never
//! used by its own code; its projection is 2048→512 for ResNet-50.)
//!
//! BatchNorm trains for real: batch statistics and running-statistics updates
//! in training mode (momentum 0.1, unbiased variance, as PyTorch), running
//! statistics in evaluation. The running statistics are VarMap variables, so
//! they are saved in checkpoints.
//!
//! Pretrained weights: a torchvision or timm ResNet `state_dict` saved as
//! safetensors loads with [`load_backbone_weights`] (local files only).

use crate::ops::pooling::{adaptive_avg_pool, max_pool_3x3_s2};
use candle_core::{Result, Tensor};
use candle_nn::{BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, VarBuilder, VarMap};
use std::path::{Path, PathBuf};

/// The backbone, `model.backbone` in the config: `small` (fast CPU
/// backbone), `resnet18`, `resnet34` or `resnet50`. Its spelling (`as_str`,
/// `Display`, `FromStr`) is with the other config choices in `config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    Small,
    Resnet18,
    Resnet34,
    Resnet50,
}

#[derive(Debug, Clone)]
pub struct VisualConfig {
    pub backbone: Backbone,
    pub feature_dim: usize,
    pub grid: usize,
    /// Output channels of the small backbone's stages (see [`SMALL_CHANNELS`]).
    pub small_channels: Vec<usize>,
}

/// Default channels of the small backbone's four stages.
pub const SMALL_CHANNELS: [usize; 4] = [16, 32, 64, 128];

fn conv(
    i: usize,
    o: usize,
    k: usize,
    stride: usize,
    pad: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        stride,
        padding: pad,
        ..Default::default()
    };
    if bias {
        candle_nn::conv2d(i, o, k, cfg, vb)
    } else {
        candle_nn::conv2d_no_bias(i, o, k, cfg, vb)
    }
}

fn bn(c: usize, vb: VarBuilder) -> Result<BatchNorm> {
    candle_nn::batch_norm(
        c,
        BatchNormConfig {
            eps: 1e-5,
            ..Default::default()
        },
        vb,
    )
}

/// Conv + BN (+ ReLU) as used everywhere here.
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
}

impl ConvBn {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        crate::ops::batchnorm::forward_t(
            &self.bn,
            &crate::ops::conv::forward(&self.conv, x)?,
            train,
        )
    }
}

/// torchvision's BasicBlock (expansion 1) or Bottleneck (expansion 4).
pub struct Block {
    pub convs: Vec<ConvBn>,
    pub downsample: Option<ConvBn>,
}

impl Block {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        let n = self.convs.len();
        for (i, c) in self.convs.iter().enumerate() {
            h = c.forward_t(&h, train)?;
            if i + 1 < n {
                h = h.relu()?;
            }
        }
        let id = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.clone(),
        };
        (h + id)?.relu()
    }
}

fn block(
    vb: VarBuilder,
    inp: usize,
    planes: usize,
    stride: usize,
    bottleneck: bool,
) -> Result<(Block, usize)> {
    let out = if bottleneck { planes * 4 } else { planes };
    let convs = if bottleneck {
        vec![
            ConvBn {
                conv: conv(inp, planes, 1, 1, 0, false, vb.pp("conv1"))?,
                bn: bn(planes, vb.pp("bn1"))?,
            },
            ConvBn {
                conv: conv(planes, planes, 3, stride, 1, false, vb.pp("conv2"))?,
                bn: bn(planes, vb.pp("bn2"))?,
            },
            ConvBn {
                conv: conv(planes, out, 1, 1, 0, false, vb.pp("conv3"))?,
                bn: bn(out, vb.pp("bn3"))?,
            },
        ]
    } else {
        vec![
            ConvBn {
                conv: conv(inp, planes, 3, stride, 1, false, vb.pp("conv1"))?,
                bn: bn(planes, vb.pp("bn1"))?,
            },
            ConvBn {
                conv: conv(planes, planes, 3, 1, 1, false, vb.pp("conv2"))?,
                bn: bn(planes, vb.pp("bn2"))?,
            },
        ]
    };
    let downsample = if stride != 1 || inp != out {
        let d = vb.pp("downsample");
        Some(ConvBn {
            conv: conv(inp, out, 1, stride, 0, false, d.pp("0"))?,
            bn: bn(out, d.pp("1"))?,
        })
    } else {
        None
    };
    Ok((Block { convs, downsample }, out))
}

/// The backbone's layers.
pub enum BackboneNet {
    Small(Vec<ConvBn>),
    Resnet {
        stem: ConvBn,
        layers: Vec<Vec<Block>>,
    },
}

pub struct VisualEncoder {
    pub net: BackboneNet,
    pub proj: ConvBn,
    pub cfg: VisualConfig,
    pub out_channels: usize,
}

impl VisualEncoder {
    pub fn new(cfg: VisualConfig, vb: VarBuilder) -> Result<Self> {
        let b = vb.pp("backbone");
        let (net, c) = match cfg.backbone {
            Backbone::Small => {
                let mut stages = Vec::new();
                let mut inp = 3;
                for (i, &o) in cfg.small_channels.iter().enumerate() {
                    let s = b.pp(format!("s{i}"));
                    stages.push(ConvBn {
                        conv: conv(inp, o, 3, 2, 1, false, s.pp("conv"))?,
                        bn: bn(o, s.pp("bn"))?,
                    });
                    inp = o;
                }
                (BackboneNet::Small(stages), inp)
            }
            _ => {
                let (counts, bottleneck) = match cfg.backbone {
                    Backbone::Resnet18 => ([2, 2, 2, 2], false),
                    Backbone::Resnet34 => ([3, 4, 6, 3], false),
                    _ => ([3, 4, 6, 3], true),
                };
                let stem = ConvBn {
                    conv: conv(3, 64, 7, 2, 3, false, b.pp("conv1"))?,
                    bn: bn(64, b.pp("bn1"))?,
                };
                let mut inp = 64;
                let mut layers = Vec::new();
                for (li, (&n, planes)) in counts.iter().zip([64, 128, 256, 512]).enumerate() {
                    let lv = b.pp(format!("layer{}", li + 1));
                    let mut blocks = Vec::new();
                    for bi in 0..n {
                        let stride = if bi == 0 && li > 0 { 2 } else { 1 };
                        let (blk, out) =
                            block(lv.pp(bi.to_string()), inp, planes, stride, bottleneck)?;
                        blocks.push(blk);
                        inp = out;
                    }
                    layers.push(blocks);
                }
                (BackboneNet::Resnet { stem, layers }, inp)
            }
        };
        let p = vb.pp("proj");
        let proj = ConvBn {
            conv: conv(c, cfg.feature_dim, 1, 1, 0, true, p.pp("conv"))?,
            bn: bn(cfg.feature_dim, p.pp("bn"))?,
        };
        Ok(Self {
            net,
            proj,
            cfg,
            out_channels: c,
        })
    }

    /// The backbone's output channels (C before the projection).
    pub fn backbone_out_channels(&self) -> usize {
        self.out_channels
    }

    /// Frames (N,3,H,W) -> F (N, feature_dim, grid, grid).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = x.clone();
        match &self.net {
            BackboneNet::Small(stages) => {
                for s in stages {
                    h = s.forward_t(&h, train)?.relu()?;
                }
            }
            BackboneNet::Resnet { stem, layers } => {
                h = max_pool_3x3_s2(&stem.forward_t(&h, train)?.relu()?)?;
                for l in layers {
                    for b in l {
                        h = b.forward_t(&h, train)?;
                    }
                }
            }
        }
        let h = adaptive_avg_pool(&h, self.cfg.grid)?;
        self.proj.forward_t(&h, train)?.relu()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VisualError {
    #[error("{path}: cannot read weights: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: tensor `{name}` has shape {got:?}, the model's `{var}` has {want:?}")]
    Shape {
        path: PathBuf,
        name: String,
        var: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error("{path}: the model's backbone parameters {missing:?} are not in the file (is it a checkpoint of the same ResNet depth?)")]
    Missing { path: PathBuf, missing: Vec<String> },
}

/// What [`load_backbone_weights`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    pub used: Vec<String>,
    /// File tensors with no model parameter (classifier `fc.*` and `num_batches_tracked` are ignored silently).
    pub unexpected: Vec<String>,
}

/// Loads a torchvision/timm-named ResNet state dict (safetensors) into the
/// variables under `prefix` (e.g. `visual.backbone.`). Every backbone
/// parameter must be present with the right shape.
pub fn load_backbone_weights(
    varmap: &VarMap,
    prefix: &str,
    file: &Path,
) -> std::result::Result<LoadReport, VisualError> {
    let read = |message: String| VisualError::Read {
        path: file.into(),
        message,
    };
    let tensors = candle_core::safetensors::load(file, &candle_core::Device::Cpu)
        .map_err(|e| read(e.to_string()))?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| read("varmap lock poisoned".into()))?;
    let mut report = LoadReport::default();
    let mut names: Vec<&String> = tensors.keys().collect();
    names.sort();
    for name in names {
        if name.starts_with("fc.") || name.ends_with("num_batches_tracked") {
            continue;
        }
        let key = format!("{prefix}{name}");
        let Some(var) = data.get(&key) else {
            report.unexpected.push(name.clone());
            continue;
        };
        let t = &tensors[name];
        if t.dims() != var.dims() {
            return Err(VisualError::Shape {
                path: file.into(),
                name: name.clone(),
                var: key,
                got: t.dims().to_vec(),
                want: var.dims().to_vec(),
            });
        }
        let t = t
            .to_dtype(var.dtype())
            .and_then(|t| t.to_device(var.device()))
            .map_err(|e| read(e.to_string()))?;
        var.set(&t).map_err(|e| read(e.to_string()))?;
        report.used.push(name.clone());
    }
    let mut missing: Vec<String> = data
        .keys()
        .filter(|k| k.starts_with(prefix))
        .map(|k| k[prefix.len()..].to_string())
        .filter(|k| !report.used.contains(k))
        .collect();
    if !missing.is_empty() {
        missing.sort();
        return Err(VisualError::Missing {
            path: file.into(),
            missing,
        });
    }
    Ok(report)
}

//! Stage 1: backbone shapes and parameter counts (torchvision's published
//! numbers as the oracle), loading a torchvision-named ResNet-18 file written
//! here, and BatchNorm's training and evaluation statistics.

use candle_core::{DType, Device, Module, ModuleT, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use signrt_trainer::model::visual::{
    load_backbone_weights, Backbone, BackboneNet, VisualConfig, VisualEncoder,
};
use std::collections::HashMap;

fn encoder(backbone: Backbone, d: usize) -> (VarMap, VisualEncoder) {
    encoder_with(
        backbone,
        d,
        signrt_trainer::model::visual::SMALL_CHANNELS.to_vec(),
    )
}

fn encoder_with(
    backbone: Backbone,
    d: usize,
    small_channels: Vec<usize>,
) -> (VarMap, VisualEncoder) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let e = VisualEncoder::new(
        VisualConfig {
            backbone,
            feature_dim: d,
            grid: 4,
            small_channels,
        },
        vb.pp("visual"),
    )
    .unwrap();
    signrt_trainer::model::init::reinit(&vm, 0).unwrap();
    (vm, e)
}

fn backbone_params(vm: &VarMap) -> usize {
    vm.data()
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("visual.backbone.") && !k.contains("running_"))
        .map(|(_, v)| v.elem_count())
        .sum()
}

#[test]
fn shapes_and_torchvision_parameter_counts() {
    // torchvision's totals minus the 1000-way classifier (512·1000+1000, 2048·1000+1000)
    for (b, want) in [
        (Backbone::Resnet18, 11_689_512 - 513_000),
        (Backbone::Resnet34, 21_797_672 - 513_000),
        (Backbone::Resnet50, 25_557_032 - 2_049_000),
    ] {
        let (vm, e) = encoder(b, 8);
        assert_eq!(backbone_params(&vm), want, "{b:?}");
        if b == Backbone::Resnet18 {
            let x = Tensor::zeros((1, 3, 96, 96), DType::F32, &Device::Cpu).unwrap();
            assert_eq!(e.forward_t(&x, false).unwrap().dims(), &[1, 8, 4, 4]);
        }
        if b == Backbone::Resnet50 {
            assert_eq!(e.backbone_out_channels(), 2048);
        }
    }
    let (vm, e) = encoder(Backbone::Small, 16);
    let x = Tensor::zeros((3, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(e.forward_t(&x, true).unwrap().dims(), &[3, 16, 4, 4]);
    // an odd input size still pools to the grid
    let x = Tensor::zeros((1, 3, 50, 70), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(e.forward_t(&x, false).unwrap().dims(), &[1, 16, 4, 4]);
    // the default small backbone, counted by hand: 3×3 convs without bias,
    // each followed by a BatchNorm (weight and bias)
    let count = |ch: &[usize]| {
        let mut inp = 3;
        let mut n = 0;
        for &o in ch {
            n += inp * o * 9 + 2 * o;
            inp = o;
        }
        n
    };
    assert_eq!(backbone_params(&vm), count(&[16, 32, 64, 128]));
    // model.small_channels: two stages of 8 and 12 channels
    let (vm, e) = encoder_with(Backbone::Small, 16, vec![8, 12]);
    assert_eq!(backbone_params(&vm), 3 * 8 * 9 + 16 + 8 * 12 * 9 + 24);
    assert_eq!(e.backbone_out_channels(), 12);
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(e.forward_t(&x, true).unwrap().dims(), &[2, 16, 4, 4]);
}

/// The torchvision ResNet-18 state dict, names and shapes written out here
/// from the published architecture (independently of the model code).
fn torchvision_resnet18() -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = vec![("conv1.weight".into(), vec![64, 3, 7, 7])];
    let bn = |v: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            v.push((format!("{p}.{s}"), vec![c]));
        }
        v.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    bn(&mut v, "bn1", 64);
    let mut inp = 64;
    for (l, planes) in [64usize, 128, 256, 512].into_iter().enumerate() {
        for b in 0..2 {
            let p = format!("layer{}.{b}", l + 1);
            let cin = if b == 0 { inp } else { planes };
            v.push((format!("{p}.conv1.weight"), vec![planes, cin, 3, 3]));
            bn(&mut v, &format!("{p}.bn1"), planes);
            v.push((format!("{p}.conv2.weight"), vec![planes, planes, 3, 3]));
            bn(&mut v, &format!("{p}.bn2"), planes);
            if b == 0 && l > 0 {
                v.push((format!("{p}.downsample.0.weight"), vec![planes, inp, 1, 1]));
                bn(&mut v, &format!("{p}.downsample.1"), planes);
            }
        }
        inp = planes;
    }
    v.push(("fc.weight".into(), vec![1000, 512]));
    v.push(("fc.bias".into(), vec![1000]));
    v
}

#[test]
fn loads_a_torchvision_named_resnet18_with_every_tensor_used() {
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("resnet18.safetensors");
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (i, (name, shape)) in torchvision_resnet18().into_iter().enumerate() {
        let t = if name.ends_with("num_batches_tracked") {
            Tensor::new(7i64, &Device::Cpu).unwrap()
        } else {
            let n: usize = shape.iter().product();
            Tensor::from_vec(
                signrt_test_support::toy::toy_weights(n, i as u64 + 1),
                shape,
                &Device::Cpu,
            )
            .unwrap()
        };
        tensors.insert(name, t);
    }
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let (vm, e) = encoder(Backbone::Resnet18, 8);
    let r = load_backbone_weights(&vm, "visual.backbone.", &file).unwrap();
    let expected = tensors
        .keys()
        .filter(|k| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(r.used.len(), expected);
    assert!(r.unexpected.is_empty(), "{:?}", r.unexpected);
    // the values are really in the model
    let BackboneNet::Resnet { layers, .. } = &e.net else {
        panic!()
    };
    let w = layers[2][0].convs[1].conv.weight();
    let want = tensors["layer3.0.conv2.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    // a wrong shape is refused, naming the tensor
    let mut bad = tensors.clone();
    bad.insert(
        "layer1.0.conv1.weight".into(),
        Tensor::zeros((64, 64, 1, 1), DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&bad, &file).unwrap();
    let e = load_backbone_weights(&vm, "visual.backbone.", &file)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer1.0.conv1.weight") && e.contains("[64, 64, 1, 1]"),
        "{e}"
    );
    // a file of another depth misses parameters
    let mut small = tensors.clone();
    small.retain(|k, _| !k.starts_with("layer4"));
    candle_core::safetensors::save(&small, &file).unwrap();
    let e = load_backbone_weights(&vm, "visual.backbone.", &file)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer4.0.conv1.weight"), "{e}");
}

#[test]
fn batchnorm_trains_with_batch_statistics_and_evaluates_with_running_ones() {
    let (vm, e) = encoder(Backbone::Small, 6);
    let x = Tensor::from_vec(
        signrt_test_support::toy::toy_weights(2 * 3 * 32 * 32, 4),
        (2, 3, 32, 32),
        &Device::Cpu,
    )
    .unwrap();
    // the projection's input, computed stage by stage
    let BackboneNet::Small(stages) = &e.net else {
        panic!()
    };
    let mut h = x.clone();
    for s in stages {
        h =
            s.bn.forward_t(&s.conv.forward(&h).unwrap(), false)
                .unwrap()
                .relu()
                .unwrap();
    }
    let z = e
        .proj
        .conv
        .forward(&signrt_trainer::ops::pooling::adaptive_avg_pool(&h, 4).unwrap())
        .unwrap();
    let zc = z.transpose(0, 1).unwrap().flatten_from(1).unwrap(); // (C, N·G·G)
    let mean = zc.mean(D::Minus1).unwrap().to_vec1::<f32>().unwrap();
    let n = zc.dim(1).unwrap() as f32;
    let var_b: Vec<f32> = zc
        .broadcast_sub(&zc.mean_keepdim(D::Minus1).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean(D::Minus1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let rm0 = e.proj.bn.running_mean().to_vec1::<f32>().unwrap();
    let rv0 = e.proj.bn.running_var().to_vec1::<f32>().unwrap();
    let y = e.proj.bn.forward_t(&z, true).unwrap();
    // batch statistics normalise (weight 1, bias 0 after init)
    let yc = y.transpose(0, 1).unwrap().flatten_from(1).unwrap();
    for (c, m) in yc
        .mean(D::Minus1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert!(m.abs() < 1e-4, "channel {c} mean {m}");
    }
    // running statistics follow PyTorch: momentum 0.1, unbiased variance
    let key = |s: &str| {
        vm.data().lock().unwrap()[&format!("visual.proj.bn.{s}")]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap()
    };
    let (rm, rv) = (key("running_mean"), key("running_var"));
    for c in 0..6 {
        assert!((rm[c] - (0.9 * rm0[c] + 0.1 * mean[c])).abs() < 1e-5);
        let unbiased = var_b[c] * n / (n - 1.0);
        assert!(
            (rv[c] - (0.9 * rv0[c] + 0.1 * unbiased)).abs() < 1e-4,
            "var {c}"
        );
    }
    // evaluation uses the running statistics
    let ye = e.proj.bn.forward_t(&z, false).unwrap();
    let at = |t: &Tensor, c: usize| {
        t.get(1)
            .unwrap()
            .get(c)
            .unwrap()
            .get(2)
            .unwrap()
            .get(3)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    for c in 0..6 {
        let want = (at(&z, c) - rm[c]) / (rv[c] + 1e-5).sqrt();
        assert!((at(&ye, c) - want).abs() < 1e-4);
    }
}

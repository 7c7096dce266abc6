use crate::internal::*;
use crate::ops::matmul::pack::DynPackedExoticFact;
use std::fmt::{Debug, Display};
use std::ops::Range;
use tract_linalg::WeightType;
use tract_linalg::mmm::{
    EagerPackedInput, MMMInputFormat, MMMInputValue, PackedExoticFact, PackedMatrixStorage,
};
use tract_linalg::pack::{PackedFormat, PackedI8K4, PackingWriter};

/// The panel layout a lazy im2col writes: the matrix kernel's own activation packing. Float
/// kernels take the plain `PackedFormat`; the int8 dot-product kernels (x86 VNNI, AMX, arm64
/// dotprod) take `PackedI8K4`, four consecutive K per column.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum LazyIm2colPacker {
    Plain(PackedFormat),
    I8K4(PackedI8K4),
}

impl LazyIm2colPacker {
    /// The packer of an activation packing that lazy im2col can write, if it can.
    pub fn from_format(format: &dyn MMMInputFormat) -> Option<LazyIm2colPacker> {
        if let Some(p) = format.downcast_ref::<PackedFormat>() {
            Some(LazyIm2colPacker::Plain(p.clone()))
        } else {
            format.downcast_ref::<PackedI8K4>().map(|p| LazyIm2colPacker::I8K4(p.clone()))
        }
    }

    /// Whether the panels written are laid out as `format`'s.
    pub fn writes(&self, format: &dyn MMMInputFormat) -> bool {
        match self {
            LazyIm2colPacker::Plain(p) => {
                format.downcast_ref::<PackedFormat>().is_some_and(|f| f.r == p.r)
            }
            LazyIm2colPacker::I8K4(p) => format.dyn_eq(p),
        }
    }

    pub fn r(&self) -> usize {
        match self {
            LazyIm2colPacker::Plain(p) => p.r,
            LazyIm2colPacker::I8K4(p) => p.r,
        }
    }

    fn as_format(&self) -> Box<dyn MMMInputFormat> {
        match self {
            LazyIm2colPacker::Plain(p) => Box::new(p.clone()),
            LazyIm2colPacker::I8K4(p) => Box::new(p.clone()),
        }
    }

    fn single_panel_layout(&self, k: usize, item_size: usize) -> std::alloc::Layout {
        match self {
            LazyIm2colPacker::Plain(p) => p.single_panel_layout(k, item_size),
            LazyIm2colPacker::I8K4(p) => {
                // The slack lets write_i8k4_panel store sixteen whole columns at the last run.
                let len = p.single_panel_len(k) + I8K4_CHUNK * 4;
                std::alloc::Layout::from_size_align(len, p.alignment()).unwrap()
            }
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LazyIm2colParams {
    pub packer: LazyIm2colPacker,
    pub n_byte_offsets: Vec<isize>,
    pub k_byte_offsets: Vec<isize>,
}

impl MMMInputFormat for LazyIm2colParams {
    fn r(&self) -> usize {
        self.packer.r()
    }

    fn precursor(&self) -> WeightType {
        match &self.packer {
            LazyIm2colPacker::Plain(p) => p.precursor(),
            LazyIm2colPacker::I8K4(p) => p.precursor(),
        }
    }

    fn prepare_tensor(&self, _t: &Tensor, _k_axis: usize, _mn_axis: usize) -> TractResult<Tensor> {
        bail!("Unexpected call to prepare_tensor on LazyIm2Col")
    }

    fn k_alignment(&self) -> usize {
        1
    }

    fn mem_size(&self, k: TDim, mn: TDim) -> TDim {
        match &self.packer {
            LazyIm2colPacker::Plain(p) => k * mn * p.dt.size_of(),
            LazyIm2colPacker::I8K4(p) => p.mem_size(k, mn),
        }
    }

    fn extract_at_mn_f16(
        &self,
        _data: &tract_linalg::mmm::EagerPackedInput,
        _mn: usize,
        _slice: &mut [f16],
    ) -> TractResult<()> {
        unimplemented!()
    }
    fn extract_at_mn_f32(
        &self,
        _data: &tract_linalg::mmm::EagerPackedInput,
        _mn: usize,
        _slice: &mut [f32],
    ) -> TractResult<()> {
        unimplemented!()
    }

    fn prepare_one_view(
        &self,
        _t: &TensorView,
        _k_axis: usize,
        _mn_axis: usize,
    ) -> TractResult<Box<dyn MMMInputValue>> {
        bail!("Unexpected call to prepare_one_view on LazyIm2Col")
    }

    fn prepare_one(
        &self,
        _t: &Tensor,
        _k_axis: usize,
        _mn_axis: usize,
    ) -> TractResult<Box<dyn MMMInputValue>> {
        bail!("Unexpected call to prepare_one on LazyIm2Col")
    }
}

impl Display for LazyIm2colParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LazyIm2Col")
    }
}

impl ExoticFact for LazyIm2colParams {
    fn buffer_sizes(&self) -> TVec<TDim> {
        tvec!(MMMInputFormat::mem_size(
            self,
            self.k_byte_offsets.len().to_dim(),
            self.n_byte_offsets.len().to_dim(),
        ))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct LazyIm2Col {
    pub params: Arc<LazyIm2colParams>,
    /// Number of groups for grouped convolution (1 if ungrouped). The output is then a
    /// `[1, group]`-batched packed tensor; each group reads from a different slice of the
    /// input via a per-group offset of `g * ci_per_group * c_stride * size_of`.
    pub group: usize,
    /// Byte stride between consecutive groups in the input tensor's flat byte buffer.
    /// Equal to `ci_per_group * c_stride * size_of(input)`. Unused (0) when `group == 1`.
    pub group_stride_bytes: isize,
    /// Write every panel at once into a buffer (an eager im2col written by the panel
    /// gatherer) instead of one panel at a time as the product visits it.
    pub materialize: bool,
}

impl Op for LazyIm2Col {
    fn name(&self) -> StaticName {
        if self.materialize { "GatheredIm2col".into() } else { "LazyIm2col".into() }
    }

    op_as_typed_op!();
}

impl EvalOp for LazyIm2Col {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let tensor = args_1!(inputs);
        let dt = tensor.datum_type();
        let mut values: TVec<Box<dyn MMMInputValue>> = TVec::with_capacity(self.group);
        for g in 0..self.group {
            let group_offset_bytes = g as isize * self.group_stride_bytes;
            let input = LazyIm2colInput {
                tensor: tensor.clone(),
                im2col: self.params.clone(),
                group_offset_bytes,
            };
            if self.materialize {
                values.push(Box::new(input.materialize()?))
            } else {
                values.push(Box::new(input))
            }
        }
        let output = PackedMatrixStorage::new_batched(&[1, self.group], values).into_tensor(dt);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for LazyIm2Col {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let exotic_fact = DynPackedExoticFact {
            k: self.params.k_byte_offsets.len().to_dim(),
            mn: self.params.n_byte_offsets.len().to_dim(),
            packers: vec![self.params.packer.as_format()],
        };
        Ok(tvec!(inputs[0].datum_type.fact([1, self.group]).with_exotic_fact(exotic_fact)))
    }

    as_op!();
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct LazyIm2colInput {
    tensor: TValue,
    im2col: Arc<LazyIm2colParams>,
    /// Per-group base byte offset added to every gather. For group g this is
    /// `g * ci_per_group * c_stride * size_of(input)`. Zero for ungrouped convs.
    group_offset_bytes: isize,
}

impl Display for LazyIm2colInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl Hash for LazyIm2colInput {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.tensor.as_bytes(), &self.im2col, self.group_offset_bytes).hash(state);
    }
}

unsafe impl Send for LazyIm2colInput {}
unsafe impl Sync for LazyIm2colInput {}

impl LazyIm2colInput {
    fn input_8n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
        let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            let o3 = *n_byte_offsets.offset(n + 2);
            let o4 = *n_byte_offsets.offset(n + 3);
            let o5 = *n_byte_offsets.offset(n + 4);
            let o6 = *n_byte_offsets.offset(n + 5);
            let o7 = *n_byte_offsets.offset(n + 6);
            let o8 = *n_byte_offsets.offset(n + 7);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                let v3 = *(ptr.offset(o3) as *const T);
                let v4 = *(ptr.offset(o4) as *const T);
                let v5 = *(ptr.offset(o5) as *const T);
                let v6 = *(ptr.offset(o6) as *const T);
                let v7 = *(ptr.offset(o7) as *const T);
                let v8 = *(ptr.offset(o8) as *const T);
                writer.write(v1);
                writer.write(v2);
                writer.write(v3);
                writer.write(v4);
                writer.write(v5);
                writer.write(v6);
                writer.write(v7);
                writer.write(v8);
            }
        }
    }

    fn input_6n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            let o3 = *n_byte_offsets.offset(n + 2);
            let o4 = *n_byte_offsets.offset(n + 3);
            let o5 = *n_byte_offsets.offset(n + 4);
            let o6 = *n_byte_offsets.offset(n + 5);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                let v3 = *(ptr.offset(o3) as *const T);
                let v4 = *(ptr.offset(o4) as *const T);
                let v5 = *(ptr.offset(o5) as *const T);
                let v6 = *(ptr.offset(o6) as *const T);
                writer.write(v1);
                writer.write(v2);
                writer.write(v3);
                writer.write(v4);
                writer.write(v5);
                writer.write(v6);
            }
        }
    }

    fn input_4n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            let o3 = *n_byte_offsets.offset(n + 2);
            let o4 = *n_byte_offsets.offset(n + 3);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                let v3 = *(ptr.offset(o3) as *const T);
                let v4 = *(ptr.offset(o4) as *const T);
                writer.write(v1);
                writer.write(v2);
                writer.write(v3);
                writer.write(v4);
            }
        }
    }

    fn input_2n<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: Range<isize>,
        n: isize,
    ) {
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            let o1 = *n_byte_offsets.offset(n);
            let o2 = *n_byte_offsets.offset(n + 1);
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let v1 = *(ptr.offset(o1) as *const T);
                let v2 = *(ptr.offset(o2) as *const T);
                writer.write(v1);
                writer.write(v2);
            }
        }
    }

    fn write<T: Datum + Copy>(
        &self,
        writer: &mut impl PackingWriter<T>,
        k_range: std::ops::Range<isize>,
        mn_range: std::ops::Range<isize>,
    ) {
        let mn_end = mn_range.end.min(self.im2col.n_byte_offsets.len() as isize);
        let n_range = mn_range.start..mn_end;
        match n_range.len() {
            8 => return self.input_8n(writer, k_range, n_range.start),
            6 => return self.input_6n(writer, k_range, n_range.start),
            4 => return self.input_4n(writer, k_range, n_range.start),
            2 => return self.input_2n(writer, k_range, n_range.start),
            _ => (),
        }
        unsafe {
            let ptr = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let k_byte_offsets = self.im2col.k_byte_offsets.as_ptr();
            let n_byte_offsets = self.im2col.n_byte_offsets.as_ptr();
            for k in k_range.start..k_range.end {
                let ptr = ptr.offset(*k_byte_offsets.offset(k));
                let mut n = n_range.start;
                while n + 8 <= n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let o2 = *n_byte_offsets.offset(n + 1);
                    let o3 = *n_byte_offsets.offset(n + 2);
                    let o4 = *n_byte_offsets.offset(n + 3);
                    let o5 = *n_byte_offsets.offset(n + 4);
                    let o6 = *n_byte_offsets.offset(n + 5);
                    let o7 = *n_byte_offsets.offset(n + 6);
                    let o8 = *n_byte_offsets.offset(n + 7);
                    let v1 = *(ptr.offset(o1) as *const T);
                    let v2 = *(ptr.offset(o2) as *const T);
                    let v3 = *(ptr.offset(o3) as *const T);
                    let v4 = *(ptr.offset(o4) as *const T);
                    let v5 = *(ptr.offset(o5) as *const T);
                    let v6 = *(ptr.offset(o6) as *const T);
                    let v7 = *(ptr.offset(o7) as *const T);
                    let v8 = *(ptr.offset(o8) as *const T);
                    writer.write(v1);
                    writer.write(v2);
                    writer.write(v3);
                    writer.write(v4);
                    writer.write(v5);
                    writer.write(v6);
                    writer.write(v7);
                    writer.write(v8);
                    n += 8;
                }
                while n + 6 <= n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let o2 = *n_byte_offsets.offset(n + 1);
                    let o3 = *n_byte_offsets.offset(n + 2);
                    let o4 = *n_byte_offsets.offset(n + 3);
                    let o5 = *n_byte_offsets.offset(n + 4);
                    let o6 = *n_byte_offsets.offset(n + 5);
                    let v1 = *(ptr.offset(o1) as *const T);
                    let v2 = *(ptr.offset(o2) as *const T);
                    let v3 = *(ptr.offset(o3) as *const T);
                    let v4 = *(ptr.offset(o4) as *const T);
                    let v5 = *(ptr.offset(o5) as *const T);
                    let v6 = *(ptr.offset(o6) as *const T);
                    writer.write(v1);
                    writer.write(v2);
                    writer.write(v3);
                    writer.write(v4);
                    writer.write(v5);
                    writer.write(v6);
                    n += 6;
                }
                while n + 4 <= n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let o2 = *n_byte_offsets.offset(n + 1);
                    let o3 = *n_byte_offsets.offset(n + 2);
                    let o4 = *n_byte_offsets.offset(n + 3);
                    let v1 = *(ptr.offset(o1) as *const T);
                    let v2 = *(ptr.offset(o2) as *const T);
                    let v3 = *(ptr.offset(o3) as *const T);
                    let v4 = *(ptr.offset(o4) as *const T);
                    writer.write(v1);
                    writer.write(v2);
                    writer.write(v3);
                    writer.write(v4);
                    n += 4;
                }
                while n < n_range.end {
                    let o1 = *n_byte_offsets.offset(n);
                    let v1 = *(ptr.offset(o1) as *const T);
                    writer.write(v1);
                    n += 1;
                }
            }
        }
    }
}

impl MMMInputValue for LazyIm2colInput {
    fn scratch_panel_buffer_layout(&self) -> Option<std::alloc::Layout> {
        let k = self.im2col.k_byte_offsets.len();
        Some(self.im2col.packer.single_panel_layout(k, self.tensor.datum_type().size_of()))
    }

    fn panel_bytes(&self, i: usize, buffer: Option<*mut u8>) -> TractResult<*const u8> {
        Ok(dispatch_copy!(Self::do_panel(self.tensor.datum_type())(self, i, buffer)))
    }

    fn k(&self) -> usize {
        self.im2col.k_byte_offsets.len()
    }

    fn mn(&self) -> usize {
        self.im2col.n_byte_offsets.len()
    }

    fn format(&self) -> &dyn MMMInputFormat {
        &*self.im2col
    }

    fn exotic_fact(&self) -> &dyn ExoticFact {
        &*self.im2col
    }
    fn extract_at_mn_f16(&self, _mn: usize, _slice: &mut [f16]) -> TractResult<()> {
        unimplemented!()
    }
    fn extract_at_mn_f32(&self, _mn: usize, _slice: &mut [f32]) -> TractResult<()> {
        unimplemented!()
    }
}

impl LazyIm2colInput {
    /// Every panel, written one after the other into one buffer.
    fn materialize(&self) -> TractResult<EagerPackedInput> {
        let (k, mn) = (self.im2col.k_byte_offsets.len(), self.im2col.n_byte_offsets.len());
        let dt = self.tensor.datum_type();
        let (r, format, panel_len, align): (_, Box<dyn MMMInputFormat>, _, _) =
            match &self.im2col.packer {
                LazyIm2colPacker::Plain(p) => {
                    (p.r, Box::new(p.clone()), p.single_panel_len(k) * dt.size_of(), p.alignment())
                }
                LazyIm2colPacker::I8K4(p) => {
                    (p.r, Box::new(p.clone()), p.single_panel_len(k), p.alignment())
                }
            };
        let panels = mn.divceil(r);
        // The slack takes the last panel's sixteen-column stores (see write_i8k4_panel).
        let len = panels * panel_len + I8K4_CHUNK * 4;
        // Safety: every panel is written whole below (a short one zeroed first); the slack is
        // never read.
        let mut data =
            unsafe { Tensor::uninitialized_aligned_dt(u8::datum_type(), &[len], align)? };
        let base = data.as_bytes_mut().as_mut_ptr();
        if mn % r != 0 {
            data.as_bytes_mut()[(panels - 1) * panel_len..].fill(0);
        }
        for i in 0..panels {
            let buffer = unsafe { base.add(i * panel_len) };
            dispatch_copy!(Self::do_panel(dt)(self, i, Some(buffer)));
        }
        Ok(EagerPackedInput {
            fact: PackedExoticFact { format, k, mn: mn.to_dim() },
            packed: data.into_blob()?.into(),
            panel_bytes: panel_len,
            mn,
        })
    }

    fn do_panel<T: Datum + Copy>(&self, i: usize, buffer: Option<*mut u8>) -> *const u8 {
        let r = self.im2col.packer.r();
        let mn_start = i * r;
        let mn_end = (mn_start + r).min(self.im2col.n_byte_offsets.len());
        let k = self.im2col.k_byte_offsets.len();
        let mn_range = mn_start as isize..mn_end as isize;
        let k_range = 0..k as isize;
        let packed = buffer.unwrap();
        match &self.im2col.packer {
            LazyIm2colPacker::Plain(packer) => {
                if mn_range.len() == r && mn_start.is_multiple_of(r) {
                    let mut writer = packer.write_single_panel_with_k_outer(packed as *mut T);
                    self.write(&mut writer, k_range, mn_range);
                } else {
                    let mut writer =
                        packer.write_with_k_outer(packed as *mut T, k_range.len(), mn_range.len());
                    self.write(&mut writer, k_range, mn_range);
                }
            }
            LazyIm2colPacker::I8K4(packer) => unsafe {
                debug_assert_eq!(std::mem::size_of::<T>(), 1);
                self.write_i8k4_panel(packed, packer.single_panel_len(k), r, mn_start..mn_end)
            },
        }
        packed
    }

    /// Writes one `PackedI8K4` panel: for each block of four K, the four bytes of each column
    /// side by side, the columns in order (byte `(k / 4) * r * 4 + col * 4 + k % 4`). K past the
    /// end is zero, and so are the columns past the last in a short panel.
    ///
    /// A full panel's columns are cut into runs of input bytes one or two apart (one output row
    /// each). For each block of four K, a run reads sixteen columns of each of the four input
    /// rows at once and interleaves them into whole words, a fixed-size shuffle the compiler
    /// turns into vector code. The stores write sixteen columns even when the run is shorter:
    /// the extra columns land on the next run, the next block or the K padding, all written
    /// afterwards, or on the layout's slack.
    unsafe fn write_i8k4_panel(
        &self,
        packed: *mut u8,
        panel_len: usize,
        r: usize,
        n: Range<usize>,
    ) {
        unsafe {
            let base = self.tensor.as_ptr_unchecked::<u8>().offset(self.group_offset_bytes);
            let readable = self.tensor.len() as isize - self.group_offset_bytes;
            let ko = &self.im2col.k_byte_offsets;
            let no = &self.im2col.n_byte_offsets[n];
            let blocks = ko.len() / 4;
            let mut runs: TVec<(usize, usize, isize, isize)> = tvec!();
            let mut col = 0;
            while col < no.len() {
                let step = if col + 1 < no.len() { no[col + 1] - no[col] } else { 1 };
                let mut len = 1;
                while col + len < no.len() && no[col + len] - no[col + len - 1] == step {
                    len += 1;
                }
                runs.push((col, len, no[col], step));
                col += len;
            }
            // A short panel is zeroed first and gathered word by word; a full one is stored
            // sixteen columns at a time where its reads stay inside the input.
            let vector = no.len() == r;
            if !vector {
                std::ptr::write_bytes(packed, 0, panel_len);
            }
            for kb in 0..blocks {
                let k4 = [ko[4 * kb], ko[4 * kb + 1], ko[4 * kb + 2], ko[4 * kb + 3]];
                let k_hi = k4.into_iter().max().unwrap_or(0);
                let dst = packed.add(kb * r * 4) as *mut [u8; 4];
                for &(col, len, o, step) in &runs {
                    let (p, dst) = (base.offset(o), dst.add(col));
                    let reach = o + k_hi + (len.next_multiple_of(I8K4_CHUNK) as isize) * step;
                    if !vector || o < 0 || reach > readable || !(step == 1 || step == 2) {
                        for j in 0..len {
                            let q = p.offset(j as isize * step);
                            *dst.add(j) = k4.map(|k| *q.offset(k));
                        }
                    } else if step == 1 {
                        for c in (0..len).step_by(I8K4_CHUNK) {
                            interleave4::<1>(p.add(c), k4, dst.add(c));
                        }
                    } else {
                        for c in (0..len).step_by(I8K4_CHUNK) {
                            interleave4::<2>(p.add(2 * c), k4, dst.add(c));
                        }
                    }
                }
            }
            let tail = packed.add(blocks * r * 4);
            if vector {
                std::ptr::write_bytes(tail, 0, panel_len - blocks * r * 4);
            }
            for (col, &o) in no.iter().enumerate() {
                for (kr, &k) in ko[blocks * 4..].iter().enumerate() {
                    *tail.add(col * 4 + kr) = *base.offset(o + k);
                }
            }
        }
    }
}

/// Columns `write_i8k4_panel` interleaves at once.
const I8K4_CHUNK: usize = 16;

/// Interleaves `I8K4_CHUNK` columns, `STEP` bytes apart, of the four input rows at `p + k4[i]`
/// into `I8K4_CHUNK` words at `dst`.
#[inline(always)]
unsafe fn interleave4<const STEP: usize>(p: *const u8, k4: [isize; 4], dst: *mut [u8; 4]) {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        // SSE2, always there on x86_64: even bytes by mask and pack, then two rounds of unpacks.
        use std::arch::x86_64::*;
        let rows = k4.map(|k| {
            let q = p.offset(k) as *const __m128i;
            if STEP == 1 {
                _mm_loadu_si128(q)
            } else {
                let even = _mm_set1_epi16(0xff);
                let lo = _mm_and_si128(_mm_loadu_si128(q), even);
                _mm_packus_epi16(lo, _mm_and_si128(_mm_loadu_si128(q.add(1)), even))
            }
        });
        let ab = [_mm_unpacklo_epi8(rows[0], rows[1]), _mm_unpackhi_epi8(rows[0], rows[1])];
        let cd = [_mm_unpacklo_epi8(rows[2], rows[3]), _mm_unpackhi_epi8(rows[2], rows[3])];
        let dst = dst as *mut __m128i;
        _mm_storeu_si128(dst, _mm_unpacklo_epi16(ab[0], cd[0]));
        _mm_storeu_si128(dst.add(1), _mm_unpackhi_epi16(ab[0], cd[0]));
        _mm_storeu_si128(dst.add(2), _mm_unpacklo_epi16(ab[1], cd[1]));
        _mm_storeu_si128(dst.add(3), _mm_unpackhi_epi16(ab[1], cd[1]));
    }
    #[cfg(target_arch = "aarch64")]
    unsafe {
        // NEON: a two-way de-interleaving load for the even bytes, a four-way interleaving store.
        use std::arch::aarch64::*;
        let rows = k4.map(|k| {
            let q = p.offset(k);
            if STEP == 1 { vld1q_u8(q) } else { vld2q_u8(q).0 }
        });
        vst4q_u8(dst as *mut u8, uint8x16x4_t(rows[0], rows[1], rows[2], rows[3]));
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    unsafe {
        let rows = k4.map(|k| {
            let mut row = [0u8; I8K4_CHUNK];
            for (j, b) in row.iter_mut().enumerate() {
                *b = *p.offset(k + (j * STEP) as isize);
            }
            row
        });
        for j in 0..I8K4_CHUNK {
            *dst.add(j) = [rows[0][j], rows[1][j], rows[2][j], rows[3][j]];
        }
    }
}

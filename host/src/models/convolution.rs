//! Convolutions with a channel-last output, computed by a kernel of our own
//! instead of tract's matrix product: every 1×1 convolution once the model
//! runs channel-last, and the first convolution of a channel-first image.
//!
//! A 1×1 convolution is a product of positions × input channels by input
//! channels × output channels. tract puts the longer side, the positions,
//! along its kernels' vectors; in a channel-last output those values lie a
//! whole row apart, so tract stores each one on its own, and it repacks the
//! activations before every product. Where a layer has few input channels
//! (EfficientNet-Lite0's early layers have 16 to 32) the stores cost as
//! much as the arithmetic. The first convolution of an image (3 input
//! channels, channel-first since that is how the image comes) has the same
//! trouble, and is then moved to channel-last in a separate pass.
//!
//! [`fuse`] replaces each of them, with the bias, clamp and residual add
//! that follow, by one [`ChannelLastConv`]. Its kernel holds vectors along
//! the output channels: it broadcasts each position's values, reading them
//! where they lie (1×1) or gathering the taps of a small image first, and
//! stores whole vectors of channels with the bias, clamp and residual
//! applied on the way out.
//!
//! It sums with fused multiply-adds in another order than tract, so results
//! may differ from tract's in the last bits.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{AxesMapping, AxisOp, EvalContext, EvalOp, InOut, Op};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::conv::Conv;
use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

/// Below this many positions a product is a matrix-vector product, bound
/// by reading the weights, and tract's own kernel for it is as good.
const MIN_POSITIONS: usize = 8;

/// The most taps per position the gathered form takes: a first convolution
/// of a few channels (3 × 3 × 3 = 27 for an RGB image).
const MAX_GATHERED_TAPS: usize = 64;

/// Replaces every convolution of `model` that the kernel can take, with
/// what follows it, by a [`ChannelLastConv`]. Returns the model and how
/// many were replaced; on a machine without the kernel, the model as it
/// was.
pub fn fuse(mut model: TypedModel) -> TractResult<(TypedModel, usize)> {
    if !kernel_available() {
        return Ok((model, 0));
    }
    let mut fused = 0;
    for id in model.eval_order()? {
        if let Some(patch) = pattern(&model, id)? {
            patch.apply(&mut model)?;
            fused += 1;
        }
    }
    Ok((model.into_compact()?, fused))
}

fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    return is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    return false;
}

/// A convolution with a channel-last output `[positions, outputs]`:
/// `output[p, o]` is `bias[o] + Σ_t row(p)[t] · weights[o, t]`, clamped to
/// `[low, high]`, plus `residual[p, o]` when the op has a second input.
#[derive(Debug, Clone)]
pub struct ChannelLastConv {
    rows: Rows,
    panels: Arc<Panels>,
    clamp: Option<(f32, f32)>,
    residual: bool,
    positions: usize,
    output_shape: TVec<usize>,
}

/// Where each position's row of values comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rows {
    /// The input is already `[positions, taps]`: a 1×1 convolution over a
    /// channel-last input.
    Direct,
    /// The taps under the kernel window over a channel-first image
    /// `[1, channels, height, width]`, zero outside it.
    Gathered(Window),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    channels: usize,
    input: [usize; 2],
    kernel: [usize; 2],
    strides: [usize; 2],
    padding: [usize; 2],
    output: [usize; 2],
}

impl PartialEq for ChannelLastConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.panels, &other.panels)
            && self.rows == other.rows
            && self.clamp == other.clamp
            && self.residual == other.residual
            && self.output_shape == other.output_shape
    }
}

impl Eq for ChannelLastConv {}

impl Op for ChannelLastConv {
    fn name(&self) -> std::borrow::Cow<'static, str> {
        "ChannelLastConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "positions: {} taps: {} out: {} clamp: {:?} residual: {} rows: {:?}",
            self.positions, self.panels.inputs, self.panels.outputs, self.clamp, self.residual, self.rows
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for ChannelLastConv {
    op_out_of_plan!();

    fn eval(&self, _: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs[0].try_as_plain_ram()?.as_slice::<f32>()?;
        let gathered;
        let rows = match &self.rows {
            Rows::Direct => input,
            Rows::Gathered(window) => {
                gathered = window.gather(input)?;
                &gathered
            }
        };
        anyhow::ensure!(
            rows.len() == self.positions * self.panels.inputs,
            "ChannelLastConv: {} input values for {} positions of {} channels",
            rows.len(),
            self.positions,
            self.panels.inputs
        );
        let residual = match inputs.get(1) {
            Some(residual) => Some(residual.try_as_plain_ram()?.as_slice::<f32>()?),
            None => None,
        };
        let len = self.positions * self.panels.outputs;
        anyhow::ensure!(residual.is_none_or(|r| r.len() == len), "ChannelLastConv: residual of the wrong size");
        anyhow::ensure!(
            self.output_shape.iter().product::<usize>() == len,
            "ChannelLastConv: output shape {:?} does not hold {} positions of {} channels",
            self.output_shape,
            self.positions,
            self.panels.outputs
        );
        // SAFETY: the output holds exactly `len` values, and `run` writes
        // every one of them before anything reads it.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        self.run(rows, residual, output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?);
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ChannelLastConv {
    fn output_facts(&self, _: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(TypedFact::dt_shape(DatumType::F32, &*self.output_shape)))
    }

    as_op!();
}

impl ChannelLastConv {
    fn run(&self, rows: &[f32], residual: Option<&[f32]>, output: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the op is only built where the kernel is available, and
        // `eval` checked the sizes the kernel relies on.
        unsafe {
            x86_64::run(&self.panels, self.clamp, rows, residual, output, self.positions)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("ChannelLastConv is only built where its kernel runs: {rows:?} {residual:?} {output:?}")
    }
}

impl Window {
    fn taps(&self) -> usize {
        self.channels * self.kernel[0] * self.kernel[1]
    }

    /// Each output position's taps, in the weights' order (channel, then
    /// kernel row, then column), from a channel-first image.
    fn gather(&self, image: &[f32]) -> TractResult<Vec<f32>> {
        let [height, width] = self.input;
        anyhow::ensure!(
            image.len() == self.channels * height * width,
            "ChannelLastConv: image of {} values",
            image.len()
        );
        let mut rows = Vec::with_capacity(self.output[0] * self.output[1] * self.taps());
        for oy in 0..self.output[0] {
            for ox in 0..self.output[1] {
                for c in 0..self.channels {
                    let plane = &image[c * height * width..][..height * width];
                    for ky in 0..self.kernel[0] {
                        let y = (oy * self.strides[0] + ky).checked_sub(self.padding[0]).filter(|&y| y < height);
                        for kx in 0..self.kernel[1] {
                            let x = (ox * self.strides[1] + kx).checked_sub(self.padding[1]).filter(|&x| x < width);
                            rows.push(match (y, x) {
                                (Some(y), Some(x)) => plane[y * width + x],
                                _ => 0.0,
                            });
                        }
                    }
                }
            }
        }
        Ok(rows)
    }
}

/// The weights and bias, laid out for the kernel: the output channels cut
/// into panels of 8, 16 or 24, each panel all taps long, with a panel's
/// values for one tap side by side.
#[derive(Debug)]
struct Panels {
    inputs: usize,
    outputs: usize,
    panels: Vec<Panel>,
    values: Vec<f32>,
    /// One per output channel, padded with zeros to the panels' width.
    bias: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
struct Panel {
    /// Its first output channel.
    channel: usize,
    /// Its width, in vectors of 8 channels.
    vectors: usize,
    /// Where its values start in [`Panels::values`].
    offset: usize,
}

impl Panels {
    /// From `weights[o][i]` (`outputs` rows of `inputs`) and a bias per
    /// output channel.
    fn new(weights: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Panels {
        let padded = outputs.div_ceil(8) * 8;
        let mut widths = vec![2; padded / 16];
        if padded % 16 == 8 {
            // 24 channels keep 12 registers busy; 16 and then 8 would not.
            match widths.last_mut() {
                Some(last) => *last = 3,
                None => widths.push(1),
            }
        }
        let mut panels = Vec::with_capacity(widths.len());
        let mut values = Vec::with_capacity(padded * inputs);
        let mut channel = 0;
        for vectors in widths {
            panels.push(Panel { channel, vectors, offset: values.len() });
            for i in 0..inputs {
                for o in channel..channel + 8 * vectors {
                    values.push(if o < outputs { weights[o * inputs + i] } else { 0.0 });
                }
            }
            channel += 8 * vectors;
        }
        let mut bias = bias.to_vec();
        bias.resize(padded, 0.0);
        Panels { inputs, outputs, panels, values, bias }
    }
}

/// The product at the head of a pattern, as found in the model.
struct Head {
    rows: Rows,
    /// `[outputs][taps]` in memory.
    weights: Arc<Tensor>,
    bias: Vec<f32>,
    positions: usize,
    taps: usize,
    outputs: usize,
}

/// If node `id` heads a convolution the kernel takes, the patch that
/// replaces it and the bias, clamp and residual add after it.
fn pattern(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let Some(mut head) = channel_last_product(model, id)?.or(channel_first_image_conv(model, id)?) else {
        return Ok(None);
    };
    let (positions, outputs) = (head.positions, head.outputs);
    let gathered = matches!(head.rows, Rows::Gathered(_));

    // Follow the single chain of element-wise operations after it: bias
    // adds, then a lower and an upper clamp, then one residual add. A
    // channel-first result takes only the scalar clamp, and must then be
    // moved to channel-last.
    let mut clamp: Option<(f32, f32)> = None;
    let mut residual: Option<OutletId> = None;
    let mut last = OutletId::new(id, 0);
    let mut stage = Stage::Bias;
    while stage != Stage::Done {
        let Some((next, other)) = single_binary_successor(model, last)? else { break };
        let op = next.op_as::<TypedBinOp>().map(|op| op.0.name().to_owned()).unwrap_or_default();
        let other_fact = model.outlet_fact(other)?;
        let next_fact = model.outlet_fact(OutletId::new(next.id, 0))?;
        if next_fact.datum_type != DatumType::F32 || next_fact.shape.volume() != (positions * outputs).to_dim() {
            break;
        }
        let constant = other_fact.konst.as_ref().filter(|k| k.datum_type() == DatumType::F32);
        let scalar = constant
            .filter(|k| k.len() == 1)
            .and_then(|k| k.try_as_plain_ram().ok()?.as_slice::<f32>().ok().map(|k| k[0]));
        match (op.as_str(), stage, constant, scalar) {
            ("Add", Stage::Bias, Some(k), _)
                if !gathered && (k.len() == 1 || (k.len() == outputs && k.shape().last() == Some(&outputs))) =>
            {
                let k = k.try_as_plain_ram()?.as_slice::<f32>()?;
                for (o, b) in head.bias.iter_mut().enumerate() {
                    *b += k[o % k.len()];
                }
            }
            ("Max", Stage::Bias, _, Some(low)) => {
                clamp = Some((low, f32::INFINITY));
                stage = Stage::High;
            }
            ("Min", Stage::Bias | Stage::High, _, Some(high)) => {
                clamp = Some((clamp.map_or(f32::NEG_INFINITY, |c| c.0), high));
                stage = Stage::Residual;
            }
            ("Add", _, None, _) if !gathered && same_layout(other_fact, next_fact) => {
                residual = Some(other);
                stage = Stage::Done;
            }
            _ => break,
        }
        last = OutletId::new(next.id, 0);
    }
    if gathered {
        match single_successor(model, last)? {
            Some(next) if next.op_as::<AxisOp>() == Some(&AxisOp::Move(1, 3)) => last = OutletId::new(next.id, 0),
            _ => return Ok(None),
        }
    }

    let Some(output_shape) = model.outlet_fact(last)?.shape.as_concrete().map(TVec::from) else { return Ok(None) };
    let weights = head.weights.try_as_plain_ram()?.as_slice::<f32>()?;
    let name = &model.node(id).name;
    let op = ChannelLastConv {
        rows: head.rows,
        panels: Arc::new(Panels::new(weights, &head.bias, head.taps, outputs)),
        clamp,
        residual: residual.is_some(),
        positions,
        output_shape,
    };
    let mut patch = TypedModelPatch::new(format!("channel-last convolution {name}"));
    let mut wires = tvec![patch.tap_model(model, model.node(id).inputs[0])?];
    if let Some(residual) = residual {
        wires.push(patch.tap_model(model, residual)?);
    }
    let fused = patch.wire_node(format!("{name}.channel_last"), op, &wires)?;
    patch.shunt_outside(model, last, fused[0])?;
    Ok(Some(patch))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Bias,
    High,
    Residual,
    Done,
}

/// A 1×1 convolution over a channel-last input, as tract has it once
/// decluttered: an `EinSum` of the input `[..., I]` by constant weights
/// `[O, I]` into `[..., O]`.
fn channel_last_product(model: &TypedModel, id: usize) -> TractResult<Option<Head>> {
    let node = model.node(id);
    let Some(einsum) = node.op_as::<EinSum>() else { return Ok(None) };
    if einsum.q_params.is_some() || einsum.operating_dt != DatumType::F32 || node.inputs.len() != 2 {
        return Ok(None);
    }
    let input_fact = model.outlet_fact(node.inputs[0])?;
    let weights_fact = model.outlet_fact(node.inputs[1])?;
    let output_fact = model.outlet_fact(OutletId::new(id, 0))?;
    let (Some(input_shape), Some(weights), Some(output_shape)) =
        (input_fact.shape.as_concrete(), weights_fact.konst.as_ref(), output_fact.shape.as_concrete())
    else {
        return Ok(None);
    };
    if input_fact.datum_type != DatumType::F32 || weights.datum_type() != DatumType::F32 || weights.rank() != 2 {
        return Ok(None);
    }
    let (outputs, taps) = (weights.shape()[0], weights.shape()[1]);
    if taps == 0 || outputs == 0 || !is_channel_last_product(&einsum.axes, input_shape, output_shape)? {
        return Ok(None);
    }
    let positions = input_shape.iter().product::<usize>() / taps;
    if positions < MIN_POSITIONS {
        return Ok(None);
    }
    Ok(Some(Head { rows: Rows::Direct, weights: weights.clone(), bias: vec![0.0; outputs], positions, taps, outputs }))
}

/// A convolution of a channel-first image of a few channels (a model's
/// first), with constant weights and bias, no groups and no dilation.
fn channel_first_image_conv(model: &TypedModel, id: usize) -> TractResult<Option<Head>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else { return Ok(None) };
    let spec = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || spec.kernel_shape.len() != 2
        || spec.dilations.as_ref().is_some_and(|d| d.iter().any(|&d| d != 1))
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let input_fact = model.outlet_fact(node.inputs[0])?;
    let output_fact = model.outlet_fact(OutletId::new(id, 0))?;
    let (Some(input), Some(output), Some(weights), Some(bias)) = (
        input_fact.shape.as_concrete(),
        output_fact.shape.as_concrete(),
        model.outlet_fact(node.inputs[1])?.konst.as_ref(),
        model.outlet_fact(node.inputs[2])?.konst.as_ref(),
    ) else {
        return Ok(None);
    };
    let padding = match &spec.padding {
        PaddingSpec::Valid => [0, 0],
        PaddingSpec::Explicit(before, _) if before.len() == 2 => [before[0], before[1]],
        _ => return Ok(None),
    };
    let strides =
        spec.strides.as_ref().map_or([1, 1], |s| [s.first().copied().unwrap_or(1), s.get(1).copied().unwrap_or(1)]);
    let &[1, channels, height, width] = input else { return Ok(None) };
    let &[1, outputs, out_height, out_width] = output else { return Ok(None) };
    let window = Window {
        channels,
        input: [height, width],
        kernel: [spec.kernel_shape[0], spec.kernel_shape[1]],
        strides,
        padding,
        output: [out_height, out_width],
    };
    let taps = window.taps();
    if input_fact.datum_type != DatumType::F32
        || weights.datum_type() != DatumType::F32
        || weights.shape() != [outputs, channels, window.kernel[0], window.kernel[1]]
        || bias.datum_type() != DatumType::F32
        || !(bias.len() == outputs || bias.len() == 1)
        || taps > MAX_GATHERED_TAPS
    {
        return Ok(None);
    }
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
    let bias = (0..outputs).map(|o| bias[o % bias.len()]).collect();
    // OIHW is `[outputs][taps]` in memory, taps in the order `gather` takes them.
    let weights = weights.clone();
    let positions = out_height * out_width;
    Ok(Some(Head { rows: Rows::Gathered(window), weights, bias, positions, taps, outputs }))
}

/// Whether `axes` multiplies an input `[..., I]` by weights `[O, I]` into
/// `[..., O]`, the leading axes carried over in order (axes of size 1 may
/// come and go): then input and output are `[positions, channels]` in
/// memory.
fn is_channel_last_product(axes: &AxesMapping, input: &[usize], output: &[usize]) -> TractResult<bool> {
    if axes.input_count() != 2 || axes.output_count() != 1 || input.is_empty() || output.is_empty() {
        return Ok(false);
    }
    let contracted = axes.axis((InOut::In(1), 1))?;
    let produced = axes.axis((InOut::In(1), 0))?;
    if contracted.inputs[0].as_slice() != [input.len() - 1]
        || !contracted.outputs[0].is_empty()
        || !produced.inputs[0].is_empty()
        || produced.outputs[0].as_slice() != [output.len() - 1]
    {
        return Ok(false);
    }
    let mut carried_in = vec![];
    let mut carried_out = vec![];
    for axis in axes.iter_all_axes() {
        if axis.repr == contracted.repr || axis.repr == produced.repr {
            continue;
        }
        if !axis.inputs[1].is_empty() || axis.inputs[0].len() > 1 || axis.outputs[0].len() > 1 {
            return Ok(false);
        }
        if let Some(&at) = axis.inputs[0].first()
            && input[at] != 1
        {
            carried_in.push((at, axis.repr));
        }
        if let Some(&at) = axis.outputs[0].first()
            && output[at] != 1
        {
            carried_out.push((at, axis.repr));
        }
    }
    carried_in.sort();
    carried_out.sort();
    let order = |carried: Vec<(usize, char)>| carried.into_iter().map(|(_, repr)| repr).collect::<Vec<_>>();
    Ok(order(carried_in) == order(carried_out))
}

/// The one node reading `outlet`, unless `outlet` is also a model output.
fn single_successor(model: &TypedModel, outlet: OutletId) -> TractResult<Option<&TypedNode>> {
    let successors = model.outlet_successors(outlet);
    if successors.len() != 1 || model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    Ok(Some(model.node(successors[0].node)))
}

/// The one node reading `outlet`, if it is a plain binary operation of
/// which `outlet` is one input, with its other input.
fn single_binary_successor(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(&TypedNode, OutletId)>> {
    let Some(next) = single_successor(model, outlet)? else { return Ok(None) };
    if next.inputs.len() != 2 || next.op_as::<TypedBinOp>().is_none_or(|op| op.1.is_some()) {
        return Ok(None);
    }
    let slot = model.outlet_successors(outlet)[0].slot;
    let other = next.inputs[1 - slot];
    Ok((other != outlet).then_some((next, other)))
}

/// Whether two facts hold the same values in the same order once axes of
/// size 1 are set aside.
fn same_layout(a: &TypedFact, b: &TypedFact) -> bool {
    let significant = |fact: &TypedFact| -> Option<Vec<usize>> {
        Some(fact.shape.as_concrete()?.iter().copied().filter(|&d| d != 1).collect())
    };
    a.datum_type == b.datum_type && significant(a).is_some() && significant(a) == significant(b)
}

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use std::arch::x86_64::*;

    use super::{Panel, Panels};

    /// How many positions one pass over the panels covers: the activations
    /// of a pass stay in the first-level cache while every panel reads
    /// them. With weights too big for the second-level cache, one pass
    /// covers every position, so that each panel is read once.
    fn positions_per_pass(panels: &Panels, positions: usize) -> usize {
        const FIRST_LEVEL: usize = 16 * 1024;
        const SECOND_LEVEL: usize = 256 * 1024;
        if panels.values.len() * 4 > SECOND_LEVEL {
            return positions;
        }
        (FIRST_LEVEL / (4 * panels.inputs) / 24 * 24).max(24)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA; `input` holds `positions × inputs` values,
    /// and `output` and `residual` `positions × outputs`.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn run(
        panels: &Panels,
        clamp: Option<(f32, f32)>,
        input: &[f32],
        residual: Option<&[f32]>,
        output: &mut [f32],
        positions: usize,
    ) {
        let pass = positions_per_pass(panels, positions);
        let tile = Tile {
            inputs: panels.inputs,
            outputs: panels.outputs,
            input: input.as_ptr(),
            residual: residual.map_or(std::ptr::null(), <[f32]>::as_ptr),
            output: output.as_mut_ptr(),
            bias: panels.bias.as_ptr(),
            clamp,
        };
        let mut first = 0;
        while first < positions {
            let end = (first + pass).min(positions);
            for panel in &panels.panels {
                let values = panels.values[panel.offset..].as_ptr();
                let rows = match panel.vectors {
                    1 => 8,
                    2 => 6,
                    _ => 4,
                };
                let mut p = first;
                while p < end {
                    let count = rows.min(end - p);
                    unsafe {
                        match panel.vectors {
                            1 => tile.block_8x1(panel, values, p, count),
                            2 => tile.block_6x2(panel, values, p, count),
                            _ => tile.block_4x3(panel, values, p, count),
                        }
                    }
                    p += count;
                }
            }
            first = end;
        }
    }

    /// What every block of one run shares.
    struct Tile {
        inputs: usize,
        outputs: usize,
        input: *const f32,
        residual: *const f32,
        output: *mut f32,
        bias: *const f32,
        clamp: Option<(f32, f32)>,
    }

    /// One product step: every accumulator of a row gains that row's
    /// activation times the panel's weights.
    macro_rules! step {
        ($row:expr, $i:expr, [$($w:ident),+], [$($acc:ident),+]) => {{
            let x = _mm256_broadcast_ss(&*$row.add($i));
            $( $acc = _mm256_fmadd_ps(x, $w, $acc); )+
        }};
    }

    // The accumulators are named one by one, not kept in an array: an
    // array indexed in loops ends up spilled to the stack on every step.
    impl Tile {
        /// The activations of `N` rows from `first`, the rows past
        /// `count` repeating the last one, so that a short block runs the
        /// same code and stores only its `count` rows.
        #[inline]
        unsafe fn rows<const N: usize>(&self, first: usize, count: usize) -> [*const f32; N] {
            std::array::from_fn(|p| unsafe { self.input.add((first + p.min(count - 1)) * self.inputs) })
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn block_6x2(&self, panel: &Panel, values: *const f32, first: usize, count: usize) {
            unsafe {
                let [r0, r1, r2, r3, r4, r5] = self.rows::<6>(first, count);
                let b0 = _mm256_loadu_ps(self.bias.add(panel.channel));
                let b1 = _mm256_loadu_ps(self.bias.add(panel.channel + 8));
                let (mut a00, mut a01, mut a10, mut a11, mut a20, mut a21) = (b0, b1, b0, b1, b0, b1);
                let (mut a30, mut a31, mut a40, mut a41, mut a50, mut a51) = (b0, b1, b0, b1, b0, b1);
                for i in 0..self.inputs {
                    let w0 = _mm256_loadu_ps(values.add(16 * i));
                    let w1 = _mm256_loadu_ps(values.add(16 * i + 8));
                    step!(r0, i, [w0, w1], [a00, a01]);
                    step!(r1, i, [w0, w1], [a10, a11]);
                    step!(r2, i, [w0, w1], [a20, a21]);
                    step!(r3, i, [w0, w1], [a30, a31]);
                    step!(r4, i, [w0, w1], [a40, a41]);
                    step!(r5, i, [w0, w1], [a50, a51]);
                }
                let acc = [[a00, a01], [a10, a11], [a20, a21], [a30, a31], [a40, a41], [a50, a51]];
                self.finish(panel, first, count, &acc);
            }
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn block_4x3(&self, panel: &Panel, values: *const f32, first: usize, count: usize) {
            unsafe {
                let [r0, r1, r2, r3] = self.rows::<4>(first, count);
                let b0 = _mm256_loadu_ps(self.bias.add(panel.channel));
                let b1 = _mm256_loadu_ps(self.bias.add(panel.channel + 8));
                let b2 = _mm256_loadu_ps(self.bias.add(panel.channel + 16));
                let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12) = (b0, b1, b2, b0, b1, b2);
                let (mut a20, mut a21, mut a22, mut a30, mut a31, mut a32) = (b0, b1, b2, b0, b1, b2);
                for i in 0..self.inputs {
                    let w0 = _mm256_loadu_ps(values.add(24 * i));
                    let w1 = _mm256_loadu_ps(values.add(24 * i + 8));
                    let w2 = _mm256_loadu_ps(values.add(24 * i + 16));
                    step!(r0, i, [w0, w1, w2], [a00, a01, a02]);
                    step!(r1, i, [w0, w1, w2], [a10, a11, a12]);
                    step!(r2, i, [w0, w1, w2], [a20, a21, a22]);
                    step!(r3, i, [w0, w1, w2], [a30, a31, a32]);
                }
                let acc = [[a00, a01, a02], [a10, a11, a12], [a20, a21, a22], [a30, a31, a32]];
                self.finish(panel, first, count, &acc);
            }
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn block_8x1(&self, panel: &Panel, values: *const f32, first: usize, count: usize) {
            unsafe {
                let [r0, r1, r2, r3, r4, r5, r6, r7] = self.rows::<8>(first, count);
                let b0 = _mm256_loadu_ps(self.bias.add(panel.channel));
                let (mut a0, mut a1, mut a2, mut a3, mut a4, mut a5, mut a6, mut a7) = (b0, b0, b0, b0, b0, b0, b0, b0);
                for i in 0..self.inputs {
                    let w0 = _mm256_loadu_ps(values.add(8 * i));
                    step!(r0, i, [w0], [a0]);
                    step!(r1, i, [w0], [a1]);
                    step!(r2, i, [w0], [a2]);
                    step!(r3, i, [w0], [a3]);
                    step!(r4, i, [w0], [a4]);
                    step!(r5, i, [w0], [a5]);
                    step!(r6, i, [w0], [a6]);
                    step!(r7, i, [w0], [a7]);
                }
                let acc = [[a0], [a1], [a2], [a3], [a4], [a5], [a6], [a7]];
                self.finish(panel, first, count, &acc);
            }
        }

        /// Clamps, adds the residual and stores the first `count` rows of
        /// a block, only the lanes of channels that exist.
        #[target_feature(enable = "avx2,fma")]
        #[inline]
        unsafe fn finish<const P: usize, const V: usize>(
            &self,
            panel: &Panel,
            first: usize,
            count: usize,
            acc: &[[__m256; V]; P],
        ) {
            unsafe {
                let clamp = self.clamp.map(|(low, high)| (_mm256_set1_ps(low), _mm256_set1_ps(high)));
                for (p, row) in acc.iter().enumerate().take(count) {
                    let at = (first + p) * self.outputs + panel.channel;
                    for (v, &a) in row.iter().enumerate() {
                        let at = at + 8 * v;
                        let mut a = a;
                        if let Some((low, high)) = clamp {
                            a = _mm256_min_ps(_mm256_max_ps(a, low), high);
                        }
                        let lanes = self.outputs.saturating_sub(panel.channel + 8 * v).min(8);
                        if lanes == 8 {
                            if !self.residual.is_null() {
                                a = _mm256_add_ps(a, _mm256_loadu_ps(self.residual.add(at)));
                            }
                            _mm256_storeu_ps(self.output.add(at), a);
                        } else if lanes > 0 {
                            // Past the last channel: only the lanes that exist.
                            let mask = _mm256_cmpgt_epi32(
                                _mm256_set1_epi32(lanes as i32),
                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                            );
                            if !self.residual.is_null() {
                                a = _mm256_add_ps(a, _mm256_maskload_ps(self.residual.add(at), mask));
                            }
                            _mm256_maskstore_ps(self.output.add(at), mask, a);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) / 25.0).collect()
    }

    /// The op's contract over rows already gathered, one value at a time,
    /// in f64.
    fn reference(
        rows: &[f32],
        weights: &[f32],
        bias: &[f32],
        clamp: Option<(f32, f32)>,
        residual: Option<&[f32]>,
        taps: usize,
        outputs: usize,
    ) -> Vec<f32> {
        let positions = rows.len() / taps;
        let mut out = vec![0.0; positions * outputs];
        for p in 0..positions {
            for o in 0..outputs {
                let mut sum = bias[o] as f64;
                for t in 0..taps {
                    sum += rows[p * taps + t] as f64 * weights[o * taps + t] as f64;
                }
                let mut value = sum as f32;
                if let Some((low, high)) = clamp {
                    value = value.max(low).min(high);
                }
                out[p * outputs + o] = value + residual.map_or(0.0, |r| r[p * outputs + o]);
            }
        }
        out
    }

    fn assert_close(got: &[f32], want: &[f32], case: &str) {
        assert_eq!(got.len(), want.len(), "{case}");
        for (at, (got, want)) in got.iter().zip(want).enumerate() {
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{case}: value {at}: {got} != {want}");
        }
    }

    #[test]
    fn the_kernel_keeps_the_contract_for_every_block_and_tail() {
        if !kernel_available() {
            return;
        }
        for outputs in [1, 5, 8, 13, 16, 24, 40, 96, 100] {
            for taps in [1, 3, 16, 27] {
                for positions in [1, 5, 6, 7, 13, 50] {
                    for (clamp, with_residual) in [(None, false), (Some((0.0, 6.0)), false), (None, true)] {
                        let rows = values(positions * taps, 1);
                        let weights = values(outputs * taps, 2);
                        let bias = values(outputs, 3);
                        let residual = with_residual.then(|| values(positions * outputs, 4));
                        let op = ChannelLastConv {
                            rows: Rows::Direct,
                            panels: Arc::new(Panels::new(&weights, &bias, taps, outputs)),
                            clamp,
                            residual: with_residual,
                            positions,
                            output_shape: tvec![positions, outputs],
                        };
                        let mut output = vec![f32::NAN; positions * outputs + 9];
                        op.run(&rows, residual.as_deref(), &mut output[..positions * outputs]);
                        let want = reference(&rows, &weights, &bias, clamp, residual.as_deref(), taps, outputs);
                        let case = format!(
                            "out {outputs} taps {taps} positions {positions} clamp {clamp:?} residual {with_residual}"
                        );
                        assert_close(&output[..positions * outputs], &want, &case);
                        assert!(output[positions * outputs..].iter().all(|v| v.is_nan()), "{case}: wrote past the end");
                    }
                }
            }
        }
    }

    /// The window's taps against a convolution written out loop by loop,
    /// with the padding before the image and past its end.
    #[test]
    fn gathered_rows_make_the_convolution_of_a_channel_first_image() {
        if !kernel_available() {
            return;
        }
        let (channels, height, width, outputs) = (3, 9, 11, 16);
        for (strides, padding) in [([2, 2], [0, 0]), ([1, 1], [1, 1]), ([2, 1], [1, 0])] {
            let kernel = [3, 3];
            let out = [
                (height + padding[0] + 1 - kernel[0]) / strides[0] + 1,
                (width + padding[1] + 1 - kernel[1]) / strides[1] + 1,
            ];
            let window = Window { channels, input: [height, width], kernel, strides, padding, output: out };
            let image = values(channels * height * width, 5);
            let weights = values(outputs * window.taps(), 6);
            let bias = values(outputs, 7);
            let rows = window.gather(&image).expect("the image fits the window");
            let op = ChannelLastConv {
                rows: Rows::Gathered(window.clone()),
                panels: Arc::new(Panels::new(&weights, &bias, window.taps(), outputs)),
                clamp: None,
                residual: false,
                positions: out[0] * out[1],
                output_shape: tvec![1, out[0], out[1], outputs],
            };
            let mut got = vec![0.0; out[0] * out[1] * outputs];
            op.run(&rows, None, &mut got);
            let mut want = vec![0.0f32; got.len()];
            for oy in 0..out[0] {
                for ox in 0..out[1] {
                    for o in 0..outputs {
                        let mut sum = bias[o] as f64;
                        for c in 0..channels {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let y = (oy * strides[0] + ky) as isize - padding[0] as isize;
                                    let x = (ox * strides[1] + kx) as isize - padding[1] as isize;
                                    if (0..height as isize).contains(&y) && (0..width as isize).contains(&x) {
                                        let pixel = image[(c * height + y as usize) * width + x as usize];
                                        sum += pixel as f64 * weights[((o * channels + c) * 3 + ky) * 3 + kx] as f64;
                                    }
                                }
                            }
                        }
                        want[(oy * out[1] + ox) * outputs + o] = sum as f32;
                    }
                }
            }
            assert_close(&got, &want, &format!("strides {strides:?} padding {padding:?}"));
        }
    }

    /// EfficientNet-Lite0 with its convolutions on this kernel gives the
    /// logits tract gives on its own, to rounding.
    #[test]
    fn efficientnet_answers_as_with_tracts_own_kernels() -> TractResult<()> {
        if !kernel_available() {
            return Ok(());
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/efficientnet-lite0/model.onnx");
        let typed = tract_onnx::onnx()
            .model_for_path(&path)?
            .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
            .into_typed()?;
        let typed = super::super::channel_last("efficientnet-lite0", typed);
        let (fused, count) = fuse(typed.clone().into_decluttered()?)?;
        // The first convolution and the 32 pointwise ones; the classifier,
        // a single position, stays with tract.
        assert_eq!(count, 33);
        let theirs = typed.into_optimized()?.into_runnable()?;
        let ours = fused.into_optimized()?.into_runnable()?;
        let image: Vec<f32> = (0..3 * 224 * 224).map(|i| ((i * 7919 % 255) as f32 - 127.0) / 128.0).collect();
        let input =
            || -> TractResult<TVec<TValue>> { Ok(tvec!(Tensor::from_shape(&[1, 3, 224, 224], &image)?.into_tvalue())) };
        let logits = |outputs: TVec<TValue>| -> TractResult<Vec<f32>> {
            Ok(outputs[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let (theirs, ours) = (logits(theirs.run(input()?)?)?, logits(ours.run(input()?)?)?);
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = theirs.iter().zip(&ours).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4 * scale.max(1.0), "logits differ by up to {worst} (largest {scale})");
        Ok(())
    }
}

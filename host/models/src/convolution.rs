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
//! The kernel is compiled for each vector level ([`super::simd`]): its
//! panels are laid out for one level's width and its blocks sized for that
//! level's registers. It sums in another order than tract, with fused
//! multiply-adds where the level has them, so results may differ from
//! tract's in the last bits.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{AxesMapping, AxisOp, EvalContext, EvalOp, InOut, Op};
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::cnn::conv::Conv;
use tract_onnx::tract_core::ops::cnn::{KernelFormat, PaddingSpec};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::{as_op, op_as_typed_op, op_out_of_plan};

use super::simd::{self, Level};

/// Below this many positions a product is a matrix-vector product, bound
/// by reading the weights, and tract's own kernel for it is as good.
const MIN_POSITIONS: usize = 8;

/// The most taps per position the gathered form takes: a first convolution
/// of a few channels (3 × 3 × 3 = 27 for an RGB image).
const MAX_GATHERED_TAPS: usize = 64;

/// Replaces every convolution of `model` that the kernel can take, with
/// what follows it, by a [`ChannelLastConv`] computed at `level`. Returns
/// the model and how many were replaced; where the kernel would not beat
/// tract ([`worth_fusing`]), or the CPU lacks `level`, the model as it was.
pub fn fuse(mut model: TypedModel, level: Level) -> TractResult<(TypedModel, usize)> {
    if !worth_fusing(level) {
        return Ok((model, 0));
    }
    let mut fused = 0;
    for id in model.eval_order()? {
        if let Some(patch) = pattern(&model, id, level)? {
            patch.apply(&mut model)?;
            fused += 1;
        }
    }
    Ok((model.into_compact()?, fused))
}

/// Whether this kernel at `level` is the better choice here. On x86-64
/// it is at every level: tract's own kernels there store a channel-last
/// output one value at a time. On aarch64 tract's NEON kernels stay until
/// this kernel has a NEON level.
fn worth_fusing(level: Level) -> bool {
    cfg!(target_arch = "x86_64") && level.supported()
}

/// A convolution with a channel-last output `[positions, outputs]`:
/// `output[p, o]` is `bias[o] + Σ_t row(p)[t] · weights[o, t]`, clamped to
/// `[low, high]`, plus `residual[p, o]` when the op has a second input.
#[derive(Debug, Clone)]
pub struct ChannelLastConv {
    rows: Rows,
    /// The weights, laid out for the vector level the op runs at.
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
            "positions: {} taps: {} out: {} clamp: {:?} residual: {} rows: {:?} kernel: {}",
            self.positions,
            self.panels.inputs,
            self.panels.outputs,
            self.clamp,
            self.residual,
            self.rows,
            self.panels.level
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
        let residual = match inputs.get(1) {
            Some(residual) => Some(residual.try_as_plain_ram()?.as_slice::<f32>()?),
            None => None,
        };
        let len = self.positions * self.panels.outputs;
        anyhow::ensure!(
            self.output_shape.iter().product::<usize>() == len,
            "ChannelLastConv: output shape {:?} does not hold {} positions of {} channels",
            self.output_shape,
            self.positions,
            self.panels.outputs
        );
        // SAFETY: the output holds exactly `len` values; `run` writes every
        // one of them, or fails and the tensor is dropped unread.
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.output_shape)? };
        self.run(rows, residual, output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
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
    /// Runs the kernel over `rows` (`positions × taps`) into `output`
    /// (`positions × outputs`), with `residual` of the output's size.
    fn run(&self, rows: &[f32], residual: Option<&[f32]>, output: &mut [f32]) -> TractResult<()> {
        let len = self.positions * self.panels.outputs;
        anyhow::ensure!(
            rows.len() == self.positions * self.panels.inputs,
            "ChannelLastConv: {} input values for {} positions of {} channels",
            rows.len(),
            self.positions,
            self.panels.inputs
        );
        anyhow::ensure!(
            output.len() == len && residual.is_none_or(|r| r.len() == len),
            "ChannelLastConv: output or residual of the wrong size for {} positions of {} channels",
            self.positions,
            self.panels.outputs
        );
        let product = kernel::Product {
            panels: &self.panels,
            clamp: self.clamp,
            input: rows,
            residual,
            output,
            positions: self.positions,
        };
        simd::dispatch(self.panels.level, product)
            .ok_or_else(|| anyhow::anyhow!("ChannelLastConv: this CPU cannot run {} kernels", self.panels.level))
    }
}

/// The kernel at `level` on its own, over rows already gathered:
/// `output[p][o]` is `bias[o] + Σ_t rows[p][t] · weights[o][t]`, clamped
/// to `clamp`, plus `residual[p][o]`. For the tests and benchmarks that
/// compare levels; fails if the CPU lacks `level` or a slice does not fit.
#[allow(clippy::too_many_arguments)]
pub fn product_at(
    level: Level,
    rows: &[f32],
    weights: &[f32],
    bias: &[f32],
    clamp: Option<(f32, f32)>,
    residual: Option<&[f32]>,
    output: &mut [f32],
) -> TractResult<()> {
    let outputs = bias.len();
    anyhow::ensure!(outputs > 0 && weights.len().is_multiple_of(outputs), "weights are not one row per bias value");
    let taps = weights.len() / outputs;
    anyhow::ensure!(taps > 0 && rows.len().is_multiple_of(taps), "rows are not whole rows of {taps} taps");
    let positions = rows.len() / taps;
    let op = ChannelLastConv {
        rows: Rows::Direct,
        panels: Arc::new(Panels::new(level, weights, bias, taps, outputs)),
        clamp,
        residual: residual.is_some(),
        positions,
        output_shape: tvec![positions, outputs],
    };
    op.run(rows, residual, output)
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

/// The weights and bias, laid out for the kernel at one level: the output
/// channels cut into panels of a few vectors, each panel all taps long,
/// with a panel's values for one tap side by side.
#[derive(Debug)]
struct Panels {
    level: Level,
    inputs: usize,
    outputs: usize,
    panels: Vec<Panel>,
    values: Vec<f32>,
    /// One per output channel, padded with zeros to a whole vector.
    bias: Vec<f32>,
}

#[derive(Debug, Clone, Copy)]
struct Panel {
    /// Its first output channel.
    channel: usize,
    /// Its width, in vectors of the level's lanes.
    vectors: usize,
    /// Where its values start in [`Panels::values`].
    offset: usize,
}

impl Panels {
    /// From `weights[o][i]` (`outputs` rows of `inputs`) and a bias per
    /// output channel, for `level`.
    fn new(level: Level, weights: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Panels {
        let lanes = level.lanes();
        let vectors = outputs.div_ceil(lanes);
        let mut panels = Vec::new();
        let mut values = Vec::with_capacity(vectors * lanes * inputs);
        let mut channel = 0;
        for width in panel_widths(level.registers(), vectors) {
            panels.push(Panel { channel, vectors: width, offset: values.len() });
            for i in 0..inputs {
                for o in channel..channel + lanes * width {
                    values.push(if o < outputs { weights[o * inputs + i] } else { 0.0 });
                }
            }
            channel += lanes * width;
        }
        let mut bias = bias.to_vec();
        bias.resize(vectors * lanes, 0.0);
        Panels { level, inputs, outputs, panels, values, bias }
    }
}

/// How `vectors` vectors of output channels are cut into panels, each of a
/// width whose block keeps the registers busy ([`kernel::block_rows`]):
/// with 16 registers, pairs, and a triple for an odd count; with 32, fours,
/// the remainder a pair or a triple (five as three and two).
fn panel_widths(registers: usize, vectors: usize) -> Vec<usize> {
    if vectors <= 1 {
        return vec![vectors; vectors];
    }
    let (widest, last) = if registers >= 32 {
        match vectors % 4 {
            0 => (vectors / 4, vec![]),
            1 => (vectors / 4 - 1, vec![3, 2]),
            rest => (vectors / 4, vec![rest]),
        }
    } else {
        match vectors % 2 {
            0 => (vectors / 2, vec![]),
            _ => (vectors / 2 - 1, vec![3]),
        }
    };
    let widest_width = if registers >= 32 { 4 } else { 2 };
    let mut widths = vec![widest_width; widest];
    widths.extend(last);
    widths
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
fn pattern(model: &TypedModel, id: usize, level: Level) -> TractResult<Option<TypedModelPatch>> {
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
        panels: Arc::new(Panels::new(level, weights, &head.bias, head.taps, outputs)),
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

/// The product itself, generic over the vector it runs in.
mod kernel {
    use super::Panels;
    use crate::simd::{Kernel, Vector};

    /// How many positions one pass over the panels covers: the activations
    /// of a pass stay in the first-level cache while every panel reads
    /// them. With weights too big for the second-level cache, one pass
    /// covers every position, so that each panel is read once. A pass is
    /// a multiple of 24 positions, which every block height divides.
    fn positions_per_pass(panels: &Panels, positions: usize) -> usize {
        const FIRST_LEVEL: usize = 16 * 1024;
        const SECOND_LEVEL: usize = 256 * 1024;
        if panels.values.len() * 4 > SECOND_LEVEL {
            return positions;
        }
        (FIRST_LEVEL / (4 * panels.inputs) / 24 * 24).max(24)
    }

    /// One call of the kernel: the caller has checked that `input` holds
    /// `positions × inputs` values, and `output` and `residual`
    /// `positions × outputs`.
    pub(super) struct Product<'a> {
        pub panels: &'a Panels,
        pub clamp: Option<(f32, f32)>,
        pub input: &'a [f32],
        pub residual: Option<&'a [f32]>,
        pub output: &'a mut [f32],
        pub positions: usize,
    }

    impl Kernel for Product<'_> {
        type Output = ();

        #[inline(always)]
        unsafe fn run<V: Vector>(self) {
            assert!(
                V::LANES == self.panels.level.lanes() && V::REGISTERS == self.panels.level.registers(),
                "panels laid out for another vector level"
            );
            let panels = self.panels;
            let pass = positions_per_pass(panels, self.positions);
            let tile = Tile {
                inputs: panels.inputs,
                outputs: panels.outputs,
                input: self.input.as_ptr(),
                residual: self.residual.map_or(std::ptr::null(), <[f32]>::as_ptr),
                output: self.output.as_mut_ptr(),
                bias: panels.bias.as_ptr(),
                clamp: self.clamp,
            };
            let mut first = 0;
            while first < self.positions {
                let end = (first + pass).min(self.positions);
                for panel in &panels.panels {
                    let values = panels.values[panel.offset..].as_ptr();
                    let rows = block_rows(V::REGISTERS, panel.vectors);
                    let mut p = first;
                    while p < end {
                        let count = rows.min(end - p);
                        // SAFETY: `Panels` sized `values` and `bias` for
                        // every panel, the caller checked the rest, and the
                        // CPU has the vector's level (`run`'s contract).
                        unsafe {
                            match (V::REGISTERS, panel.vectors) {
                                (32, 1) => tile.block::<V, 12, 1>(panel, values, p, count),
                                (32, 2) => tile.block::<V, 12, 2>(panel, values, p, count),
                                (32, 3) => tile.block::<V, 8, 3>(panel, values, p, count),
                                (32, _) => tile.block::<V, 6, 4>(panel, values, p, count),
                                (_, 1) => tile.block::<V, 8, 1>(panel, values, p, count),
                                (_, 2) => tile.block::<V, 6, 2>(panel, values, p, count),
                                (_, _) => tile.block::<V, 4, 3>(panel, values, p, count),
                            }
                        }
                        p += count;
                    }
                }
                first = end;
            }
        }
    }

    /// How many positions a block of `vectors` vectors of channels holds in
    /// registers: about three quarters of the registers as accumulators,
    /// the rest for the panel's weights and the broadcast activation.
    pub(super) fn block_rows(registers: usize, vectors: usize) -> usize {
        match (registers, vectors) {
            (32, 1 | 2) => 12,
            (32, 3) => 8,
            (32, _) => 6,
            (_, 1) => 8,
            (_, 2) => 6,
            (_, _) => 4,
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

    impl Tile {
        /// The activations of `P` rows from `first`, the rows past
        /// `count` repeating the last one, so that a short block runs the
        /// same code and stores only its `count` rows.
        #[inline(always)]
        unsafe fn rows<const P: usize>(&self, first: usize, count: usize) -> [*const f32; P] {
            // SAFETY: rows below `count` lie in the tile's input, which `run`
            // checked holds every row of `inputs` values.
            std::array::from_fn(|p| unsafe { self.input.add((first + p.min(count - 1)) * self.inputs) })
        }

        /// `P` positions from `first` by the `W` vectors of one panel, all
        /// held in registers while every input channel is summed in. The
        /// accumulators are a fixed-size array indexed only by constants
        /// once the loops over `P` and `W` are unrolled, so they stay in
        /// registers.
        #[inline(always)]
        unsafe fn block<V: Vector, const P: usize, const W: usize>(
            &self,
            panel: &super::Panel,
            values: *const f32,
            first: usize,
            count: usize,
        ) {
            // SAFETY: `run` checked that the input, weights, bias, residual and
            // output hold every row and channel the tile reaches, and the CPU has
            // `V`'s level (`Kernel::run`'s contract).
            unsafe {
                let rows = self.rows::<P>(first, count);
                let mut bias = [V::zero(); W];
                for (v, b) in bias.iter_mut().enumerate() {
                    *b = V::load(self.bias.add(panel.channel + V::LANES * v));
                }
                let mut acc = [bias; P];
                for i in 0..self.inputs {
                    let mut weights = [V::zero(); W];
                    for (v, w) in weights.iter_mut().enumerate() {
                        *w = V::load(values.add((W * i + v) * V::LANES));
                    }
                    for (row, sums) in rows.iter().zip(acc.iter_mut()) {
                        let x = V::broadcast(row.add(i));
                        for (sum, w) in sums.iter_mut().zip(weights) {
                            *sum = x.mul_add(w, *sum);
                        }
                    }
                }
                self.finish(panel, first, count, acc);
            }
        }

        /// Clamps, adds the residual and stores the first `count` rows of
        /// a block, only the lanes of channels that exist.
        #[inline(always)]
        unsafe fn finish<V: Vector, const P: usize, const W: usize>(
            &self,
            panel: &super::Panel,
            first: usize,
            count: usize,
            acc: [[V; W]; P],
        ) {
            // SAFETY: `run` checked that the input, weights, bias, residual and
            // output hold every row and channel the tile reaches, and the CPU has
            // `V`'s level (`Kernel::run`'s contract).
            unsafe {
                let clamp = self.clamp.map(|(low, high)| (V::splat(low), V::splat(high)));
                // Every row is visited and the short block's rows skipped,
                // rather than the loop cut to `count`: a loop of constant
                // length unrolls, and the accumulators stay in registers.
                for (p, row) in acc.iter().enumerate() {
                    if p >= count {
                        continue;
                    }
                    let at = (first + p) * self.outputs + panel.channel;
                    for (v, &a) in row.iter().enumerate() {
                        let at = at + V::LANES * v;
                        let mut a = a;
                        if let Some((low, high)) = clamp {
                            a = a.max(low).min(high);
                        }
                        let lanes = self.outputs.saturating_sub(panel.channel + V::LANES * v).min(V::LANES);
                        if lanes == V::LANES {
                            if !self.residual.is_null() {
                                a = a.add(V::load(self.residual.add(at)));
                            }
                            a.store(self.output.add(at));
                        } else if lanes > 0 {
                            // Past the last channel: only the lanes that exist.
                            if !self.residual.is_null() {
                                a = a.add(V::load_first(self.residual.add(at), lanes));
                            }
                            a.store_first(self.output.add(at), lanes);
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

    fn assert_close(got: &[f32], want: &[f32], case: &str) {
        assert_eq!(got.len(), want.len(), "{case}");
        for (at, (got, want)) in got.iter().zip(want).enumerate() {
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{case}: value {at}: {got} != {want}");
        }
    }

    /// The levels this CPU can run; the `kernels` test reports the others
    /// as skipped.
    fn levels() -> impl Iterator<Item = Level> {
        Level::ALL.into_iter().filter(|level| level.supported())
    }

    #[test]
    fn panels_cut_every_vector_count_into_widths_with_a_block() {
        for registers in [16, 32] {
            for vectors in 0..200 {
                let widths = panel_widths(registers, vectors);
                assert_eq!(widths.iter().sum::<usize>(), vectors, "{registers} registers, {vectors} vectors");
                let widest = if registers == 32 { 4 } else { 3 };
                assert!(widths.iter().all(|&w| (1..=widest).contains(&w)), "{widths:?}");
                // Every block height divides a pass of 24 positions.
                assert!(widths.iter().all(|&w| 24 % kernel::block_rows(registers, w) == 0));
            }
        }
    }

    /// The window's taps against a convolution written out loop by loop,
    /// with the padding before the image and past its end.
    #[test]
    fn gathered_rows_make_the_convolution_of_a_channel_first_image() {
        let (channels, height, width, outputs) = (3, 9, 11, 16);
        let cases = [([2, 2], [0, 0]), ([1, 1], [1, 1]), ([2, 1], [1, 0])];
        for (level, (strides, padding)) in levels().flat_map(|level| cases.map(|case| (level, case))) {
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
                panels: Arc::new(Panels::new(level, &weights, &bias, window.taps(), outputs)),
                clamp: None,
                residual: false,
                positions: out[0] * out[1],
                output_shape: tvec![1, out[0], out[1], outputs],
            };
            let mut got = vec![0.0; out[0] * out[1] * outputs];
            op.run(&rows, None, &mut got).expect("a supported level runs");
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
            assert_close(&got, &want, &format!("{level}: strides {strides:?} padding {padding:?}"));
        }
    }

    /// EfficientNet-Lite0 with its convolutions on this kernel, at every
    /// level this CPU has, gives the logits tract gives on its own, to
    /// rounding.
    #[test]
    fn efficientnet_answers_as_with_tracts_own_kernels() -> TractResult<()> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/efficientnet-lite0/model.onnx");
        let typed = tract_onnx::onnx()
            .model_for_path(&path)?
            .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
            .into_typed()?;
        let typed = super::super::channel_last("efficientnet-lite0", typed);
        let theirs = typed.clone().into_optimized()?.into_runnable()?;
        let image: Vec<f32> = (0..3 * 224 * 224).map(|i| ((i * 7919 % 255) as f32 - 127.0) / 128.0).collect();
        let input =
            || -> TractResult<TVec<TValue>> { Ok(tvec!(Tensor::from_shape(&[1, 3, 224, 224], &image)?.into_tvalue())) };
        let logits = |outputs: TVec<TValue>| -> TractResult<Vec<f32>> {
            Ok(outputs[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let theirs = logits(theirs.run(input()?)?)?;
        let scale = theirs.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        for level in levels() {
            let (fused, count) = fuse(typed.clone().into_decluttered()?, level)?;
            // The first convolution and the 32 pointwise ones; the
            // classifier, a single position, stays with tract.
            assert_eq!(count, 33, "{level}");
            let ours = logits(fused.into_optimized()?.into_runnable()?.run(input()?)?)?;
            let worst = theirs.iter().zip(&ours).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst <= 1e-4 * scale.max(1.0), "{level}: logits differ by up to {worst} (largest {scale})");
        }
        Ok(())
    }
}

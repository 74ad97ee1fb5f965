//! A forward pass of a layer graph in `f32`, batch first (`[N, C, …]`), PyTorch semantics: the
//! evaluator behind `synbal quantize-check` for safetensors models.
//!
//! The layer graph only says what balancing needs (which tensors, which channels); the rest of a
//! forward pass — strides, padding, kernel sizes, slopes — comes from [`ForwardAttrs`], read from
//! the architecture description's fields with PyTorch's names and defaults (`stride` 1,
//! `padding` 0, `dilation` 1, pooling `stride` = `kernel_size`, LeakyReLU `negative_slope`
//! 0.01, …; see `docs/model-files.md`).
//!
//! Supported: Linear/Gemm/MatMul (on the last axis), convolutions with 1 or 2 spatial axes
//! (groups, depthwise, dilation, `padding: "same"`) and transposed convolutions (`output_padding`),
//! ReLU, LeakyReLU, PReLU, identity and dropout (eval), max/average pooling (`ceil_mode`,
//! `count_include_pad`), adaptive and global pooling, nearest upsampling by an integer factor, zero
//! padding, multiplication or division by a constant, permute, flatten, concat, slice, add, bias,
//! BatchNorm (eval), and the element-wise fixed ops tanh, sigmoid, GELU (erf), SiLU, ELU, SELU,
//! CELU, softplus, softsign, mish, log-sigmoid, ReLU6, hardtanh, clip, hard-swish, hard-sigmoid,
//! and softmax / log-softmax over `dim` (default 1). Anything else (3-D convolutions, RNNs, layer
//! or group norm, bilinear resize, ops described as `fixed`) is an [`EvalError::Unsupported`]
//! naming the node.
//!
//! Convolutions and Linear layers are matrix products (faer, im2col per sample and group); the
//! samples of a batch run in parallel (rayon).

use super::{LayerGraph, NodeId, Op};
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use thiserror::Error;

/// Errors of the forward pass; each names the node or tensor.
#[derive(Debug, Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum EvalError {
    /// The op cannot be evaluated.
    #[error("node {node} `{name}` ({kind}): {message}")]
    Unsupported {
        /// Node index.
        node: NodeId,
        /// Node name.
        name: String,
        /// Op kind.
        kind: String,
        /// Why.
        message: String,
    },
    /// The shapes do not fit.
    #[error("node {node} `{name}` ({kind}): {message}")]
    Shape {
        /// Node index.
        node: NodeId,
        /// Node name.
        name: String,
        /// Op kind.
        kind: String,
        /// What does not fit.
        message: String,
    },
    /// A tensor could not be read, or its element count does not match its shape.
    #[error("tensor `{name}`: {message}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// A dense `f32` array, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalTensor {
    /// Shape (batch first for activations).
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

impl EvalTensor {
    /// A tensor; the element count must match the shape.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self, EvalError> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(EvalError::Tensor {
                name: "input".into(),
                message: format!("{} values for shape {shape:?}", data.len()),
            });
        }
        Ok(EvalTensor { shape, data })
    }

    fn channels(&self) -> usize {
        self.shape.get(1).copied().unwrap_or(1)
    }

    /// Elements per channel of one sample (product of the axes after the channel axis).
    fn inner(&self) -> usize {
        self.shape.iter().skip(2).product()
    }
}

/// `padding` of a convolution or pooling: explicit per spatial axis, or PyTorch's `"same"`.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum Padding {
    /// None (PyTorch's default `padding=0`).
    #[default]
    Zero,
    /// The same before and after, per spatial axis (one value: every axis).
    Explicit(Vec<usize>),
    /// `"same"`: output size equals input size (stride 1), `d·(k − 1)/2` on each side.
    Same,
}

/// What a forward pass needs beyond the layer graph, per node (PyTorch names; absent → PyTorch
/// default).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ForwardAttrs {
    /// Pooling window.
    pub kernel_size: Option<Vec<usize>>,
    /// Stride.
    pub stride: Option<Vec<usize>>,
    /// Padding of a convolution or pooling; for `pad`/`zero_pad*` layers the amounts
    /// `[left, right, top, bottom]` (PyTorch order; one value: every side).
    pub padding: Padding,
    /// Dilation.
    pub dilation: Option<Vec<usize>>,
    /// Extra size on one side of a transposed convolution's output.
    pub output_padding: Option<Vec<usize>>,
    /// Adaptive pooling output size (default 1).
    pub output_size: Option<Vec<usize>>,
    /// Upsampling factor (an integer).
    pub scale_factor: Option<f64>,
    /// LeakyReLU slope (default 0.01).
    pub negative_slope: Option<f64>,
    /// `mul`/`div` constant, or the fill value of a constant pad.
    pub value: Option<f64>,
    /// Permutation of the axes (batch axis first).
    pub dims: Option<Vec<usize>>,
    /// PReLU slope tensor.
    pub slope: Option<String>,
    /// Pooling output size rounded up.
    pub ceil_mode: bool,
    /// Average pooling divides by the window including padding (default true).
    pub count_include_pad: Option<bool>,
    /// Lower bound (`clip`, `hardtanh`; default −1 for hardtanh).
    pub min: Option<f64>,
    /// Upper bound (`clip`, `hardtanh`; default 1 for hardtanh).
    pub max: Option<f64>,
    /// Softmax axis (default 1).
    pub dim: Option<i64>,
    /// An explicit `channels_last` flatten (the features of `[N, C, S]` are taken channel-fastest).
    pub channels_last: bool,
    /// A field that is present but not understood (reported when the node is evaluated).
    pub invalid: Option<String>,
}

fn pair(v: &Option<Vec<usize>>, default: usize, axes: usize) -> Vec<usize> {
    match v {
        None => vec![default; axes],
        Some(v) if v.len() == 1 => vec![v[0]; axes],
        Some(v) => v.clone(),
    }
}

struct Ctx<'a> {
    id: NodeId,
    graph: &'a LayerGraph,
}

impl Ctx<'_> {
    fn kind(&self) -> String {
        super::analysis::op_kind(&self.graph.nodes[self.id].op)
    }
    fn unsupported(&self, message: impl Into<String>) -> EvalError {
        EvalError::Unsupported {
            node: self.id,
            name: self.graph.nodes[self.id].name.clone(),
            kind: self.kind(),
            message: message.into(),
        }
    }
    fn shape(&self, message: impl Into<String>) -> EvalError {
        EvalError::Shape {
            node: self.id,
            name: self.graph.nodes[self.id].name.clone(),
            kind: self.kind(),
            message: message.into(),
        }
    }
}

/// Spatial geometry of a convolution or pooling on `[N, C, H, W]` (1-D as `H = 1`).
#[derive(Debug, Clone, Copy)]
struct Geo {
    sh: usize,
    sw: usize,
    ph: usize,
    pw: usize,
    dh: usize,
    dw: usize,
    oh: usize,
    ow: usize,
}

/// `[N, C, H, W]` view of a rank-3 or rank-4 activation, with the spatial axes count.
fn spatial(x: &EvalTensor, c: &Ctx) -> Result<(usize, usize, usize, usize, usize), EvalError> {
    match x.shape.len() {
        3 => Ok((x.shape[0], x.shape[1], 1, x.shape[2], 1)),
        4 => Ok((x.shape[0], x.shape[1], x.shape[2], x.shape[3], 2)),
        r => Err(c.unsupported(format!(
            "input of rank {r} (shape {:?}); 1-D and 2-D spatial inputs are evaluated",
            x.shape
        ))),
    }
}

/// A per-axis value as `(h, w)`; with one spatial axis `h` is the `missing` value (1 for a
/// kernel, stride or dilation, 0 for a padding).
fn hw(v: &[usize], axes: usize, missing: usize) -> (usize, usize) {
    if axes == 1 {
        (missing, v[0])
    } else {
        (v[0], v[1])
    }
}

fn out_size(n: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Option<usize> {
    let span = d * (k - 1) + 1;
    if n + 2 * p < span || s == 0 {
        return None;
    }
    let q = n + 2 * p - span;
    let mut o = if ceil { q.div_ceil(s) } else { q / s } + 1;
    // PyTorch: the last window must start inside the input or the left padding.
    if ceil && (o - 1) * s >= n + p {
        o -= 1;
    }
    Some(o)
}

#[allow(clippy::too_many_arguments)]
fn geometry(
    c: &Ctx,
    a: &ForwardAttrs,
    (h, w, axes): (usize, usize, usize),
    (kh, kw): (usize, usize),
    default_stride: (usize, usize),
    ceil: bool,
) -> Result<Geo, EvalError> {
    let check = |v: &Option<Vec<usize>>, what: &str| -> Result<(), EvalError> {
        match v {
            Some(v) if v.len() != 1 && v.len() != axes => Err(c.shape(format!(
                "`{what}` has {} values for {axes} spatial axes",
                v.len()
            ))),
            Some(v) if what != "padding" && v.contains(&0) => {
                Err(c.shape(format!("`{what}` must be at least 1")))
            }
            _ => Ok(()),
        }
    };
    check(&a.stride, "stride")?;
    check(&a.dilation, "dilation")?;
    let (sh, sw) = match &a.stride {
        None => default_stride,
        Some(_) => hw(&pair(&a.stride, 1, axes), axes, 1),
    };
    let (dh, dw) = hw(&pair(&a.dilation, 1, axes), axes, 1);
    let (ph, pw) = match &a.padding {
        Padding::Zero => (0, 0),
        Padding::Explicit(p) => {
            check(&Some(p.clone()), "padding")?;
            hw(&pair(&Some(p.clone()), 0, axes), axes, 0)
        }
        Padding::Same => {
            if sh != 1 || sw != 1 {
                return Err(c.shape("`padding: \"same\"` needs stride 1"));
            }
            // Symmetric only when d·(k − 1) is even; PyTorch pads the extra one after.
            if (dh * (kh - 1)) % 2 == 1 || (dw * (kw - 1)) % 2 == 1 {
                return Err(c.unsupported(
                    "`padding: \"same\"` with an even kernel (asymmetric padding) is not evaluated",
                ));
            }
            (dh * (kh - 1) / 2, dw * (kw - 1) / 2)
        }
    };
    let oh = out_size(h, kh, sh, ph, dh, ceil);
    let ow = out_size(w, kw, sw, pw, dw, ceil);
    match (oh, ow) {
        (Some(oh), Some(ow)) => Ok(Geo {
            sh,
            sw,
            ph,
            pw,
            dh,
            dw,
            oh,
            ow,
        }),
        _ => Err(c.shape(format!(
            "the window {kh}×{kw} (dilation {dh}×{dw}) does not fit the input {h}×{w} with padding {ph}×{pw}"
        ))),
    }
}

/// `y[N, O] = x[N, I]·Wᵀ + b` (or `x·W` for an `[in, out]` weight) on the last axis.
fn linear(
    c: &Ctx,
    x: &EvalTensor,
    w: &EvalTensor,
    in_major: bool,
    b: Option<&EvalTensor>,
) -> Result<EvalTensor, EvalError> {
    if w.shape.len() != 2 {
        return Err(c.shape(format!("weight of shape {:?} is not 2-D", w.shape)));
    }
    let (out, inp) = if in_major {
        (w.shape[1], w.shape[0])
    } else {
        (w.shape[0], w.shape[1])
    };
    let last = *x.shape.last().unwrap_or(&0);
    if last != inp {
        return Err(c.shape(format!(
            "input of shape {:?} has {last} features on its last axis, the weight expects {inp}",
            x.shape
        )));
    }
    let rows = x.data.len() / inp.max(1);
    let mut y = vec![0.0f32; rows * out];
    let xm = MatRef::from_row_major_slice(&x.data, rows, inp);
    let wm = if in_major {
        MatRef::from_row_major_slice(&w.data, inp, out)
    } else {
        MatRef::from_row_major_slice(&w.data, out, inp).transpose()
    };
    matmul(
        MatMut::from_row_major_slice_mut(&mut y, rows, out),
        Accum::Replace,
        xm,
        wm,
        1.0f32,
        Par::rayon(0),
    );
    if let Some(b) = b {
        if b.data.len() != out {
            return Err(c.shape(format!(
                "bias has {} values for {out} outputs",
                b.data.len()
            )));
        }
        for row in y.chunks_mut(out) {
            for (v, bb) in row.iter_mut().zip(&b.data) {
                *v += bb;
            }
        }
    }
    let mut shape = x.shape.clone();
    if let Some(l) = shape.last_mut() {
        *l = out;
    }
    Ok(EvalTensor { shape, data: y })
}

/// Convolution `W: [O, C/g, kh, kw]`, or transposed convolution `W: [C, O/g, kh, kw]`.
fn conv(
    c: &Ctx,
    a: &ForwardAttrs,
    x: &EvalTensor,
    w: &EvalTensor,
    b: Option<&EvalTensor>,
    groups: usize,
    transposed: bool,
) -> Result<EvalTensor, EvalError> {
    let (n, ch, h, wd, axes) = spatial(x, c)?;
    if w.shape.len() != axes + 2 {
        return Err(c.shape(format!(
            "weight of shape {:?} for an input with {axes} spatial axes",
            w.shape
        )));
    }
    let (kh, kw) = hw(&w.shape[2..], axes, 1);
    if groups == 0 || ch % groups != 0 {
        return Err(c.shape(format!("{ch} input channels in {groups} groups")));
    }
    let d = ConvDims {
        n,
        ch,
        h,
        wd,
        axes,
        kh,
        kw,
        groups,
    };
    if transposed {
        conv_transposed(c, a, x, w, b, &d)
    } else {
        conv_direct(c, a, x, w, b, &d)
    }
}

/// The sizes of a convolution: batch `n`, input channels `ch`, input plane `h × wd` with `axes`
/// spatial axes, kernel `kh × kw`, `groups`.
struct ConvDims {
    n: usize,
    ch: usize,
    h: usize,
    wd: usize,
    axes: usize,
    kh: usize,
    kw: usize,
    groups: usize,
}

/// A convolution as one matrix product per sample and group: `Y_g = W_g · cols_g`, with
/// `cols_g` the input patches ([`im2col`]).
fn conv_direct(
    c: &Ctx,
    a: &ForwardAttrs,
    x: &EvalTensor,
    w: &EvalTensor,
    b: Option<&EvalTensor>,
    d: &ConvDims,
) -> Result<EvalTensor, EvalError> {
    let (ch, h, wd, groups) = (d.ch, d.h, d.wd, d.groups);
    let k = d.kh * d.kw;
    let ipg = ch / groups;
    let out = w.shape[0];
    if w.shape[1] != ipg || out % groups != 0 {
        return Err(c.shape(format!(
            "weight of shape {:?} with {groups} groups does not fit {ch} input channels",
            w.shape
        )));
    }
    let opg = out / groups;
    let g = geometry(c, a, (h, wd, d.axes), (d.kh, d.kw), (1, 1), false)?;
    let (oh, ow) = (g.oh, g.ow);
    let ohw = oh * ow;
    let mut y = vec![0.0f32; d.n * out * ohw];
    y.par_chunks_mut(out * ohw)
        .zip(x.data.par_chunks(ch * h * wd))
        .for_each(|(ys, xs)| {
            let mut cols = vec![0.0f32; ipg * k * ohw];
            for gi in 0..groups {
                cols.iter_mut().for_each(|v| *v = 0.0);
                for ci in 0..ipg {
                    let plane = &xs[(gi * ipg + ci) * h * wd..(gi * ipg + ci + 1) * h * wd];
                    im2col(&mut cols[ci * k * ohw..(ci + 1) * k * ohw], plane, d, &g);
                }
                let wg = MatRef::from_row_major_slice(
                    &w.data[gi * opg * ipg * k..(gi + 1) * opg * ipg * k],
                    opg,
                    ipg * k,
                );
                let cm = MatRef::from_row_major_slice(&cols, ipg * k, ohw);
                let dst = MatMut::from_row_major_slice_mut(
                    &mut ys[gi * opg * ohw..(gi + 1) * opg * ohw],
                    opg,
                    ohw,
                );
                matmul(dst, Accum::Replace, wg, cm, 1.0f32, Par::Seq);
            }
        });
    conv_output(c, y, [d.n, out, oh, ow], d.axes, b)
}

/// The patches of one input channel `plane` (`h × wd`): row `i·kw + j` of `cols` holds, for
/// every output position `(oy, ox)`, the input at `(oy·sh + i·dh − ph, ox·sw + j·dw − pw)`, or
/// leaves 0 where that is padding.
fn im2col(cols: &mut [f32], plane: &[f32], d: &ConvDims, g: &Geo) {
    let (h, wd, oh, ow) = (d.h, d.wd, g.oh, g.ow);
    for i in 0..d.kh {
        for j in 0..d.kw {
            let row = &mut cols[(i * d.kw + j) * oh * ow..][..oh * ow];
            for oy in 0..oh {
                let iy = (oy * g.sh + i * g.dh) as isize - g.ph as isize;
                if iy < 0 || iy >= h as isize {
                    continue;
                }
                let src = &plane[iy as usize * wd..(iy as usize + 1) * wd];
                for ox in 0..ow {
                    let ix = (ox * g.sw + j * g.dw) as isize - g.pw as isize;
                    if ix >= 0 && ix < wd as isize {
                        row[oy * ow + ox] = src[ix as usize];
                    }
                }
            }
        }
    }
}

/// The geometry of a transposed convolution: output size
/// `(in − 1)·s − 2p + d·(k − 1) + output_padding + 1` per axis.
fn transposed_geometry(c: &Ctx, a: &ForwardAttrs, d: &ConvDims) -> Result<Geo, EvalError> {
    let axes = d.axes;
    let (sh, sw) = hw(&pair(&a.stride, 1, axes), axes, 1);
    let (dh, dw) = hw(&pair(&a.dilation, 1, axes), axes, 1);
    let (ph, pw) = match &a.padding {
        Padding::Zero => (0, 0),
        Padding::Explicit(p) => hw(&pair(&Some(p.clone()), 0, axes), axes, 0),
        Padding::Same => {
            return Err(c.unsupported("`padding: \"same\"` on a transposed convolution"))
        }
    };
    let (oph, opw) = hw(&pair(&a.output_padding, 0, axes), axes, 0);
    if sh == 0 || sw == 0 || dh == 0 || dw == 0 {
        return Err(c.shape("`stride` and `dilation` must be at least 1"));
    }
    let full_h = (d.h - 1) * sh + dh * (d.kh - 1) + oph + 1;
    let full_w = (d.wd - 1) * sw + dw * (d.kw - 1) + opw + 1;
    if full_h <= 2 * ph || full_w <= 2 * pw {
        return Err(c.shape("the padding removes the whole output"));
    }
    Ok(Geo {
        sh,
        sw,
        ph,
        pw,
        dh,
        dw,
        oh: full_h - 2 * ph,
        ow: full_w - 2 * pw,
    })
}

/// A transposed convolution: per sample and group `cols = W_gᵀ · x_g`, then every column
/// scattered onto the output planes ([`col2im`]).
fn conv_transposed(
    c: &Ctx,
    a: &ForwardAttrs,
    x: &EvalTensor,
    w: &EvalTensor,
    b: Option<&EvalTensor>,
    d: &ConvDims,
) -> Result<EvalTensor, EvalError> {
    let (ch, groups) = (d.ch, d.groups);
    let k = d.kh * d.kw;
    let ipg = ch / groups;
    if w.shape[0] != ch {
        return Err(c.shape(format!(
            "transposed weight of shape {:?} does not fit {ch} input channels",
            w.shape
        )));
    }
    let opg = w.shape[1];
    let out = opg * groups;
    let g = transposed_geometry(c, a, d)?;
    let (oh, ow) = (g.oh, g.ow);
    let hw_in = d.h * d.wd;
    let mut y = vec![0.0f32; d.n * out * oh * ow];
    y.par_chunks_mut(out * oh * ow)
        .zip(x.data.par_chunks(ch * hw_in))
        .for_each(|(ys, xs)| {
            let mut cols = vec![0.0f32; opg * k * hw_in];
            for gi in 0..groups {
                // cols[opg·k, h·w] = W_gᵀ · x_g, W_g: [ipg, opg·k].
                let wg = MatRef::from_row_major_slice(
                    &w.data[gi * ipg * opg * k..(gi + 1) * ipg * opg * k],
                    ipg,
                    opg * k,
                );
                let xg = MatRef::from_row_major_slice(
                    &xs[gi * ipg * hw_in..(gi + 1) * ipg * hw_in],
                    ipg,
                    hw_in,
                );
                matmul(
                    MatMut::from_row_major_slice_mut(&mut cols, opg * k, hw_in),
                    Accum::Replace,
                    wg.transpose(),
                    xg,
                    1.0f32,
                    Par::Seq,
                );
                for oc in 0..opg {
                    let plane = &mut ys[(gi * opg + oc) * oh * ow..][..oh * ow];
                    col2im(plane, &cols[oc * k * hw_in..(oc + 1) * k * hw_in], d, &g);
                }
            }
        });
    conv_output(c, y, [d.n, out, oh, ow], d.axes, b)
}

/// Adds the columns of one output channel onto its `plane` (`oh × ow`): the entry of row
/// `i·kw + j` for input position `(iy, ix)` goes to `(iy·sh + i·dh − ph, ix·sw + j·dw − pw)`
/// when that is inside the output.
fn col2im(plane: &mut [f32], cols: &[f32], d: &ConvDims, g: &Geo) {
    let (h, wd, oh, ow) = (d.h, d.wd, g.oh, g.ow);
    for i in 0..d.kh {
        for j in 0..d.kw {
            let row = &cols[(i * d.kw + j) * h * wd..][..h * wd];
            for iy in 0..h {
                let y0 = (iy * g.sh + i * g.dh) as isize - g.ph as isize;
                if y0 < 0 || y0 >= oh as isize {
                    continue;
                }
                for ix in 0..wd {
                    let x0 = (ix * g.sw + j * g.dw) as isize - g.pw as isize;
                    if x0 >= 0 && x0 < ow as isize {
                        plane[y0 as usize * ow + x0 as usize] += row[iy * wd + ix];
                    }
                }
            }
        }
    }
}

/// The output of a convolution: `y` shaped `[n, out, oh, ow]` (`[n, out, ow]` with one spatial
/// axis), plus the bias per output channel.
fn conv_output(
    c: &Ctx,
    y: Vec<f32>,
    [n, out, oh, ow]: [usize; 4],
    axes: usize,
    b: Option<&EvalTensor>,
) -> Result<EvalTensor, EvalError> {
    let shape = if axes == 2 {
        vec![n, out, oh, ow]
    } else {
        vec![n, out, ow]
    };
    let mut t = EvalTensor { shape, data: y };
    add_channel_bias(c, &mut t, b)?;
    Ok(t)
}

/// `x[n, c, …] += b[c]`.
fn add_channel_bias(c: &Ctx, x: &mut EvalTensor, b: Option<&EvalTensor>) -> Result<(), EvalError> {
    let Some(b) = b else { return Ok(()) };
    per_channel(c, x, |ch, v| v + b.data[ch], b.data.len())
}

/// Applies `f(channel, value)` to every element; `len` must equal the channel count.
fn per_channel(
    c: &Ctx,
    x: &mut EvalTensor,
    f: impl Fn(usize, f32) -> f32 + Sync,
    len: usize,
) -> Result<(), EvalError> {
    let (ch, inner) = (x.channels(), x.inner());
    if len != ch && len != 1 {
        return Err(c.shape(format!(
            "{len} per-channel values for an input with {ch} channels (shape {:?})",
            x.shape
        )));
    }
    let one = len == 1;
    x.data
        .par_chunks_mut(inner.max(1))
        .enumerate()
        .for_each(|(r, chunk)| {
            let k = if one { 0 } else { r % ch };
            chunk.iter_mut().for_each(|v| *v = f(k, *v));
        });
    Ok(())
}

/// Max or average pooling with window `k`, or adaptive pooling to `out` when `adaptive`.
fn pool(c: &Ctx, a: &ForwardAttrs, x: &EvalTensor, max: bool) -> Result<EvalTensor, EvalError> {
    let (n, ch, h, wd, axes) = spatial(x, c)?;
    let k = a
        .kernel_size
        .as_ref()
        .ok_or_else(|| c.shape("pooling needs `kernel_size`"))?;
    if k.contains(&0) || (k.len() != 1 && k.len() != axes) {
        return Err(c.shape(format!("`kernel_size` {k:?} for {axes} spatial axes")));
    }
    let (kh, kw) = hw(&pair(&Some(k.clone()), 1, axes), axes, 1);
    let g = geometry(c, a, (h, wd, axes), (kh, kw), (kh, kw), a.ceil_mode)?;
    let include_pad = a.count_include_pad.unwrap_or(true);
    let (oh, ow) = (g.oh, g.ow);
    let mut y = vec![0.0f32; n * ch * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * wd))
        .for_each(|(ys, plane)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let y0 = (oy * g.sh) as isize - g.ph as isize;
                    let x0 = (ox * g.sw) as isize - g.pw as isize;
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    let mut count = 0usize;
                    for i in 0..kh {
                        let iy = y0 + (i * g.dh) as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for j in 0..kw {
                            let ix = x0 + (j * g.dw) as isize;
                            if ix < 0 || ix >= wd as isize {
                                continue;
                            }
                            let v = plane[iy as usize * wd + ix as usize];
                            acc = if max { acc.max(v) } else { acc + v };
                            count += 1;
                        }
                    }
                    ys[oy * ow + ox] = if max {
                        acc
                    } else {
                        let div = if include_pad {
                            // The window clipped to the padded input.
                            let hend = (y0 + kh as isize).min((h + g.ph) as isize);
                            let wend = (x0 + kw as isize).min((wd + g.pw) as isize);
                            ((hend - y0) * (wend - x0)) as usize
                        } else {
                            count
                        };
                        acc / div.max(1) as f32
                    };
                }
            }
        });
    let mut shape = vec![n, ch];
    if axes == 2 {
        shape.push(oh);
    }
    shape.push(ow);
    Ok(EvalTensor { shape, data: y })
}

/// Adaptive max or average pooling to `output_size` (default 1): window `i` spans
/// `floor(i·n/o) .. ceil((i + 1)·n/o)`.
fn adaptive_pool(
    c: &Ctx,
    a: &ForwardAttrs,
    x: &EvalTensor,
    max: bool,
) -> Result<EvalTensor, EvalError> {
    let (n, ch, h, wd, axes) = spatial(x, c)?;
    let (th, tw) = hw(&pair(&a.output_size, 1, axes), axes, 1);
    if th == 0 || tw == 0 {
        return Err(c.shape("`output_size` must be at least 1"));
    }
    let mut y = vec![0.0f32; n * ch * th * tw];
    y.par_chunks_mut(th * tw)
        .zip(x.data.par_chunks(h * wd))
        .for_each(|(ys, plane)| {
            for oy in 0..th {
                let (y0, y1) = (oy * h / th, ((oy + 1) * h).div_ceil(th));
                for ox in 0..tw {
                    let (x0, x1) = (ox * wd / tw, ((ox + 1) * wd).div_ceil(tw));
                    let mut acc = if max { f32::NEG_INFINITY } else { 0.0 };
                    for iy in y0..y1 {
                        for v in &plane[iy * wd + x0..iy * wd + x1] {
                            acc = if max { acc.max(*v) } else { acc + v };
                        }
                    }
                    let cnt = ((y1 - y0) * (x1 - x0)).max(1) as f32;
                    ys[oy * tw + ox] = if max { acc } else { acc / cnt };
                }
            }
        });
    let mut shape = vec![n, ch];
    if axes == 2 {
        shape.push(th);
    }
    shape.push(tw);
    Ok(EvalTensor { shape, data: y })
}

/// Generic axis permutation.
fn permute(c: &Ctx, x: &EvalTensor, dims: &[usize]) -> Result<EvalTensor, EvalError> {
    let r = x.shape.len();
    let mut seen = vec![false; r];
    if dims.len() != r
        || dims
            .iter()
            .any(|&d| d >= r || std::mem::replace(&mut seen[d], true))
    {
        return Err(c.shape(format!(
            "`dims` {dims:?} is not a permutation of the {r} axes of shape {:?}",
            x.shape
        )));
    }
    let shape: Vec<usize> = dims.iter().map(|&d| x.shape[d]).collect();
    let mut strides = vec![1usize; r];
    for i in (0..r.saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * x.shape[i + 1];
    }
    let src_strides: Vec<usize> = dims.iter().map(|&d| strides[d]).collect();
    let mut data = Vec::with_capacity(x.data.len());
    let mut idx = vec![0usize; r];
    for _ in 0..x.data.len() {
        let off: usize = idx.iter().zip(&src_strides).map(|(i, s)| i * s).sum();
        data.push(x.data[off]);
        for a in (0..r).rev() {
            idx[a] += 1;
            if idx[a] < shape[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Ok(EvalTensor { shape, data })
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

fn softplus(v: f32) -> f32 {
    if v > 20.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

/// Element-wise function of a fixed (non-homogeneous) op, by normalised type name.
fn elementwise(kind: &str, a: &ForwardAttrs) -> Option<Box<dyn Fn(f32) -> f32 + Sync>> {
    const SELU_A: f32 = 1.673_263_2;
    const SELU_L: f32 = 1.050_701;
    let (lo, hi) = (a.min.map(|v| v as f32), a.max.map(|v| v as f32));
    Some(match kind {
        "tanh" => Box::new(f32::tanh),
        "sigmoid" => Box::new(sigmoid),
        "gelu" => Box::new(|v| 0.5 * v * (1.0 + libm::erff(v / std::f32::consts::SQRT_2))),
        "silu" => Box::new(|v| v * sigmoid(v)),
        "elu" | "celu" => Box::new(|v| if v > 0.0 { v } else { v.exp_m1() }),
        "selu" => Box::new(|v| SELU_L * if v > 0.0 { v } else { SELU_A * v.exp_m1() }),
        "softplus" => Box::new(softplus),
        "softsign" => Box::new(|v| v / (1.0 + v.abs())),
        "mish" => Box::new(|v| v * softplus(v).tanh()),
        "logsigmoid" => Box::new(|v| -softplus(-v)),
        "relu6" => Box::new(|v| v.clamp(0.0, 6.0)),
        "hardtanh" => {
            let (l, h) = (lo.unwrap_or(-1.0), hi.unwrap_or(1.0));
            Box::new(move |v| v.max(l).min(h))
        }
        "clip" => {
            let (l, h) = (lo.unwrap_or(f32::NEG_INFINITY), hi.unwrap_or(f32::INFINITY));
            Box::new(move |v| v.max(l).min(h))
        }
        "hardswish" => Box::new(|v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0),
        "hardsigmoid" => Box::new(|v| (v / 6.0 + 0.5).clamp(0.0, 1.0)),
        _ => return None,
    })
}

/// Softmax (or log-softmax) over axis `dim`.
fn softmax(c: &Ctx, x: &mut EvalTensor, dim: i64, log: bool) -> Result<(), EvalError> {
    let r = x.shape.len() as i64;
    let d = if dim < 0 { dim + r } else { dim };
    if d < 0 || d >= r {
        return Err(c.shape(format!("`dim` {dim} for shape {:?}", x.shape)));
    }
    let d = d as usize;
    let len = x.shape[d];
    let inner: usize = x.shape[d + 1..].iter().product();
    let outer: usize = x.shape[..d].iter().product();
    for o in 0..outer {
        for i in 0..inner {
            let at = |k: usize| (o * len + k) * inner + i;
            let m = (0..len).fold(f32::NEG_INFINITY, |m, k| m.max(x.data[at(k)]));
            let s: f32 = (0..len).map(|k| (x.data[at(k)] - m).exp()).sum();
            for k in 0..len {
                let v = x.data[at(k)] - m;
                x.data[at(k)] = if log { v - s.ln() } else { v.exp() / s };
            }
        }
    }
    Ok(())
}

/// Concatenation on axis 1.
fn concat(c: &Ctx, xs: &[&EvalTensor]) -> Result<EvalTensor, EvalError> {
    let first = xs[0];
    let rest = |t: &EvalTensor| -> Vec<usize> { t.shape.iter().skip(2).copied().collect() };
    for t in xs {
        if t.shape.len() != first.shape.len()
            || t.shape[0] != first.shape[0]
            || rest(t) != rest(first)
        {
            return Err(c.shape(format!(
                "inputs of shapes {:?} and {:?} cannot be concatenated on the channel axis",
                first.shape, t.shape
            )));
        }
    }
    let n = first.shape[0];
    let mut data = Vec::with_capacity(xs.iter().map(|t| t.data.len()).sum());
    for s in 0..n {
        for t in xs {
            let per = t.data.len() / n.max(1);
            data.extend_from_slice(&t.data[s * per..(s + 1) * per]);
        }
    }
    let mut shape = first.shape.clone();
    shape[1] = xs.iter().map(|t| t.channels()).sum();
    Ok(EvalTensor { shape, data })
}

/// Runs `graph` on `input` (`[N, …]`, the shape of the model input with a batch axis first) and
/// returns the values of its outputs in order. `attrs[i]` holds the forward attributes of node
/// `i`; `tensor(name)` gives a stored tensor with its shape.
pub fn evaluate(
    graph: &LayerGraph,
    attrs: &[ForwardAttrs],
    tensor: &dyn Fn(&str) -> Result<EvalTensor, EvalError>,
    input: &EvalTensor,
) -> Result<Vec<EvalTensor>, EvalError> {
    let n = graph.nodes.len();
    let mut uses = vec![0usize; n];
    for node in &graph.nodes {
        node.inputs.iter().for_each(|&i| uses[i] += 1);
    }
    graph.outputs.iter().for_each(|&o| uses[o] += 1);
    let mut values: Vec<Option<EvalTensor>> = vec![None; n];
    let mut channels_last = vec![false; n];
    let default = ForwardAttrs::default();
    for (id, node) in graph.nodes.iter().enumerate() {
        let c = Ctx { id, graph };
        let a = attrs.get(id).unwrap_or(&default);
        if let Some(m) = &a.invalid {
            return Err(c.shape(m.clone()));
        }
        let inputs: Vec<&EvalTensor> = node
            .inputs
            .iter()
            .map(|&i| {
                values[i]
                    .as_ref()
                    .ok_or_else(|| c.shape(format!("reads node {i}, which has no value")))
            })
            .collect::<Result<_, _>>()?;
        let mut step = Step {
            c,
            a,
            tensor,
            inputs,
            last: node.inputs.first().is_some_and(|&i| channels_last[i]),
        };
        let out = step.run(&node.op, input)?;
        if out.data.iter().any(|v| v.is_nan()) {
            return Err(step.c.shape("the output contains NaN"));
        }
        channels_last[id] = step.last;
        values[id] = Some(out);
        for &i in &node.inputs {
            uses[i] -= 1;
            if uses[i] == 0 {
                values[i] = None;
            }
        }
    }
    graph
        .outputs
        .iter()
        .map(|&o| {
            values[o].clone().ok_or_else(|| EvalError::Shape {
                node: o,
                name: graph.nodes[o].name.clone(),
                kind: "output".into(),
                message: "has no value".into(),
            })
        })
        .collect()
}

/// The evaluation of one node: its context, forward attributes, input values and whether its
/// value is channels-last (a permute to channels-last sets it, a layer that mixes channels
/// clears it; otherwise it is that of the first input).
struct Step<'a> {
    c: Ctx<'a>,
    a: &'a ForwardAttrs,
    tensor: &'a dyn Fn(&str) -> Result<EvalTensor, EvalError>,
    inputs: Vec<&'a EvalTensor>,
    last: bool,
}

impl Step<'_> {
    /// A copy of the first input.
    fn first(&self) -> Result<EvalTensor, EvalError> {
        self.inputs
            .first()
            .map(|t| (*t).clone())
            .ok_or_else(|| self.c.shape("has no input"))
    }

    /// The stored tensor `name`, if a name is given.
    fn opt(&self, name: &Option<String>) -> Result<Option<EvalTensor>, EvalError> {
        name.as_deref().map(self.tensor).transpose()
    }

    /// The value of the node with operation `op`; `input` is the model input.
    fn run(&mut self, op: &Op, input: &EvalTensor) -> Result<EvalTensor, EvalError> {
        let (c, tensor) = (&self.c, self.tensor);
        match op {
            Op::Input { channels } => {
                if input.shape.get(1) != Some(channels) && *channels != 0 {
                    return Err(c.shape(format!(
                        "the model has {channels} input channels, the input has shape {:?}",
                        input.shape
                    )));
                }
                Ok(input.clone())
            }
            Op::Linear {
                weight,
                in_major,
                bias,
            } => {
                self.last = false;
                let (x, w) = (self.first()?, tensor(weight)?);
                linear(c, &x, &w, *in_major, self.opt(bias)?.as_ref())
            }
            Op::Conv {
                weight,
                bias,
                groups,
                transposed,
            } => {
                self.last = false;
                let (x, w) = (self.first()?, tensor(weight)?);
                let b = self.opt(bias)?;
                conv(c, self.a, &x, &w, b.as_ref(), *groups, *transposed)
            }
            Op::PassThrough { kind } => self.pass_through(kind),
            Op::Fixed { kind } => self.fixed(kind),
            Op::AddBias { bias } => {
                let mut x = self.first()?;
                let b = tensor(bias)?;
                per_channel(c, &mut x, |k, v| v + b.data[k], b.data.len())?;
                Ok(x)
            }
            Op::BatchNorm {
                weight,
                bias,
                mean,
                var,
                eps,
            } => self.batch_norm(weight, bias, mean, var, *eps),
            Op::Add => self.add(),
            Op::Concat => {
                self.last = false;
                concat(c, &self.inputs)
            }
            Op::Slice { start, end } => self.slice(*start, *end),
            Op::Flatten { .. } => self.flatten(),
            Op::Rnn { .. } => Err(c.unsupported("the forward pass of an RNN is not implemented")),
        }
    }

    /// A scale-equivariant op: activations, pooling, permutes, constant scaling, padding.
    fn pass_through(&mut self, kind: &str) -> Result<EvalTensor, EvalError> {
        let (c, a) = (&self.c, self.a);
        let mut x = self.first()?;
        match kind {
            "relu" => x.data.par_iter_mut().for_each(|v| *v = v.max(0.0)),
            "leakyrelu" => {
                let s = a.negative_slope.unwrap_or(0.01) as f32;
                x.data
                    .par_iter_mut()
                    .for_each(|v| *v = if *v >= 0.0 { *v } else { s * *v });
            }
            "prelu" => {
                let name = a.slope.as_ref().ok_or_else(|| {
                    c.unsupported("a PReLU needs its slope tensor (`weight` or `prefix`)")
                })?;
                let s = (self.tensor)(name)?;
                per_channel(
                    c,
                    &mut x,
                    |k, v| if v >= 0.0 { v } else { s.data[k] * v },
                    s.data.len(),
                )?;
            }
            "identity" | "linearactivation" | "dropout" | "dropout1d" | "dropout2d"
            | "dropout3d" => {}
            "permute" | "transpose" => {
                let dims = a
                    .dims
                    .as_ref()
                    .ok_or_else(|| c.shape("a permute needs `dims`"))?;
                self.last = dims.iter().position(|&d| d == 1) == Some(dims.len() - 1);
                x = permute(c, &x, dims)?;
            }
            "maxpool1d" | "maxpool2d" => x = pool(c, a, &x, true)?,
            "avgpool1d" | "avgpool2d" => x = pool(c, a, &x, false)?,
            "adaptiveavgpool1d" | "adaptiveavgpool2d" => x = adaptive_pool(c, a, &x, false)?,
            "adaptivemaxpool1d" | "adaptivemaxpool2d" => x = adaptive_pool(c, a, &x, true)?,
            "globalavgpool" | "globalaveragepool" | "globalmaxpool" => {
                let global = ForwardAttrs::default();
                x = adaptive_pool(c, &global, &x, kind == "globalmaxpool")?
            }
            "mul" | "scale" | "div" => {
                let v = a.value.ok_or_else(|| c.shape("needs `value`"))? as f32;
                let f = if kind == "div" { 1.0 / v } else { v };
                x.data.par_iter_mut().for_each(|e| *e *= f);
            }
            "upsample" | "upsamplingnearest2d" | "interpolate" | "resize" => {
                x = upsample(c, a, &x)?
            }
            "pad" | "zeropad1d" | "zeropad2d" | "constantpad1d" | "constantpad2d" => {
                x = pad(c, a, &x)?
            }
            other => {
                return Err(
                    c.unsupported(format!("the forward pass of `{other}` is not implemented"))
                )
            }
        }
        Ok(x)
    }

    /// A fixed (non-homogeneous) op: softmax over `dim`, or an element-wise function.
    fn fixed(&self, kind: &str) -> Result<EvalTensor, EvalError> {
        let mut x = self.first()?;
        match kind {
            "softmax" | "logsoftmax" => softmax(
                &self.c,
                &mut x,
                self.a.dim.unwrap_or(1),
                kind == "logsoftmax",
            )?,
            k => {
                let f = elementwise(k, self.a).ok_or_else(|| {
                    self.c.unsupported(format!(
                        "the forward pass of `{k}` is not implemented (its parameters are not part of the architecture description)"
                    ))
                })?;
                x.data.par_iter_mut().for_each(|v| *v = f(*v));
            }
        }
        Ok(x)
    }

    /// Batch normalisation with running statistics: `γ (x − μ) / √(σ² + ε) + β` per channel.
    fn batch_norm(
        &self,
        weight: &Option<String>,
        bias: &Option<String>,
        mean: &str,
        var: &str,
        eps: f64,
    ) -> Result<EvalTensor, EvalError> {
        let mut x = self.first()?;
        let (m, v) = ((self.tensor)(mean)?, (self.tensor)(var)?);
        let (g, b) = (self.opt(weight)?, self.opt(bias)?);
        let ch = m.data.len();
        for t in [Some(&v), g.as_ref(), b.as_ref()].into_iter().flatten() {
            if t.data.len() != ch {
                return Err(self.c.shape("BatchNorm tensors of different lengths"));
            }
        }
        let eps = eps as f32;
        per_channel(
            &self.c,
            &mut x,
            |k, val| {
                let gamma = g.as_ref().map_or(1.0, |g| g.data[k]);
                let beta = b.as_ref().map_or(0.0, |b| b.data[k]);
                gamma * (val - m.data[k]) / (v.data[k] + eps).sqrt() + beta
            },
            ch,
        )?;
        Ok(x)
    }

    /// The element-wise sum of the inputs, which must have one shape.
    fn add(&self) -> Result<EvalTensor, EvalError> {
        let mut x = self.first()?;
        for t in &self.inputs[1..] {
            if t.shape != x.shape {
                return Err(self.c.shape(format!(
                    "adds inputs of shapes {:?} and {:?}",
                    x.shape, t.shape
                )));
            }
            x.data.iter_mut().zip(&t.data).for_each(|(a, b)| *a += b);
        }
        Ok(x)
    }

    /// Channels `start..end` of the input.
    fn slice(&self, start: usize, end: usize) -> Result<EvalTensor, EvalError> {
        let x = self.first()?;
        let ch = x.channels();
        if end > ch || start >= end {
            return Err(self
                .c
                .shape(format!("channels {start}..{end} of an input with {ch}")));
        }
        let inner = x.inner().max(1);
        let mut data = Vec::new();
        for s in 0..x.shape[0] {
            let base = s * ch * inner;
            data.extend_from_slice(&x.data[base + start * inner..base + end * inner]);
        }
        let mut shape = x.shape.clone();
        shape[1] = end - start;
        Ok(EvalTensor { shape, data })
    }

    /// `[N, rest]`, channels-last order first if the description says so and the input is not.
    fn flatten(&mut self) -> Result<EvalTensor, EvalError> {
        let mut x = self.first()?;
        if self.a.channels_last && !self.last && x.shape.len() > 2 {
            let mut dims: Vec<usize> = vec![0];
            dims.extend(2..x.shape.len());
            dims.push(1);
            x = permute(&self.c, &x, &dims)?;
        }
        self.last = false;
        let nb = x.shape[0];
        let rest = x.data.len() / nb.max(1);
        Ok(EvalTensor {
            shape: vec![nb, rest],
            data: x.data,
        })
    }
}

/// Nearest-neighbour upsampling by an integer `scale_factor`.
fn upsample(c: &Ctx, a: &ForwardAttrs, x: &EvalTensor) -> Result<EvalTensor, EvalError> {
    let f = a
        .scale_factor
        .filter(|f| *f >= 1.0 && f.fract() == 0.0)
        .ok_or_else(|| {
            c.unsupported("nearest upsampling needs an integer `scale_factor` of at least 1")
        })? as usize;
    let (n, ch, h, wd, axes) = spatial(x, c)?;
    let fh = if axes == 2 { f } else { 1 };
    let (oh, ow) = (h * fh, wd * f);
    let mut y = vec![0.0f32; n * ch * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * wd))
        .for_each(|(ys, plane)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    ys[oy * ow + ox] = plane[(oy / fh) * wd + ox / f];
                }
            }
        });
    let mut shape = vec![n, ch];
    if axes == 2 {
        shape.push(oh);
    }
    shape.push(ow);
    Ok(EvalTensor { shape, data: y })
}

/// Constant padding `[left, right, top, bottom]` (PyTorch order) with `value` (default 0).
fn pad(c: &Ctx, a: &ForwardAttrs, x: &EvalTensor) -> Result<EvalTensor, EvalError> {
    let (n, ch, h, wd, axes) = spatial(x, c)?;
    let p = match &a.padding {
        Padding::Explicit(p) if p.len() == 1 => vec![p[0]; 2 * axes],
        Padding::Explicit(p) if p.len() == 2 * axes => p.clone(),
        _ => {
            return Err(c.shape(format!(
                "padding needs `padding`: one value or {} (left, right{})",
                2 * axes,
                if axes == 2 { ", top, bottom" } else { "" }
            )))
        }
    };
    let (l, r) = (p[0], p[1]);
    let (t, b) = if axes == 2 { (p[2], p[3]) } else { (0, 0) };
    let (oh, ow) = (h + t + b, wd + l + r);
    let fill = a.value.unwrap_or(0.0) as f32;
    let mut y = vec![fill; n * ch * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.data.par_chunks(h * wd))
        .for_each(|(ys, plane)| {
            for iy in 0..h {
                ys[(iy + t) * ow + l..(iy + t) * ow + l + wd]
                    .copy_from_slice(&plane[iy * wd..(iy + 1) * wd]);
            }
        });
    let mut shape = vec![n, ch];
    if axes == 2 {
        shape.push(oh);
    }
    shape.push(ow);
    Ok(EvalTensor { shape, data: y })
}

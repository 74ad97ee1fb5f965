//! Element-level arithmetic on stored tensors, shared by every input format: decoding a
//! [`TensorView`] to `f64`, the `(output row, input column)` of a weight element under its
//! [`Layout`], the scales `λ` of the units, and the new value of every element of a rescaled
//! tensor,
//!
//! `W[o, col, k] ← f_o · W[o, col, k] · λ_{out(o)} / λ_{in(col)}^{c}`,  `b[o] ← b[o] · λ_{unit(o)}`,
//!
//! computed in `f64` from the stored values (`f_o` the row factor of a folded BatchNorm, `c` the
//! degree of the input unit's variable). A writer (safetensors, ONNX) calls
//! [`Scales::new_weight_values`] / [`Scales::new_bias_values`] chunk by chunk and rounds each value
//! once to its dtype.

use crate::structured::spec::{
    BiasUse, BiasValues, ElementType, Layout, ProblemSpec, TensorView, WeightUse, FIXED,
};

/// Elements decoded at a time by the chunked passes (costs, imbalances, writing).
pub const CHUNK: usize = 1 << 16;

/// Decodes little-endian bytes of `dtype` to `f64` (exact for every element type), appending to
/// `out`.
pub fn decode_into(dtype: ElementType, bytes: &[u8], out: &mut Vec<f64>) {
    match dtype {
        ElementType::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()),
        ),
        ElementType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()),
        ),
        ElementType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64),
        ),
        ElementType::F64 => out.extend(bytes.chunks_exact(8).map(|c| {
            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
        })),
    }
}

/// All elements of a view, decoded to `f64`.
pub fn decode(view: &TensorView<'_>) -> Vec<f64> {
    let mut v = Vec::with_capacity(view.bytes.len() / view.dtype.size());
    decode_into(view.dtype, &view.bytes, &mut v);
    v
}

/// `(o, col)` of flat element `e` of a tensor with this layout.
#[inline]
pub fn element_coords(layout: &Layout, e: usize) -> (usize, usize) {
    match *layout {
        Layout::RowMajor { cols, .. } => (e / cols, e % cols),
        Layout::ColMajor { rows, .. } => (e % rows, e / rows),
        Layout::Conv {
            out,
            in_per_group,
            groups,
            kernel,
        } => {
            let row_len = in_per_group * kernel;
            let o = e / row_len;
            let g = o / (out / groups).max(1);
            (o, g * in_per_group + (e % row_len) / kernel)
        }
        Layout::ConvTranspose {
            inp,
            out_per_group,
            groups,
            kernel,
        } => {
            let c = e / (out_per_group * kernel);
            let g = c / (inp / groups).max(1);
            (g * out_per_group + (e % (out_per_group * kernel)) / kernel, c)
        }
    }
}

/// The scale `λ_u = e^{x_{v(u)}}` and degree of every unit for given log-scales of the variables
/// (`λ = 1` and degree 1 on fixed units).
#[derive(Debug, Clone)]
pub struct Scales {
    /// `λ` per unit.
    pub lambda: Vec<f64>,
    /// Degree `c` of each unit's variable.
    pub degree: Vec<f64>,
}

impl Scales {
    /// Scales from the log-scale `x_v` of every variable of `spec`.
    pub fn new(spec: &ProblemSpec, var_log_scales: &[f64]) -> Self {
        let lambda = spec
            .unit_var
            .iter()
            .map(|&v| {
                if v == FIXED {
                    1.0
                } else {
                    var_log_scales[v as usize].exp()
                }
            })
            .collect();
        let degree = spec
            .unit_var
            .iter()
            .map(|&v| {
                if v == FIXED {
                    1.0
                } else {
                    spec.var_degree[v as usize]
                }
            })
            .collect();
        Scales { lambda, degree }
    }

    /// All scales 1 (the model as stored, after folding).
    pub fn identity(spec: &ProblemSpec) -> Self {
        Scales::new(spec, &vec![0.0; spec.num_vars()])
    }

    /// Per-row factor `f_o · λ_{out(o)}` and per-column factor `λ_{in(col)}^{−c}` of a use.
    pub fn weight_factors(&self, w: &WeightUse) -> (Vec<f64>, Vec<f64>) {
        let rows = w
            .out_units
            .iter()
            .enumerate()
            .map(|(o, &u)| w.row_factor.as_ref().map_or(1.0, |f| f[o]) * self.lambda[u as usize])
            .collect();
        let cols = w
            .in_units
            .iter()
            .map(|&u| {
                let (l, c) = (self.lambda[u as usize], self.degree[u as usize]);
                if c == 1.0 {
                    1.0 / l
                } else {
                    l.powf(-c)
                }
            })
            .collect();
        (rows, cols)
    }

    /// New values of elements `start..start + old.len()` of the weight of `w` (the stored values
    /// `old`): `f_o·w·λ_{out(o)}/λ_{in(col)}^c`, appended to `out`. `factors` from
    /// [`Scales::weight_factors`].
    pub fn new_weight_values(
        w: &WeightUse,
        factors: &(Vec<f64>, Vec<f64>),
        start: usize,
        old: &[f64],
        out: &mut Vec<f64>,
    ) {
        let (rows, cols) = factors;
        out.extend(old.iter().enumerate().map(|(i, &x)| {
            let (o, col) = element_coords(&w.layout, start + i);
            x * rows[o] * cols[col]
        }));
    }

    /// New values of bias elements `start..start + old.len()`: `sign · b[o] · λ_{unit(o)}` with
    /// `b` the stored values `old` or the use's own (folded) values.
    pub fn new_bias_values(
        &self,
        b: &BiasUse,
        sign: f64,
        start: usize,
        old: &[f64],
        out: &mut Vec<f64>,
    ) {
        let values: &[f64] = match &b.values {
            BiasValues::Tensor(_) => old,
            BiasValues::Owned(v) => &v[start..start + old.len()],
        };
        out.extend(
            values
                .iter()
                .zip(&b.units[start..start + old.len()])
                .map(|(&x, &u)| sign * x * self.lambda[u as usize]),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinates_of_every_layout() {
        let rm = Layout::RowMajor { rows: 2, cols: 3 };
        assert_eq!(element_coords(&rm, 4), (1, 1));
        let cm = Layout::ColMajor { rows: 2, cols: 3 };
        assert_eq!(element_coords(&cm, 3), (1, 1));
        // Conv [4, 1, 2] with 2 groups: output 3 (group 1) reads input channel 1.
        let conv = Layout::Conv {
            out: 4,
            in_per_group: 1,
            groups: 2,
            kernel: 2,
        };
        assert_eq!(element_coords(&conv, 7), (3, 1));
        // ConvTranspose [4, 1, 3] with 2 groups: input 2 (group 1) feeds output 1.
        let ct = Layout::ConvTranspose {
            inp: 4,
            out_per_group: 1,
            groups: 2,
            kernel: 3,
        };
        assert_eq!(element_coords(&ct, 7), (1, 2));
    }

    #[test]
    fn decode_every_dtype() {
        let mut v = vec![];
        decode_into(ElementType::F16, &half::f16::from_f64(1.5).to_le_bytes(), &mut v);
        decode_into(ElementType::BF16, &half::bf16::from_f64(-2.0).to_le_bytes(), &mut v);
        decode_into(ElementType::F32, &0.25f32.to_le_bytes(), &mut v);
        decode_into(ElementType::F64, &3.0f64.to_le_bytes(), &mut v);
        assert_eq!(v, vec![1.5, -2.0, 0.25, 3.0]);
    }
}

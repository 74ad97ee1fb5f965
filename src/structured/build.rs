//! Building the structured problem from a [`ProblemSpec`] and a [`TensorSource`]: one block per
//! weight use and power (`L_p`: one; elastic net `l1·|w| + l2·w²`: one for `p = 1` and one for
//! `p = 2`), unary terms for the biases.

use super::error::StructuredError;
use super::spec::{BiasValues, ElementType, Layout, ProblemSpec, TensorSource, WeightUse, FIXED};
use super::store::{elems_from_bytes, Block, Dense, Elems, Sparse, Structured, Unary};
use crate::regularizer::{Penalty, Regularizer};
use std::borrow::Cow;

/// The `L_p` parts `(p, coefficient)` of a penalty.
pub(crate) fn lp_parts(pen: &Penalty) -> Result<Vec<(f64, f64)>, StructuredError> {
    match *pen {
        Penalty::Lp(p) => Ok(vec![(p, 1.0)]),
        Penalty::ElasticNet { l1, l2 } => Ok([(1.0, l1), (2.0, l2)]
            .into_iter()
            .filter(|t| t.1 > 0.0)
            .collect()),
        Penalty::Custom(ref f) => match f.lp_exponent() {
            Some(p) => Ok(vec![(p, 1.0)]),
            None => Err(StructuredError::Unsupported(format!(
                "the custom penalty {f:?} is not of the form |w|^p: the structured core takes \
                 L_p and elastic-net penalties"
            ))),
        },
    }
}

/// Builds the blocks and unary terms of `spec` (variables not yet analysed: all free).
pub(crate) fn from_spec<'s, S: TensorSource>(
    spec: &ProblemSpec,
    source: &'s S,
    reg: &Regularizer,
) -> Result<Structured<'s>, StructuredError> {
    check_spec(spec)?;
    if reg.edge_classes().is_some() {
        return Err(StructuredError::Unsupported(
            "per-edge penalty classes apply to networks; a problem specification takes one \
             penalty for every weight"
                .into(),
        ));
    }
    let parts = lp_parts(&reg.classes()[0])?;
    let n = spec.num_vars();
    let mut st = Structured {
        degree: spec.var_degree.clone(),
        free: vec![true; n],
        blocks: Vec::new(),
        unary: Vec::new(),
        ln_const: f64::NEG_INFINITY,
        powers: Vec::new(),
    };
    for wu in &spec.weights {
        if wu.alpha == 0.0 {
            continue;
        }
        let view = source
            .tensor(&wu.tensor)
            .map_err(|e| StructuredError::MissingTensor {
                tensor: wu.tensor.clone(),
                node: wu.node.clone(),
                message: e.to_string(),
            })?;
        let numel: usize = view.shape.iter().product();
        if numel != wu.layout.numel() || view.bytes.len() != numel * view.dtype.size() {
            return Err(StructuredError::ShapeMismatch {
                tensor: wu.tensor.clone(),
                node: wu.node.clone(),
                expected: format!("{:?} ({} elements)", wu.layout, wu.layout.numel()),
                found: format!(
                    "{:?} {:?} ({} bytes)",
                    view.dtype,
                    view.shape,
                    view.bytes.len()
                ),
            });
        }
        let elems = elems_from_bytes(view.dtype, view.bytes);
        add_weight_use(&mut st, spec, wu, elems, &parts)?;
    }
    if let Some(bp) = reg.bias_penalty() {
        let bparts = lp_parts(bp)?;
        for bu in &spec.biases {
            let values: Cow<'_, [f64]> = match &bu.values {
                BiasValues::Owned(v) => Cow::Borrowed(v),
                BiasValues::Tensor(name) => {
                    let view = source
                        .tensor(name)
                        .map_err(|e| StructuredError::MissingTensor {
                            tensor: name.clone(),
                            node: bu.node.clone(),
                            message: e.to_string(),
                        })?;
                    let e = elems_from_bytes(view.dtype, view.bytes);
                    Cow::Owned((0..e.len()).map(|i| e.abs_at(i)).collect())
                }
            };
            if values.len() != bu.units.len() {
                return Err(StructuredError::ShapeMismatch {
                    tensor: bias_name(&bu.values),
                    node: bu.node.clone(),
                    expected: format!("{} values (one per unit)", bu.units.len()),
                    found: format!("{} values", values.len()),
                });
            }
            for (k, (&b, &u)) in values.iter().zip(&bu.units).enumerate() {
                if !b.is_finite() {
                    return Err(StructuredError::NonFinite {
                        tensor: bias_name(&bu.values),
                        node: bu.node.clone(),
                        index: k,
                    });
                }
                if b == 0.0 {
                    continue;
                }
                let var = spec.unit_var[u as usize];
                for &(p, coef) in &bparts {
                    st.unary.push(Unary {
                        var,
                        ln_k: coef.ln() + p * b.abs().ln(),
                        s: p,
                        bias: true,
                    });
                }
            }
        }
    }
    finish_powers(&mut st);
    Ok(st)
}

fn bias_name(v: &BiasValues) -> String {
    match v {
        BiasValues::Tensor(t) => t.clone(),
        BiasValues::Owned(_) => "(computed bias)".into(),
    }
}

/// Collects the powers: those of the blocks and every positive unary slope (a unary term of
/// slope `s > 0` is an input-side term of power `s`: the flows only depend on the slope).
pub(crate) fn finish_powers(st: &mut Structured<'_>) {
    let mut ps: Vec<f64> = st.blocks.iter().map(|b| b.p()).collect();
    ps.extend(st.unary.iter().map(|u| u.s).filter(|&s| s > 0.0));
    ps.sort_by(f64::total_cmp);
    ps.dedup();
    if ps.is_empty() {
        ps.push(1.0);
    }
    st.powers = ps;
}

fn check_spec(spec: &ProblemSpec) -> Result<(), StructuredError> {
    let n = spec.num_vars();
    let units = spec.num_units();
    for (u, &v) in spec.unit_var.iter().enumerate() {
        if v != FIXED && v as usize >= n {
            return Err(StructuredError::BadSpec(format!(
                "unit {u} has variable {v} but there are {n} variables"
            )));
        }
    }
    for (v, &c) in spec.var_degree.iter().enumerate() {
        if !(c.is_finite() && c > 0.0) {
            return Err(StructuredError::BadSpec(format!(
                "variable {v}: degree must be finite and > 0, got {c}"
            )));
        }
    }
    let unit_ok = |list: &[u32], what: &str, node: &str| -> Result<(), StructuredError> {
        match list.iter().find(|&&u| u as usize >= units) {
            Some(u) => Err(StructuredError::BadSpec(format!(
                "{node}: {what} unit {u} does not exist ({units} units)"
            ))),
            None => Ok(()),
        }
    };
    for w in &spec.weights {
        if w.out_units.len() != w.layout.rows() || w.in_units.len() != w.layout.cols() {
            return Err(StructuredError::BadSpec(format!(
                "{}: tensor {} has {} rows and {} columns in its layout but {} output and {} \
                 input units are listed",
                w.node,
                w.tensor,
                w.layout.rows(),
                w.layout.cols(),
                w.out_units.len(),
                w.in_units.len()
            )));
        }
        unit_ok(&w.out_units, "output", &w.node)?;
        unit_ok(&w.in_units, "input", &w.node)?;
        if !(w.alpha.is_finite() && w.alpha >= 0.0) {
            return Err(StructuredError::BadSpec(format!(
                "{}: alpha must be finite and >= 0, got {}",
                w.node, w.alpha
            )));
        }
        if let Some(f) = &w.row_factor {
            if f.len() != w.layout.rows() || f.iter().any(|x| !x.is_finite()) {
                return Err(StructuredError::BadSpec(format!(
                    "{}: the row factor needs {} finite values",
                    w.node,
                    w.layout.rows()
                )));
            }
        }
    }
    for b in &spec.biases {
        unit_ok(&b.units, "bias", &b.node)?;
    }
    Ok(())
}

/// Adds the blocks of one weight use (one per `L_p` part).
fn add_weight_use<'s>(
    st: &mut Structured<'s>,
    spec: &ProblemSpec,
    wu: &WeightUse,
    elems: Elems<'s>,
    parts: &[(f64, f64)],
) -> Result<(), StructuredError> {
    let uv = |u: &u32| spec.unit_var[*u as usize];
    let row_var: Vec<u32> = wu.out_units.iter().map(uv).collect();
    let col_var: Vec<u32> = wu.in_units.iter().map(uv).collect();
    let ln_f: Option<Vec<f64>> = wu
        .row_factor
        .as_ref()
        .map(|f| f.iter().map(|x| x.abs().ln()).collect());
    let non_finite = |index: usize| StructuredError::NonFinite {
        tensor: wu.tensor.clone(),
        node: wu.node.clone(),
        index,
    };
    for &(p, coef) in parts {
        let alpha = wu.alpha * coef;
        match wu.layout {
            // a 1×1 convolution without groups is a Linear layer in memory: [out, in, 1]
            // is row-major, a transposed one [in, out, 1] column-major
            Layout::RowMajor { .. }
            | Layout::ColMajor { .. }
            | Layout::Conv {
                groups: 1,
                kernel: 1,
                ..
            }
            | Layout::ConvTranspose {
                groups: 1,
                kernel: 1,
                ..
            } => {
                let rows_major = matches!(wu.layout, Layout::RowMajor { .. } | Layout::Conv { .. });
                let d = Dense::new(
                    elems.clone(),
                    rows_major,
                    row_var.clone(),
                    col_var.clone(),
                    ln_f.clone(),
                    alpha,
                    p,
                    wu.node.clone(),
                )
                .map_err(non_finite)?;
                st.blocks.push(Block::Dense(d));
            }
            Layout::Conv {
                out,
                in_per_group,
                groups,
                kernel,
            } => {
                // element (o, c, k) at (o·in_per_group + c)·kernel + k
                let conv = Grouped {
                    major: out,
                    per_group: in_per_group,
                    groups,
                    kernel,
                    rows_major: true,
                };
                conv.add(st, wu, &elems, (&row_var, &col_var, &ln_f), alpha, p)?;
            }
            Layout::ConvTranspose {
                inp,
                out_per_group,
                groups,
                kernel,
            } => {
                // element (c, j, k) at (c·out_per_group + j)·kernel + k, output g·opg + j
                let conv = Grouped {
                    major: inp,
                    per_group: out_per_group,
                    groups,
                    kernel,
                    rows_major: false,
                };
                conv.add(st, wu, &elems, (&row_var, &col_var, &ln_f), alpha, p)?;
            }
        }
    }
    Ok(())
}

/// A convolution (or transposed one) summed over its kernel positions: `major` lines (output
/// units of a convolution, input units of a transposed one) of `per_group` entries each, entry
/// `(m, j)` at `(m·per_group + j)·kernel + k`; line `m` is in group `m / (major/groups)` and its
/// entry `j` joins unit `g·per_group + j` of the other side.
struct Grouped {
    major: usize,
    per_group: usize,
    groups: usize,
    kernel: usize,
    /// Major lines are output units (rows).
    rows_major: bool,
}

impl Grouped {
    /// Adds the block: dense without groups, sparse terms otherwise. `vars`: the variable of
    /// each row and column, and the log row factors.
    fn add<'s>(
        &self,
        st: &mut Structured<'s>,
        wu: &WeightUse,
        elems: &Elems<'s>,
        (row_var, col_var, ln_f): (&[u32], &[u32], &Option<Vec<f64>>),
        alpha: f64,
        p: f64,
    ) -> Result<(), StructuredError> {
        let non_finite = |index: usize| StructuredError::NonFinite {
            tensor: wu.tensor.clone(),
            node: wu.node.clone(),
            index,
        };
        let (major, per_group) = (self.major, self.per_group);
        let k = aggregate(elems, major * per_group, self.kernel, p).map_err(non_finite)?;
        if self.groups == 1 {
            let d = Dense::new(
                Elems::F64(Cow::Owned(k)),
                self.rows_major,
                row_var.to_vec(),
                col_var.to_vec(),
                ln_f.clone(),
                alpha,
                p,
                wu.node.clone(),
            )
            .map_err(non_finite)?;
            st.blocks.push(Block::Dense(d));
            return Ok(());
        }
        let per_line_group = major / self.groups.max(1);
        let mut terms = Vec::with_capacity(k.len());
        for m in 0..major {
            let g = m / per_line_group.max(1);
            for j in 0..per_group {
                let other = g * per_group + j;
                let (o, c) = if self.rows_major {
                    (m, other)
                } else {
                    (other, m)
                };
                let q = k[m * per_group + j];
                let lf = ln_f.as_ref().map_or(0.0, |f| f[o]);
                terms.push(term(row_var[o], col_var[c], alpha, p, q, lf));
            }
        }
        st.blocks
            .push(Block::Sparse(Sparse::new(terms, p, wu.node.clone())));
        Ok(())
    }
}

/// A sparse term `(row, col, ln(α·(|f|·q)^p))`.
fn term(r: u32, c: u32, alpha: f64, p: f64, q: f64, ln_f: f64) -> (u32, u32, f64) {
    let ln_k = if q > 0.0 {
        alpha.ln() + p * (q.ln() + ln_f)
    } else {
        f64::NEG_INFINITY
    };
    (r, c, ln_k)
}

/// `q[i] = (Σ_k |w[i·kernel + k]|^p)^{1/p}` over `lines` lines; the first non-finite element's
/// index on failure.
fn aggregate(e: &Elems<'_>, lines: usize, kernel: usize, p: f64) -> Result<Vec<f64>, usize> {
    let mut out = Vec::with_capacity(lines);
    for i in 0..lines {
        // scaled by the line maximum so that |w|^p neither overflows nor underflows
        let base = i * kernel;
        let mut m = 0.0f64;
        for k in 0..kernel {
            let v = e.abs_at(base + k);
            if !v.is_finite() {
                return Err(base + k);
            }
            m = m.max(v);
        }
        if m == 0.0 {
            out.push(0.0);
            continue;
        }
        let s: f64 = (0..kernel).map(|k| (e.abs_at(base + k) / m).powf(p)).sum();
        out.push(m * s.powf(1.0 / p));
    }
    Ok(out)
}

/// Element type of a tensor for error messages.
#[allow(dead_code)]
pub(crate) fn dtype_name(t: ElementType) -> &'static str {
    match t {
        ElementType::F16 => "f16",
        ElementType::BF16 => "bf16",
        ElementType::F32 => "f32",
        ElementType::F64 => "f64",
    }
}

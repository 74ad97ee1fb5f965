//! Storage of the structured problem: blocks of costs between variables.
//!
//! A *dense block* holds the magnitudes `q[a][b] ≥ 0` of one weight use, `a` the memory-major
//! index and `b` the minor one (rows and columns for a row-major tensor, the reverse for a
//! column-major one). Its cost terms are
//!
//! ```text
//! V[o][j] = α·(|f_o|·q[o][j])^p · e^{p(x_{r(o)} − c_j·x_{c(j)})}
//! ```
//!
//! with `r(o)` the variable of row `o`, `c(j)` the variable of column `j` (`x = 0` on fixed
//! ends), `c_j` its degree and `f_o` an optional row factor. For a plain Linear use (one column
//! per input unit, no kernel) `q` is the borrowed tensor itself in its stored type (`f16`, `bf16`,
//! `f32`, `f64`): nothing is copied and `|q|^p` is formed on the fly in every pass. A convolution,
//! a flatten (several columns onto one unit) or a transposed convolution is first aggregated
//! to `K[o][col] = Σ_k |w[o, col, k]|^p` over kernel positions and merged columns, stored owned
//! as `q = K^{1/p}` in `f64` (a factor `kernel` smaller than the tensor).
//!
//! Every block keeps the maximum of `q` along each major line (`M_a`) and each minor line
//! (`N_b`), as logarithms: the passes form `(q/M_a)^p` and `(q/N_b)^p`, both at most 1, and carry
//! the magnitudes in logs, so weights of `1e±150` and large `p` neither overflow nor underflow.
//!
//! A *sparse block* lists its terms one by one (`ln K_e`, the two variables): grouped and
//! depthwise convolutions, irregular graphs. A term whose two ends are the same variable of
//! degree `c ≠ 1` is a *unary* term `K·e^{p(1−c)x}`; biases are unary terms `|b|^p·e^{p x}`.

use super::spec::{ElementType, FIXED};
use std::borrow::Cow;

/// Borrowed or owned magnitudes of a dense block, in memory order (`major × minor`).
#[derive(Debug, Clone)]
pub(crate) enum Elems<'a> {
    /// `f32` elements.
    F32(Cow<'a, [f32]>),
    /// `f64` elements.
    F64(Cow<'a, [f64]>),
    /// IEEE half.
    F16(Cow<'a, [half::f16]>),
    /// bfloat16.
    BF16(Cow<'a, [half::bf16]>),
}

impl Elems<'_> {
    pub(crate) fn len(&self) -> usize {
        match self {
            Elems::F32(v) => v.len(),
            Elems::F64(v) => v.len(),
            Elems::F16(v) => v.len(),
            Elems::BF16(v) => v.len(),
        }
    }

    /// `|q[i]|` as `f64`.
    #[inline]
    pub(crate) fn abs_at(&self, i: usize) -> f64 {
        match self {
            Elems::F32(v) => (v[i] as f64).abs(),
            Elems::F64(v) => v[i].abs(),
            Elems::F16(v) => (v[i].to_f64()).abs(),
            Elems::BF16(v) => (v[i].to_f64()).abs(),
        }
    }

    /// Bytes held by this block beyond what it borrows.
    pub(crate) fn owned_bytes(&self) -> usize {
        match self {
            Elems::F32(Cow::Owned(v)) => 4 * v.len(),
            Elems::F64(Cow::Owned(v)) => 8 * v.len(),
            Elems::F16(Cow::Owned(v)) => 2 * v.len(),
            Elems::BF16(Cow::Owned(v)) => 2 * v.len(),
            _ => 0,
        }
    }
}

/// Reinterprets little-endian bytes as elements, borrowing when the bytes are aligned (always on
/// a little-endian machine for a memory-mapped file with aligned data), copying otherwise.
pub(crate) fn elems_from_bytes<'a>(dtype: ElementType, bytes: Cow<'a, [u8]>) -> Elems<'a> {
    fn cast<'a, T: Copy + Default>(
        bytes: Cow<'a, [u8]>,
        decode: impl Fn(&[u8]) -> T,
        size: usize,
    ) -> Cow<'a, [T]> {
        if let Cow::Borrowed(b) = bytes {
            if cfg!(target_endian = "little") {
                // SAFETY: T is a plain float type (every bit pattern valid); align_to only
                // returns a middle part that is correctly aligned for T.
                let (pre, mid, post) = unsafe { b.align_to::<T>() };
                if pre.is_empty() && post.is_empty() {
                    return Cow::Borrowed(mid);
                }
            }
        }
        Cow::Owned(bytes.chunks_exact(size).map(decode).collect())
    }
    match dtype {
        ElementType::F32 => Elems::F32(cast(
            bytes,
            |c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]),
            4,
        )),
        ElementType::F64 => Elems::F64(cast(
            bytes,
            |c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
            8,
        )),
        ElementType::F16 => Elems::F16(cast(bytes, |c| half::f16::from_le_bytes([c[0], c[1]]), 2)),
        ElementType::BF16 => {
            Elems::BF16(cast(bytes, |c| half::bf16::from_le_bytes([c[0], c[1]]), 2))
        }
    }
}

/// A dense block (see the module docs).
#[derive(Debug)]
pub(crate) struct Dense<'a> {
    /// Magnitudes `q`, `major × minor` in memory order.
    pub q: Elems<'a>,
    /// Major lines.
    pub major: usize,
    /// Minor lines.
    pub minor: usize,
    /// Whether the major index is the output row (row-major storage).
    pub rows_major: bool,
    /// Variable of each row ([`FIXED`] for fixed units).
    pub row_var: Vec<u32>,
    /// Variable of each column.
    pub col_var: Vec<u32>,
    /// `ln |f_o|` per row (`None`: all 0).
    pub ln_row_factor: Option<Vec<f64>>,
    /// `ln α` (α > 0).
    pub ln_alpha: f64,
    /// The power `p`.
    pub p: f64,
    /// `ln M_a = ln max_b q[a][b]` per major line (`−∞` for an empty line).
    pub ln_major_max: Vec<f64>,
    /// `1/M_a` (0 for an empty line).
    pub inv_major_max: Vec<f64>,
    /// `ln N_b = ln max_a q[a][b]` per minor line.
    pub ln_minor_max: Vec<f64>,
    /// `1/N_b` (0 for an empty line).
    pub inv_minor_max: Vec<f64>,
    /// Node or layer name (debug output).
    #[allow(dead_code)]
    pub node: String,
}

impl<'a> Dense<'a> {
    /// A block over `q` (`major × minor`), computing the line maxima in one pass; the index of
    /// the first non-finite element on failure.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        q: Elems<'a>,
        rows_major: bool,
        row_var: Vec<u32>,
        col_var: Vec<u32>,
        ln_row_factor: Option<Vec<f64>>,
        alpha: f64,
        p: f64,
        node: String,
    ) -> Result<Self, usize> {
        let (major, minor) = if rows_major {
            (row_var.len(), col_var.len())
        } else {
            (col_var.len(), row_var.len())
        };
        debug_assert_eq!(q.len(), major * minor);
        let mut mmax = vec![0.0f64; major];
        let mut nmax = vec![0.0f64; minor];
        for (a, mm) in mmax.iter_mut().enumerate() {
            let base = a * minor;
            for (b, nm) in nmax.iter_mut().enumerate() {
                let v = q.abs_at(base + b);
                if !v.is_finite() {
                    return Err(base + b);
                }
                if v > *mm {
                    *mm = v;
                }
                if v > *nm {
                    *nm = v;
                }
            }
        }
        let ln = |m: &f64| if *m > 0.0 { m.ln() } else { f64::NEG_INFINITY };
        let inv = |m: &f64| if *m > 0.0 { 1.0 / m } else { 0.0 };
        Ok(Dense {
            q,
            major,
            minor,
            rows_major,
            row_var,
            col_var,
            ln_row_factor,
            ln_alpha: alpha.ln(),
            p,
            ln_major_max: mmax.iter().map(ln).collect(),
            inv_major_max: mmax.iter().map(inv).collect(),
            ln_minor_max: nmax.iter().map(ln).collect(),
            inv_minor_max: nmax.iter().map(inv).collect(),
            node,
        })
    }

    /// Variables of the major lines.
    pub(crate) fn major_vars(&self) -> &[u32] {
        if self.rows_major {
            &self.row_var
        } else {
            &self.col_var
        }
    }

    /// Variables of the minor lines.
    pub(crate) fn minor_vars(&self) -> &[u32] {
        if self.rows_major {
            &self.col_var
        } else {
            &self.row_var
        }
    }

    /// Number of stored magnitudes.
    pub(crate) fn len(&self) -> usize {
        self.major * self.minor
    }
}

/// A sparse block: terms `K_e·e^{p(x_{r_e} − c·x_{c_e})}` listed one by one, sorted by row
/// variable, with a permutation sorting them by column variable.
#[derive(Debug, Clone)]
pub(crate) struct Sparse {
    /// Row variable per term.
    pub row: Vec<u32>,
    /// Column variable per term.
    pub col: Vec<u32>,
    /// `ln K_e`.
    pub ln_k: Vec<f64>,
    /// The power `p`.
    pub p: f64,
    /// Node or layer name (debug output).
    #[allow(dead_code)]
    pub node: String,
}

impl Sparse {
    /// Builds a block from unsorted terms; terms with `K = 0` are dropped.
    pub(crate) fn new(mut terms: Vec<(u32, u32, f64)>, p: f64, node: String) -> Self {
        terms.retain(|t| t.2 > f64::NEG_INFINITY);
        terms.sort_by_key(|t| (t.0, t.1));
        Sparse {
            row: terms.iter().map(|t| t.0).collect(),
            col: terms.iter().map(|t| t.1).collect(),
            ln_k: terms.iter().map(|t| t.2).collect(),
            p,
            node,
        }
    }

    /// Number of terms.
    pub(crate) fn len(&self) -> usize {
        self.row.len()
    }
}

/// A term on one variable: `e^{ln_k + s·x_v}` (a bias: `s = p`; a self-loop of degree `c`:
/// `s = p(1 − c)`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Unary {
    /// The variable.
    pub var: u32,
    /// `ln K`.
    pub ln_k: f64,
    /// The slope `s`.
    pub s: f64,
    /// Whether it is a bias (an arc from the ground in the existence analysis).
    pub bias: bool,
}

/// One block of costs.
#[derive(Debug)]
pub(crate) enum Block<'a> {
    /// Dense (Linear, Conv aggregated, a complete bipartite layer pair).
    Dense(Dense<'a>),
    /// Sparse (grouped and depthwise convolutions, irregular graphs).
    Sparse(Sparse),
}

impl Block<'_> {
    /// The power of the block.
    pub(crate) fn p(&self) -> f64 {
        match self {
            Block::Dense(d) => d.p,
            Block::Sparse(s) => s.p,
        }
    }

    /// Number of stored terms.
    pub(crate) fn len(&self) -> usize {
        match self {
            Block::Dense(d) => d.len(),
            Block::Sparse(s) => s.len(),
        }
    }

    /// Remaps variables (held variables become [`FIXED`]).
    pub(crate) fn remap(&mut self, map: &[u32]) {
        let f = |v: &mut u32| {
            if *v != FIXED {
                *v = map[*v as usize];
            }
        };
        match self {
            Block::Dense(d) => {
                d.row_var.iter_mut().for_each(f);
                d.col_var.iter_mut().for_each(f);
            }
            Block::Sparse(s) => {
                s.row.iter_mut().for_each(f);
                s.col.iter_mut().for_each(f);
            }
        }
    }
}

/// The structured problem: variables with degrees, blocks, unary terms and a constant.
#[derive(Debug)]
pub(crate) struct Structured<'a> {
    /// Degree `c_v` per variable.
    pub degree: Vec<f64>,
    /// Whether variable `v` is solved for (false: held at 0).
    pub free: Vec<bool>,
    /// The blocks.
    pub blocks: Vec<Block<'a>>,
    /// Unary terms (biases, self-loops of degree ≠ 1).
    pub unary: Vec<Unary>,
    /// `ln` of the cost of terms that depend on no variable.
    pub ln_const: f64,
    /// Distinct powers of blocks and unary in-side terms, increasing.
    pub powers: Vec<f64>,
}

impl Structured<'_> {
    /// Number of variables.
    pub(crate) fn num_vars(&self) -> usize {
        self.degree.len()
    }

    /// Total stored terms.
    pub(crate) fn num_terms(&self) -> usize {
        self.blocks.iter().map(|b| b.len()).sum::<usize>() + self.unary.len()
    }

    /// Index of power `p` in [`Structured::powers`].
    pub(crate) fn power_index(&self, p: f64) -> usize {
        self.powers
            .iter()
            .position(|&q| q == p)
            .expect("every block power is listed")
    }

    /// Bytes owned by the blocks (aggregated and copied magnitudes, sparse terms, line maxima).
    pub(crate) fn owned_bytes(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| match b {
                Block::Dense(d) => {
                    d.q.owned_bytes() + 16 * (d.major + d.minor) + 4 * (d.major + d.minor)
                }
                Block::Sparse(s) => 16 * s.len(),
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_bytes_are_borrowed_and_decoded() {
        let v = [1.5f32, -2.0, 3.25];
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        // a Vec<u8> from a Vec<f32> iterator is not guaranteed aligned: check both outcomes decode
        let e = elems_from_bytes(ElementType::F32, Cow::Borrowed(&bytes));
        assert_eq!(e.len(), 3);
        assert_eq!(e.abs_at(1), 2.0);
        let owned = elems_from_bytes(ElementType::F32, Cow::Owned(bytes.clone()));
        assert_eq!(owned.abs_at(2), 3.25);
        let h: Vec<u8> = [half::f16::from_f64(-0.5)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            elems_from_bytes(ElementType::F16, Cow::Owned(h)).abs_at(0),
            0.5
        );
    }

    #[test]
    fn dense_line_maxima() {
        // 2 rows × 3 cols, row-major
        let q = Elems::F64(Cow::Owned(vec![1.0, -4.0, 2.0, 0.0, 3.0, -8.0]));
        let d = Dense::new(
            q,
            true,
            vec![0, 1],
            vec![FIXED; 3],
            None,
            1.0,
            2.0,
            "l".into(),
        )
        .unwrap();
        assert_eq!(d.inv_major_max, vec![0.25, 0.125]);
        assert_eq!(d.inv_minor_max, vec![1.0, 0.25, 0.125]);
        assert_eq!(d.ln_major_max[0], 4f64.ln());
    }
}

//! Structure of a [`Structured`] problem: which variables have a finite optimum, the coarse
//! modes of the Newton preconditioner and a colouring of the variables for parallel sweeps.
//!
//! Existence (the same rule as [`crate::structure`] for networks): merge the fixed units and
//! the bias source into one ground vertex; with positive-cost arcs `column → row`, a variable
//! has a finite balanced scale when it lies in the ground's strongly connected component. A
//! dense block enters the graph through one hub vertex (`column → hub → row` for every
//! nonzero column and row), i.e. it is treated as complete bipartite on its nonzero lines.

use super::spec::FIXED;
use super::store::{Block, Structured};
use crate::structure::scc;

/// Per variable: why it is held at 0 (no finite optimum or no cost at all), or `None`.
pub(crate) fn held_variables(st: &Structured<'_>) -> Vec<Option<String>> {
    let n = st.num_vars();
    let hubs: usize = st
        .blocks
        .iter()
        .filter(|b| matches!(b, Block::Dense(_)))
        .count();
    let ground = n;
    let nv = n + 1 + hubs;
    let node = |v: u32| if v == FIXED { ground } else { v as usize };
    let mut arcs: Vec<(u32, u32)> = Vec::new();
    let mut has_term = vec![false; n];
    let mut hub = n + 1;
    for b in &st.blocks {
        match b {
            Block::Dense(d) => {
                let (mmax, nmax) = (&d.ln_major_max, &d.ln_minor_max);
                let (row_live, col_live): (Vec<bool>, Vec<bool>) = if d.rows_major {
                    (
                        mmax.iter().map(|m| m.is_finite()).collect(),
                        nmax.iter().map(|m| m.is_finite()).collect(),
                    )
                } else {
                    (
                        nmax.iter().map(|m| m.is_finite()).collect(),
                        mmax.iter().map(|m| m.is_finite()).collect(),
                    )
                };
                let row_live: Vec<bool> = row_live
                    .iter()
                    .enumerate()
                    .map(|(o, &l)| {
                        l && d
                            .ln_row_factor
                            .as_ref()
                            .is_none_or(|f| f[o] > f64::NEG_INFINITY)
                    })
                    .collect();
                for (o, &v) in d.row_var.iter().enumerate() {
                    if row_live[o] {
                        arcs.push((hub as u32, node(v) as u32));
                        if v != FIXED {
                            has_term[v as usize] = true;
                        }
                    }
                }
                for (j, &v) in d.col_var.iter().enumerate() {
                    if col_live[j] {
                        arcs.push((node(v) as u32, hub as u32));
                        if v != FIXED {
                            has_term[v as usize] = true;
                        }
                    }
                }
                hub += 1;
            }
            Block::Sparse(s) => {
                for e in 0..s.len() {
                    let (r, c) = (s.row[e], s.col[e]);
                    if r == c {
                        if r != FIXED && st.degree[r as usize] != 1.0 {
                            has_term[r as usize] = true;
                        }
                        continue;
                    }
                    for v in [r, c] {
                        if v != FIXED {
                            has_term[v as usize] = true;
                        }
                    }
                    arcs.push((node(c) as u32, node(r) as u32));
                }
            }
        }
    }
    for u in &st.unary {
        if u.var != FIXED {
            has_term[u.var as usize] = true;
            if u.bias {
                arcs.push((ground as u32, u.var));
            }
        }
    }
    let mut ptr = vec![0usize; nv + 1];
    for &(a, _) in &arcs {
        ptr[a as usize + 1] += 1;
    }
    for v in 0..nv {
        ptr[v + 1] += ptr[v];
    }
    let mut fill = ptr.clone();
    let mut adj = vec![0u32; arcs.len()];
    for &(a, b) in &arcs {
        adj[fill[a as usize]] = b;
        fill[a as usize] += 1;
    }
    let comp = scc(nv, &ptr, &adj);
    let gcomp = comp[ground];
    // input and output sides through hubs: a variable has input cost if an arc enters it
    let mut has_in = vec![false; n];
    let mut has_out = vec![false; n];
    for &(a, b) in &arcs {
        if (a as usize) < n {
            has_out[a as usize] = true;
        }
        if (b as usize) < n {
            has_in[b as usize] = true;
        }
    }
    (0..n)
        .map(|v| {
            if !has_term[v] {
                Some("no weight or bias of positive cost: every scale is optimal".to_string())
            } else if comp[v] == gcomp {
                None
            } else if !has_in[v] {
                Some("input cost is 0 (no incoming weight or bias of positive cost)".into())
            } else if !has_out[v] {
                Some("output cost is 0 (no outgoing weight of positive cost)".into())
            } else {
                Some(
                    "on a weight of positive cost that lies on no cycle through the fixed units"
                        .into(),
                )
            }
        })
        .collect()
}

/// Coarse modes from sets of variables: sets sharing a variable are merged (ties); variables
/// in no set get the mode of their first dense block's row set, else one mode each by
/// breadth-first level from the fixed units. Returns `(mode per variable, number of modes)`.
pub(crate) fn modes_from_sets(st: &Structured<'_>, sets: &[Vec<u32>]) -> (Vec<u32>, usize) {
    let n = st.num_vars();
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    let mut covered = vec![false; n];
    let union = |vars: &[u32], parent: &mut Vec<usize>, covered: &mut Vec<bool>| {
        let mut first: Option<usize> = None;
        for &v in vars {
            if v == FIXED || !st.free[v as usize] {
                continue;
            }
            let v = v as usize;
            covered[v] = true;
            match first {
                None => first = Some(v),
                Some(f) => {
                    let (a, b) = (find(parent, f), find(parent, v));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                }
            }
        }
    };
    for s in sets {
        union(s, &mut parent, &mut covered);
    }
    // uncovered variables: the row set of each dense block they belong to
    for b in &st.blocks {
        if let Block::Dense(d) = b {
            let rows: Vec<u32> = d
                .row_var
                .iter()
                .copied()
                .filter(|&v| v != FIXED && !covered[v as usize])
                .collect();
            union(&rows, &mut parent, &mut covered);
        }
    }
    // the rest: breadth-first level over sparse terms from the ground
    let level = bfs_levels(st);
    let mut mode = vec![u32::MAX; n];
    let mut ids: std::collections::HashMap<(bool, usize), u32> = Default::default();
    for v in 0..n {
        if !st.free[v] {
            continue;
        }
        let key = if covered[v] {
            (true, find(&mut parent, v))
        } else {
            (false, level[v])
        };
        let next = ids.len() as u32;
        mode[v] = *ids.entry(key).or_insert(next);
    }
    let count = ids.len();
    (mode, count)
}

/// Breadth-first distance of every variable from the fixed units over sparse terms (dense
/// blocks count as one step); unreachable variables get level 0.
fn bfs_levels(st: &Structured<'_>) -> Vec<usize> {
    let n = st.num_vars();
    let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut start = Vec::new();
    for b in &st.blocks {
        if let Block::Sparse(s) = b {
            for e in 0..s.len() {
                let (r, c) = (s.row[e], s.col[e]);
                match (r == FIXED, c == FIXED) {
                    (false, true) => start.push(r),
                    (true, false) => start.push(c),
                    (false, false) if r != c => {
                        adj[r as usize].push(c);
                        adj[c as usize].push(r);
                    }
                    _ => {}
                }
            }
        }
    }
    let mut level = vec![usize::MAX; n];
    let mut queue = std::collections::VecDeque::new();
    for v in start {
        if level[v as usize] == usize::MAX {
            level[v as usize] = 1;
            queue.push_back(v);
        }
    }
    while let Some(v) = queue.pop_front() {
        let l = level[v as usize];
        for &w in &adj[v as usize] {
            if level[w as usize] == usize::MAX {
                level[w as usize] = l + 1;
                queue.push_back(w);
            }
        }
    }
    level
        .into_iter()
        .map(|l| if l == usize::MAX { 0 } else { l })
        .collect()
}

/// Occurrences of variables in blocks: `(block, side, line)` per variable, CSR.
#[derive(Debug, Clone, Default)]
pub(crate) struct Occurrences {
    /// Offsets per variable.
    pub ptr: Vec<usize>,
    /// `(block, is_major, line)`; for sparse blocks `line` is the term and `is_major` says
    /// whether the variable is its row end.
    pub occ: Vec<(u32, bool, u32)>,
}

impl Occurrences {
    /// Indexes every line (dense) and term end (sparse) of every free variable.
    pub(crate) fn new(st: &Structured<'_>) -> Self {
        let n = st.num_vars();
        let mut items: Vec<(u32, u32, bool, u32)> = Vec::new();
        for (bi, b) in st.blocks.iter().enumerate() {
            match b {
                Block::Dense(d) => {
                    for (a, &v) in d.major_vars().iter().enumerate() {
                        if v != FIXED {
                            items.push((v, bi as u32, true, a as u32));
                        }
                    }
                    for (bb, &v) in d.minor_vars().iter().enumerate() {
                        if v != FIXED {
                            items.push((v, bi as u32, false, bb as u32));
                        }
                    }
                }
                Block::Sparse(s) => {
                    for e in 0..s.len() {
                        let (r, c) = (s.row[e], s.col[e]);
                        if r != FIXED {
                            items.push((r, bi as u32, true, e as u32));
                        }
                        if c != FIXED && c != r {
                            items.push((c, bi as u32, false, e as u32));
                        }
                    }
                }
            }
        }
        items.sort_unstable();
        let mut ptr = vec![0usize; n + 1];
        for it in &items {
            ptr[it.0 as usize + 1] += 1;
        }
        for v in 0..n {
            ptr[v + 1] += ptr[v];
        }
        Occurrences {
            ptr,
            occ: items.into_iter().map(|t| (t.1, t.2, t.3)).collect(),
        }
    }

    /// The occurrences of variable `v`.
    pub(crate) fn of(&self, v: usize) -> &[(u32, bool, u32)] {
        &self.occ[self.ptr[v]..self.ptr[v + 1]]
    }
}

/// Colour classes of free variables such that no two variables of one class share a term
/// (greedy, variables visited by mode then index). Balancing a whole class at once is then the
/// same as balancing its variables one after the other.
pub(crate) fn colour_classes(
    st: &Structured<'_>,
    occ: &Occurrences,
    mode: &[u32],
) -> Vec<Vec<u32>> {
    let n = st.num_vars();
    let nb = st.blocks.len();
    // colours used on each side of each dense block (bit sets), and per variable
    let mut side_mask = vec![[0u64; 2]; nb];
    let mut colour = vec![u32::MAX; n];
    let mut order: Vec<u32> = (0..n as u32).filter(|&v| st.free[v as usize]).collect();
    order.sort_by_key(|&v| (mode[v as usize], v));
    let mut classes: Vec<Vec<u32>> = Vec::new();
    let mut singles: Vec<u32> = Vec::new();
    for &v in &order {
        let mut forbidden = 0u64;
        for &(b, major, line) in occ.of(v as usize) {
            match &st.blocks[b as usize] {
                // index 1: colours on the major side, 0: on the minor side
                Block::Dense(_) => forbidden |= side_mask[b as usize][usize::from(!major)],
                Block::Sparse(s) => {
                    let e = line as usize;
                    let other = if major { s.col[e] } else { s.row[e] };
                    if other != FIXED && other != v {
                        // variables beyond 64 colours run in classes of their own
                        let c = colour[other as usize];
                        if c < 64 {
                            forbidden |= 1 << c;
                        }
                    }
                }
            }
        }
        if forbidden == u64::MAX {
            colour[v as usize] = 64;
            singles.push(v);
            continue;
        }
        let c = forbidden.trailing_ones();
        colour[v as usize] = c;
        if classes.len() <= c as usize {
            classes.resize(c as usize + 1, Vec::new());
        }
        classes[c as usize].push(v);
        for &(b, major, _) in occ.of(v as usize) {
            if let Block::Dense(_) = &st.blocks[b as usize] {
                side_mask[b as usize][usize::from(major)] |= 1 << c;
            }
        }
    }
    classes.extend(singles.into_iter().map(|v| vec![v]));
    classes
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::structured::store::{Dense, Elems, Sparse};
    use std::borrow::Cow;

    #[test]
    fn colour_classes_share_no_term() {
        // a chain of three dense layers 0 → 1 → 2 (two variables each) plus a sparse skip 0 → 2
        let dense = |rows: Vec<u32>, cols: Vec<u32>| {
            let q = Elems::F64(Cow::Owned(vec![1.0; rows.len() * cols.len()]));
            Block::Dense(Dense::new(q, true, rows, cols, None, 1.0, 2.0, "l".into()).unwrap())
        };
        let st = Structured {
            degree: vec![1.0; 6],
            free: vec![true; 6],
            blocks: vec![
                dense(vec![0, 1], vec![FIXED]),
                dense(vec![2, 3], vec![0, 1]),
                dense(vec![4, 5], vec![2, 3]),
                Block::Sparse(Sparse::new(vec![(4, 0, 0.0)], 2.0, "skip".into())),
            ],
            unary: Vec::new(),
            ln_const: f64::NEG_INFINITY,
            powers: vec![2.0],
        };
        let occ = Occurrences::new(&st);
        let classes = colour_classes(&st, &occ, &[0, 0, 1, 1, 2, 2]);
        let mut colour = [usize::MAX; 6];
        for (k, c) in classes.iter().enumerate() {
            for &v in c {
                colour[v as usize] = k;
            }
        }
        assert!(
            colour.iter().all(|&c| c != usize::MAX),
            "every variable coloured"
        );
        for (a, b) in [
            (0, 2),
            (0, 3),
            (1, 2),
            (1, 3),
            (2, 4),
            (3, 5),
            (2, 5),
            (0, 4),
        ] {
            assert_ne!(colour[a], colour[b], "{a} and {b} share a term");
        }
        // the skip forbids the red-black pattern for 0 and 4 only: three classes
        assert_eq!(classes.len(), 3);
    }

    #[test]
    fn scc_finds_cycles() {
        // 0 → 1 → 2 → 0, 3 → 0
        let ptr = [0, 1, 2, 3, 4];
        let adj = [1u32, 2, 0, 0];
        let c = scc(4, &ptr, &adj);
        assert_eq!(c[0], c[1]);
        assert_eq!(c[1], c[2]);
        assert_ne!(c[3], c[0]);
    }
}

//! Edge-major passes over the whole edge array for local balancing: the per-group sums
//! `In_g` and `c·Out_g` accumulated in fixed chunks (reduced in chunk order, so the result does
//! not depend on the thread count), and the balancing of a whole colour class in two streaming
//! passes.

use super::balancer::LocalBalancer;
use crate::network::{Network, NO_GROUP};
use rayon::prelude::*;

/// Edge-major passes: instead of following each group's incidence lists (the out-edges of a
/// neuron are strided through the edge arrays, one cache miss each), stream once over all edges
/// in fixed chunks, accumulating `In_g` and `c·Out_g` for the groups of interest into per-chunk
/// buffers (reduced in chunk order, so the result does not depend on the thread count), and
/// stream once more to apply the multipliers. Used for colour classes that touch a large share
/// of the edges (the layers of an MLP) and for the per-sweep imbalance measure.
#[derive(Debug, Clone)]
pub(crate) struct EdgeMajor {
    /// `(group of target, group of source)` per edge, `NO_GROUP` for fixed ends.
    ends: Vec<(u32, u32)>,
    chunk: usize,
    chunks: usize,
    k: usize,
    s_in: Vec<f64>,
    s_out: Vec<f64>,
    mask: Vec<bool>,
    m_in: Vec<f64>,
    m_out: Vec<f64>,
    m_int: Vec<f64>,
}

/// Fixed number of edge chunks (independent of the thread count, for reproducible sums).
const CHUNKS: usize = 16;

impl EdgeMajor {
    pub(crate) fn new(net: &Network) -> Self {
        let groups = net.groups();
        let k = groups.len();
        let m = net.num_edges();
        let ends = (0..m)
            .map(|e| {
                let (j, i) = net.edge(e);
                (groups.group_of(i), groups.group_of(j))
            })
            .collect();
        let chunks = if m >= 4096 { CHUNKS } else { 1 };
        let chunk = m.div_ceil(chunks).max(1);
        EdgeMajor {
            ends,
            chunk,
            chunks,
            k,
            s_in: vec![0.0; chunks * k],
            s_out: vec![0.0; chunks * k],
            mask: vec![false; k],
            m_in: vec![1.0; k],
            m_out: vec![1.0; k],
            m_int: vec![1.0; k],
        }
    }

    /// Accumulates `In_g` and `c·Out_g` (as [`LocalBalancer`]'s greedy sums: biases on the input
    /// side, internal edges of `c ≠ 1` groups on the side of `sign(1 − c)`) for every group when
    /// `all`, else for the groups marked in `mask`. Results in `s_in[..k]`, `s_out[..k]`.
    pub(crate) fn accumulate(
        &mut self,
        bal: &LocalBalancer,
        net: &Network,
        all: bool,
        parallel: bool,
    ) {
        let k = self.k;
        if k == 0 {
            return;
        }
        let (ends, mask, chunk) = (&self.ends, &self.mask, self.chunk);
        let degree = &bal.inc.degree;
        let body = |(c, (s_in, s_out)): (usize, (&mut [f64], &mut [f64]))| {
            s_in.fill(0.0);
            s_out.fill(0.0);
            let lo = (c * chunk).min(ends.len());
            let hi = ((c + 1) * chunk).min(ends.len());
            for (e, &(gi, gj)) in ends[lo..hi].iter().enumerate() {
                let e = lo + e;
                let ri = gi != NO_GROUP && (all || mask[gi as usize]);
                let rj = gj != NO_GROUP && (all || mask[gj as usize]);
                if !(ri || rj) {
                    continue;
                }
                let q = bal.q_edge(net, e);
                if gi == gj {
                    let g = gi as usize;
                    let cg = degree[g];
                    if cg < 1.0 {
                        s_in[g] += (1.0 - cg) * q;
                    } else if cg > 1.0 {
                        s_out[g] += (cg - 1.0) * q;
                    }
                    continue;
                }
                if ri {
                    s_in[gi as usize] += q;
                }
                if rj {
                    s_out[gj as usize] += degree[gj as usize] * q;
                }
            }
        };
        if parallel && self.chunks > 1 {
            self.s_in
                .par_chunks_mut(k)
                .zip(self.s_out.par_chunks_mut(k))
                .enumerate()
                .for_each(body);
        } else {
            self.s_in
                .chunks_mut(k)
                .zip(self.s_out.chunks_mut(k))
                .enumerate()
                .for_each(body);
        }
        for c in 1..self.chunks {
            for g in 0..k {
                self.s_in[g] += self.s_in[c * k + g];
                self.s_out[g] += self.s_out[c * k + g];
            }
        }
        let groups = net.groups();
        for i in 0..net.num_neurons() {
            let g = groups.group_of(i);
            if g != NO_GROUP && (all || self.mask[g as usize]) {
                self.s_in[g as usize] += bal.q_bias(net, i);
            }
        }
    }

    /// `(In_g, c·Out_g)` after [`EdgeMajor::accumulate`].
    #[inline]
    pub(crate) fn sums(&self, g: usize) -> (f64, f64) {
        (self.s_in[g], self.s_out[g])
    }

    /// Balances one independent class edge-major: one streaming pass accumulates the sums of the
    /// class's groups, the steps follow from the closed form (groups outside it go through
    /// [`LocalBalancer::log_scale`]), one streaming pass applies them. Same steps as the sequential
    /// sweep up to the order of the sums (rounding).
    pub(crate) fn balance_class(
        &mut self,
        bal: &mut LocalBalancer,
        net: &mut Network,
        class: &[u32],
    ) -> usize {
        let em = self;
        for &g in class {
            em.mask[g as usize] = !bal.is_held(g as usize);
        }
        em.accumulate(bal, net, false, true);
        let mut changed = 0;
        for &g in class {
            let g = g as usize;
            if !em.mask[g] {
                continue;
            }
            let (s_in, s_out) = em.sums(g);
            let normal = |s: f64| s.is_finite() && s > 1e-250;
            let c = bal.inc.degree[g];
            let step = match bal.lp_exponent() {
                Some(p)
                    if bal.fused()
                        && bal.inc.internal(g).is_empty()
                        && normal(s_in)
                        && normal(s_out) =>
                {
                    // s_out holds c·Out: t* = (ln(c·Out) − ln In) / (p(1 + c)).
                    Ok((s_out.ln() - s_in.ln()) / (p * (1.0 + c)))
                }
                _ => bal.log_scale(net, g),
            };
            match step {
                Ok(t) if t != 0.0 && t.is_finite() => {
                    bal.record(g, t);
                    changed += 1;
                    em.m_in[g] = t.exp();
                    em.m_out[g] = if c == 1.0 {
                        1.0 / em.m_in[g]
                    } else {
                        (-c * t).exp()
                    };
                    em.m_int[g] = if c == 1.0 { 1.0 } else { ((1.0 - c) * t).exp() };
                }
                Ok(_) => {}
                Err(e) => bal.hold(g, e),
            }
        }
        let (ends, chunk) = (&em.ends, em.chunk);
        let (m_in, m_out, m_int) = (&em.m_in, &em.m_out, &em.m_int);
        let (w, b) = net.params_mut();
        w.par_chunks_mut(chunk).enumerate().for_each(|(c, ws)| {
            let lo = c * chunk;
            let hi = lo + ws.len();
            for (x, &(gi, gj)) in ws.iter_mut().zip(&ends[lo..hi]) {
                if gi == gj {
                    if gi != NO_GROUP {
                        *x *= m_int[gi as usize];
                    }
                    continue;
                }
                if gi != NO_GROUP {
                    *x *= m_in[gi as usize];
                }
                if gj != NO_GROUP {
                    *x *= m_out[gj as usize];
                }
            }
        });
        for &g in class {
            let g = g as usize;
            if em.m_in[g] != 1.0 {
                for &i in bal.inc.members(g) {
                    b[i as usize] *= em.m_in[g];
                }
            }
            em.mask[g] = false;
            em.m_in[g] = 1.0;
            em.m_out[g] = 1.0;
            em.m_int[g] = 1.0;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::EdgeMajor;
    use crate::measure::group_flows;
    use crate::network::builders::{random_mlp, random_recurrent};
    use crate::network::{Activation, Network};
    use crate::regularizer::Regularizer;
    use crate::solve::balancer::LocalBalancer;

    fn nets() -> Vec<Network> {
        vec![
            // 16 chunks (at least 4096 edges)
            random_mlp(&[16, 48, 48, 48, 4], 1),
            // one chunk, self-loops (edges internal to a group)
            random_recurrent(3, 10, 2, Activation::Relu, 2),
        ]
    }

    #[test]
    fn sums_match_per_group_flows() {
        for p in [1.0, 2.0, 3.0] {
            let reg = Regularizer::lp(p).unwrap();
            for net in nets() {
                let bal = LocalBalancer::new(&net, &reg).unwrap();
                let mut em = EdgeMajor::new(&net);
                em.accumulate(&bal, &net, true, false);
                for g in 0..bal.num_groups() {
                    let (s_in, s_out) = em.sums(g);
                    let f = group_flows(&net, &reg, g);
                    assert!((s_in.ln() - f.ln_in).abs() < 1e-12, "p={p} In of {g}");
                    assert!((s_out.ln() - f.ln_out).abs() < 1e-12, "p={p} c·Out of {g}");
                }
            }
        }
    }

    #[test]
    fn parallel_and_masked_reductions_equal_the_sequential_one_bit_for_bit() {
        let reg = Regularizer::lp(2.0).unwrap();
        for net in nets() {
            let bal = LocalBalancer::new(&net, &reg).unwrap();
            let k = bal.num_groups();
            let mut seq = EdgeMajor::new(&net);
            seq.accumulate(&bal, &net, true, false);
            let mut par = EdgeMajor::new(&net);
            par.accumulate(&bal, &net, true, true);
            for g in 0..k {
                assert_eq!(seq.sums(g), par.sums(g), "group {g}");
            }
            // only every third group asked for: the same sums for those
            let mut masked = EdgeMajor::new(&net);
            for g in (0..k).step_by(3) {
                masked.mask[g] = true;
            }
            masked.accumulate(&bal, &net, false, true);
            for g in (0..k).step_by(3) {
                assert_eq!(masked.sums(g), seq.sums(g), "group {g}");
            }
        }
    }
}

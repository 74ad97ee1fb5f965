//! Scale groups: free neurons forced to share one scale, one variable of the balancing problem
//! each. By default every free neuron is a group of its own; convolution channels and identity
//! skip connections tie several neurons together.

use super::NetworkError;

/// Marks a fixed neuron (no group, `u = 0`).
pub const NO_GROUP: u32 = u32::MAX;

/// A partition of the free neurons into groups, each with one homogeneity degree `c`.
///
/// Groups are numbered by their smallest member, so the numbering is deterministic.
///
/// ```
/// use synbal::network::{ScaleGroups, NO_GROUP};
/// // neurons 0 and 3 fixed; 1, 2 and 4 free with degree 1; 2 and 4 tied
/// let free = [None, Some(1.0), Some(1.0), None, Some(1.0)];
/// let g = ScaleGroups::new(&free, &[vec![2, 4]]).unwrap();
/// assert_eq!(g.len(), 2);
/// assert_eq!(g.group_of(0), NO_GROUP);
/// assert_eq!(g.members(1), &[2, 4]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleGroups {
    group_of: Vec<u32>,
    ptr: Vec<usize>,
    members: Vec<u32>,
    degree: Vec<f64>,
}

fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

impl ScaleGroups {
    /// Builds groups from the degree of each neuron (`None` = fixed) and a list of ties.
    pub fn new(free: &[Option<f64>], ties: &[Vec<usize>]) -> Result<Self, NetworkError> {
        let n = free.len();
        let mut parent: Vec<usize> = (0..n).collect();
        for tie in ties {
            for &i in tie {
                if i >= n {
                    return Err(NetworkError::BadGroup {
                        neuron: i,
                        message: format!("neuron {i} does not exist ({n} neurons)"),
                    });
                }
                if free[i].is_none() {
                    return Err(NetworkError::BadGroup {
                        neuron: i,
                        message: format!("neuron {i} is fixed and cannot share a scale"),
                    });
                }
            }
            for w in tie.windows(2) {
                let (a, b) = (find(&mut parent, w[0]), find(&mut parent, w[1]));
                if a != b {
                    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
                    parent[hi] = lo;
                }
            }
        }
        let mut group_of = vec![NO_GROUP; n];
        let mut degree = Vec::new();
        let mut count = Vec::new();
        for i in 0..n {
            if let Some(c) = free[i] {
                let r = find(&mut parent, i);
                if r == i {
                    group_of[i] = degree.len() as u32;
                    degree.push(c);
                    count.push(0usize);
                } else {
                    let g = group_of[r] as usize;
                    if degree[g] != c {
                        return Err(NetworkError::BadGroup {
                            neuron: i,
                            message: format!(
                                "degrees differ: neuron {r} has {} and neuron {i} has {c}",
                                degree[g]
                            ),
                        });
                    }
                    group_of[i] = g as u32;
                }
                count[group_of[i] as usize] += 1;
            }
        }
        let mut ptr = vec![0usize; degree.len() + 1];
        for (g, &k) in count.iter().enumerate() {
            ptr[g + 1] = ptr[g] + k;
        }
        let mut fill = ptr.clone();
        let mut members = vec![0u32; ptr[degree.len()]];
        for (i, &g) in group_of.iter().enumerate() {
            if g != NO_GROUP {
                members[fill[g as usize]] = i as u32;
                fill[g as usize] += 1;
            }
        }
        Ok(ScaleGroups {
            group_of,
            ptr,
            members,
            degree,
        })
    }

    /// Number of groups (variables of the problem).
    #[inline]
    pub fn len(&self) -> usize {
        self.degree.len()
    }

    /// Whether there is no free neuron at all.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.degree.is_empty()
    }

    /// The group of neuron `i`, or [`NO_GROUP`] for a fixed neuron.
    #[inline]
    pub fn group_of(&self, i: usize) -> u32 {
        self.group_of[i]
    }

    /// The group of neuron `i`, `None` for a fixed neuron.
    #[inline]
    pub fn group(&self, i: usize) -> Option<usize> {
        let g = self.group_of[i];
        (g != NO_GROUP).then_some(g as usize)
    }

    /// Group of each neuron ([`NO_GROUP`] for fixed ones).
    #[inline]
    pub fn group_index(&self) -> &[u32] {
        &self.group_of
    }

    /// The neurons of group `g`, increasing.
    #[inline]
    pub fn members(&self, g: usize) -> &[u32] {
        &self.members[self.ptr[g]..self.ptr[g + 1]]
    }

    /// The homogeneity degree `c` shared by the members of group `g`.
    #[inline]
    pub fn degree(&self, g: usize) -> f64 {
        self.degree[g]
    }

    /// Whether every group is a single neuron.
    pub fn all_singletons(&self) -> bool {
        self.members.len() == self.degree.len()
    }
}

//! Regularizers `R = Σ_e α_e·g_e(|w_e|) + Σ_i g(|b_i|)`.
//!
//! A [`Penalty`] is a function `g ≥ 0`, increasing on `[0, ∞)` with `g(0) = 0`. Balancing works in
//! the log domain: scaling a weight by `e^t` turns its cost into `h(t) = g(x·e^t)` (`x = |w|`), so a
//! penalty provides `g(x)`, `h'(0) = x·g'(x)` and `h''(0) = x·g'(x) + x²·g''(x)`. For every penalty
//! here `h` is convex, so the total cost is convex in the log-scales.
//!
//! For `L_p` (`g(x) = x^p`): `h' = p·x^p`, `h'' = p²·x^p`, and neuron balance
//! `Σ_in x·g'(x) = c·Σ_out x·g'(x)` is the familiar `cost_in = c·cost_out`.

use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// A per-weight penalty `g(|w|)` used through its log-domain derivatives.
pub trait PenaltyFn: Send + Sync + fmt::Debug {
    /// `g(x)` for `x ≥ 0`.
    fn value(&self, x: f64) -> f64;
    /// `x·g'(x)`: the derivative of `g(x·e^t)` in `t` at `t = 0`.
    fn x_dg(&self, x: f64) -> f64;
    /// `x·g'(x) + x²·g''(x)`: the second derivative of `g(x·e^t)` in `t` at `t = 0`.
    fn curvature(&self, x: f64) -> f64;
    /// `Some(p)` when `g(x) = x^p` exactly (enables closed forms).
    fn lp_exponent(&self) -> Option<f64> {
        None
    }
}

/// Built-in penalties, plus user-defined ones through [`PenaltyFn`].
#[derive(Debug, Clone)]
pub enum Penalty {
    /// `g(x) = x^p`, `p > 0`.
    Lp(f64),
    /// `g(x) = l1·x + l2·x²` (elastic net), `l1, l2 ≥ 0`, not both 0.
    ElasticNet {
        /// L1 coefficient.
        l1: f64,
        /// L2 coefficient.
        l2: f64,
    },
    /// A user-defined penalty.
    Custom(Arc<dyn PenaltyFn>),
}

impl Penalty {
    /// `g(x)`.
    ///
    /// ```
    /// use synbal::regularizer::Penalty;
    /// assert_eq!(Penalty::Lp(2.0).value(3.0), 9.0);
    /// assert_eq!(Penalty::ElasticNet { l1: 1.0, l2: 0.5 }.value(2.0), 4.0);
    /// ```
    #[inline]
    pub fn value(&self, x: f64) -> f64 {
        match self {
            Penalty::Lp(p) => lp_pow(x, *p),
            Penalty::ElasticNet { l1, l2 } => l1 * x + l2 * x * x,
            Penalty::Custom(f) => f.value(x),
        }
    }

    /// `x·g'(x)`.
    ///
    /// ```
    /// use synbal::regularizer::Penalty;
    /// assert_eq!(Penalty::Lp(2.0).x_dg(3.0), 18.0);
    /// ```
    #[inline]
    pub fn x_dg(&self, x: f64) -> f64 {
        match self {
            Penalty::Lp(p) => p * lp_pow(x, *p),
            Penalty::ElasticNet { l1, l2 } => l1 * x + 2.0 * l2 * x * x,
            Penalty::Custom(f) => f.x_dg(x),
        }
    }

    /// `x·g'(x) + x²·g''(x)`.
    ///
    /// ```
    /// use synbal::regularizer::Penalty;
    /// assert_eq!(Penalty::Lp(2.0).curvature(3.0), 36.0);
    /// ```
    #[inline]
    pub fn curvature(&self, x: f64) -> f64 {
        match self {
            Penalty::Lp(p) => p * p * lp_pow(x, *p),
            Penalty::ElasticNet { l1, l2 } => l1 * x + 4.0 * l2 * x * x,
            Penalty::Custom(f) => f.curvature(x),
        }
    }

    /// `Some(p)` for `L_p`.
    pub fn lp_exponent(&self) -> Option<f64> {
        match self {
            Penalty::Lp(p) => Some(*p),
            Penalty::ElasticNet { l1, l2 } if *l1 == 0.0 && *l2 > 0.0 => None,
            Penalty::ElasticNet { .. } => None,
            Penalty::Custom(f) => f.lp_exponent(),
        }
    }

    fn validate(&self) -> Result<(), RegularizerError> {
        match *self {
            Penalty::Lp(p) if !(p.is_finite() && p > 0.0) => Err(RegularizerError::BadExponent(p)),
            Penalty::ElasticNet { l1, l2 }
                if !(l1.is_finite()
                    && l2.is_finite()
                    && l1 >= 0.0
                    && l2 >= 0.0
                    && l1 + l2 > 0.0) =>
            {
                Err(RegularizerError::BadElasticNet { l1, l2 })
            }
            _ => Ok(()),
        }
    }
}

/// `x^p` with fast paths for the common exponents.
#[inline]
pub fn lp_pow(x: f64, p: f64) -> f64 {
    if p == 2.0 {
        x * x
    } else if p == 1.0 {
        x
    } else {
        x.powf(p)
    }
}

/// Invalid regularizer settings.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum RegularizerError {
    /// `p` must be finite and `> 0`.
    #[error("the L_p exponent p must be finite and > 0, got {0}")]
    BadExponent(f64),
    /// Elastic-net coefficients must be finite, `≥ 0`, not both 0.
    #[error(
        "elastic net coefficients must be finite, >= 0 and not both 0, got l1 = {l1}, l2 = {l2}"
    )]
    BadElasticNet {
        /// L1 coefficient.
        l1: f64,
        /// L2 coefficient.
        l2: f64,
    },
    /// The per-edge class array does not match the network.
    #[error("per-edge penalty classes: {0}")]
    BadClasses(String),
}

/// The regularizer of a balancing problem: one penalty per edge class (by default one class for
/// all edges), each edge's cost multiplied by its coefficient `α_e`, and biases counted with the
/// penalty of class `bias_class` (by default class 0) or not at all.
///
/// ```
/// use synbal::regularizer::Regularizer;
/// let r = Regularizer::lp(2.0).unwrap();
/// assert_eq!(r.uniform_lp(), Some(2.0));
/// assert!(r.counts_biases());
/// assert!(Regularizer::lp(0.0).is_err());
/// let r = Regularizer::elastic_net(1.0, 0.5).unwrap().without_biases();
/// assert!(!r.counts_biases());
/// ```
#[derive(Debug, Clone)]
pub struct Regularizer {
    classes: Vec<Penalty>,
    edge_class: Option<Arc<[u16]>>,
    bias_class: Option<u16>,
}

impl Regularizer {
    /// `L_p` on every edge and bias.
    pub fn lp(p: f64) -> Result<Self, RegularizerError> {
        Self::new(Penalty::Lp(p))
    }

    /// Elastic net `l1·|w| + l2·w²` on every edge and bias.
    pub fn elastic_net(l1: f64, l2: f64) -> Result<Self, RegularizerError> {
        Self::new(Penalty::ElasticNet { l1, l2 })
    }

    /// One penalty on every edge and bias.
    pub fn new(penalty: Penalty) -> Result<Self, RegularizerError> {
        penalty.validate()?;
        Ok(Regularizer {
            classes: vec![penalty],
            edge_class: None,
            bias_class: Some(0),
        })
    }

    /// Several penalties (e.g. `p` per layer): edge `e` uses `classes[edge_class[e]]`; biases
    /// use class 0.
    pub fn per_edge(classes: Vec<Penalty>, edge_class: Vec<u16>) -> Result<Self, RegularizerError> {
        if classes.is_empty() {
            return Err(RegularizerError::BadClasses("no penalty given".into()));
        }
        for c in &classes {
            c.validate()?;
        }
        if let Some((e, &k)) = edge_class
            .iter()
            .enumerate()
            .find(|(_, &k)| k as usize >= classes.len())
        {
            return Err(RegularizerError::BadClasses(format!(
                "edge {e} uses class {k} but only {} are given",
                classes.len()
            )));
        }
        Ok(Regularizer {
            classes,
            edge_class: Some(edge_class.into()),
            bias_class: Some(0),
        })
    }

    /// The same regularizer with biases not counted.
    pub fn without_biases(mut self) -> Self {
        self.bias_class = None;
        self
    }

    /// The same regularizer with biases counted with class `class`.
    pub fn with_bias_class(mut self, class: u16) -> Self {
        self.bias_class = Some(class.min(self.classes.len() as u16 - 1));
        self
    }

    /// Whether biases are part of the cost.
    #[inline]
    pub fn counts_biases(&self) -> bool {
        self.bias_class.is_some()
    }

    /// The penalty applied to edge `e`.
    #[inline]
    pub fn edge_penalty(&self, e: usize) -> &Penalty {
        match &self.edge_class {
            None => &self.classes[0],
            Some(c) => &self.classes[c[e] as usize],
        }
    }

    /// The penalty applied to biases, if they are counted.
    #[inline]
    pub fn bias_penalty(&self) -> Option<&Penalty> {
        self.bias_class.map(|c| &self.classes[c as usize])
    }

    /// The penalty classes.
    pub fn classes(&self) -> &[Penalty] {
        &self.classes
    }

    /// The per-edge class array, if any.
    pub fn edge_classes(&self) -> Option<&[u16]> {
        self.edge_class.as_deref()
    }

    /// `Some(p)` when every edge and bias uses `L_p` with the same `p` (closed forms apply).
    pub fn uniform_lp(&self) -> Option<f64> {
        let p = self.classes[0].lp_exponent()?;
        if self.classes.iter().all(|c| c.lp_exponent() == Some(p)) {
            Some(p)
        } else {
            None
        }
    }

    /// Checks that the per-edge classes match a network with `edges` edges.
    pub fn check_edges(&self, edges: usize) -> Result<(), RegularizerError> {
        match &self.edge_class {
            Some(c) if c.len() != edges => Err(RegularizerError::BadClasses(format!(
                "{} classes for {edges} edges",
                c.len()
            ))),
            _ => Ok(()),
        }
    }

    /// A short description, e.g. `"L2"` or `"elastic net (l1 = 1, l2 = 0.5)"`.
    pub fn describe(&self) -> String {
        let one = |p: &Penalty| match p {
            Penalty::Lp(p) => format!("L{p}"),
            Penalty::ElasticNet { l1, l2 } => format!("elastic net (l1 = {l1}, l2 = {l2})"),
            Penalty::Custom(f) => format!("custom {f:?}"),
        };
        let mut s = self.classes.iter().map(one).collect::<Vec<_>>().join(" / ");
        if !self.counts_biases() {
            s.push_str(", biases not counted");
        }
        s
    }
}

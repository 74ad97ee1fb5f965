//! Activation functions and their homogeneity degree.
//!
//! A neuron can be rescaled without changing the network's function exactly when its activation
//! is *positively homogeneous*: `f(λx) = λ^c f(x)` for every `λ > 0`. Then scaling the incoming
//! weights and bias by `λ` and dividing the outgoing weights by `λ^c` leaves every output
//! unchanged. Linear, ReLU, leaky ReLU and BiLU have degree `c = 1`; BiPU
//! (`f(x) = pos·x^c` for `x ≥ 0`, `−neg·|x|^c` for `x < 0`) has degree `c`. Every other activation
//! (tanh, sigmoid, GELU, ...) makes its neuron fixed.

use serde::{Deserialize, Serialize};

/// An activation function.
///
/// ```
/// use synbal::network::Activation;
/// let a = Activation::Bilu { neg: 0.2, pos: 1.5 };
/// assert_eq!(a.apply(-1.0), -0.2);
/// assert_eq!(a.degree(), Some(1.0));
/// assert_eq!(Activation::Tanh.degree(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub enum Activation {
    /// `f(x) = x` (degree 1).
    #[default]
    Linear,
    /// `f(x) = max(x, 0)` (degree 1).
    Relu,
    /// `f(x) = x` for `x ≥ 0`, `slope·x` for `x < 0` (degree 1).
    LeakyRelu {
        /// Slope on the negative side.
        slope: f64,
    },
    /// Bilinear unit: `f(x) = neg·x` for `x < 0`, `pos·x` for `x ≥ 0` (degree 1).
    Bilu {
        /// Slope for `x < 0`.
        neg: f64,
        /// Slope for `x ≥ 0`.
        pos: f64,
    },
    /// Bipower unit of degree `c > 0`: `f(x) = pos·x^c` for `x ≥ 0`, `−neg·|x|^c` for `x < 0`.
    /// With `c = 1` it is BiLU.
    Bipu {
        /// Homogeneity degree `c > 0`.
        degree: f64,
        /// Coefficient for `x < 0`.
        neg: f64,
        /// Coefficient for `x ≥ 0`.
        pos: f64,
    },
    /// `tanh(x)`: not homogeneous, the neuron is fixed.
    Tanh,
    /// `1 / (1 + e^{−x})`: not homogeneous, the neuron is fixed.
    Sigmoid,
    /// `x·Φ(x)` (tanh approximation): not homogeneous, the neuron is fixed.
    Gelu,
    /// `ln(1 + e^x)`: not homogeneous, the neuron is fixed.
    Softplus,
}

impl Activation {
    /// The homogeneity degree `c` (`f(λx) = λ^c f(x)` for `λ > 0`), or `None` when the
    /// activation is not positively homogeneous.
    ///
    /// ```
    /// use synbal::network::Activation;
    /// assert_eq!(Activation::Bipu { degree: 2.0, neg: 0.0, pos: 1.0 }.degree(), Some(2.0));
    /// ```
    pub fn degree(&self) -> Option<f64> {
        match *self {
            Activation::Linear
            | Activation::Relu
            | Activation::LeakyRelu { .. }
            | Activation::Bilu { .. } => Some(1.0),
            Activation::Bipu { degree, .. } => Some(degree),
            Activation::Tanh | Activation::Sigmoid | Activation::Gelu | Activation::Softplus => {
                None
            }
        }
    }

    /// Whether a hidden neuron with this activation can be rescaled.
    ///
    /// ```
    /// use synbal::network::Activation;
    /// assert!(Activation::Relu.is_homogeneous());
    /// assert!(!Activation::Sigmoid.is_homogeneous());
    /// ```
    pub fn is_homogeneous(&self) -> bool {
        self.degree().is_some()
    }

    /// Evaluates `f(x)`.
    ///
    /// ```
    /// use synbal::network::Activation;
    /// assert_eq!(Activation::Relu.apply(-3.0), 0.0);
    /// assert_eq!(Activation::LeakyRelu { slope: 0.1 }.apply(-3.0), -0.30000000000000004);
    /// ```
    #[inline]
    pub fn apply(&self, x: f64) -> f64 {
        match *self {
            Activation::Linear => x,
            Activation::Relu => {
                if x > 0.0 {
                    x
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu { slope } => {
                if x >= 0.0 {
                    x
                } else {
                    slope * x
                }
            }
            Activation::Bilu { neg, pos } => {
                if x >= 0.0 {
                    pos * x
                } else {
                    neg * x
                }
            }
            Activation::Bipu { degree, neg, pos } => {
                if x >= 0.0 {
                    pos * x.powf(degree)
                } else {
                    -neg * (-x).powf(degree)
                }
            }
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Gelu => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (k * (x + 0.044715 * x * x * x)).tanh())
            }
            Activation::Softplus => {
                if x > 30.0 {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
        }
    }

    /// The derivative `f'(x)` (right derivative at kinks).
    ///
    /// ```
    /// use synbal::network::Activation;
    /// assert_eq!(Activation::Relu.derivative(2.0), 1.0);
    /// assert_eq!(Activation::Relu.derivative(-2.0), 0.0);
    /// ```
    #[inline]
    pub fn derivative(&self, x: f64) -> f64 {
        match *self {
            Activation::Linear => 1.0,
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::LeakyRelu { slope } => {
                if x >= 0.0 {
                    1.0
                } else {
                    slope
                }
            }
            Activation::Bilu { neg, pos } => {
                if x >= 0.0 {
                    pos
                } else {
                    neg
                }
            }
            Activation::Bipu { degree, neg, pos } => {
                if x >= 0.0 {
                    pos * degree * x.powf(degree - 1.0)
                } else {
                    neg * degree * (-x).powf(degree - 1.0)
                }
            }
            Activation::Tanh => 1.0 - x.tanh().powi(2),
            Activation::Sigmoid => {
                let s = 1.0 / (1.0 + (-x).exp());
                s * (1.0 - s)
            }
            Activation::Gelu => {
                let k = (2.0 / std::f64::consts::PI).sqrt();
                let inner = k * (x + 0.044715 * x * x * x);
                let t = inner.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x)
            }
            Activation::Softplus => 1.0 / (1.0 + (-x).exp()),
        }
    }

    /// The canonical name used in the network JSON format.
    ///
    /// ```
    /// use synbal::network::Activation;
    /// assert_eq!(Activation::LeakyRelu { slope: 0.01 }.name(), "leaky_relu");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Bilu { .. } => "bilu",
            Activation::Bipu { .. } => "bipu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Gelu => "gelu",
            Activation::Softplus => "softplus",
        }
    }

    /// Checks the parameters: finite slopes, `degree > 0`.
    ///
    /// ```
    /// use synbal::network::Activation;
    /// assert!(Activation::Bipu { degree: -1.0, neg: 1.0, pos: 1.0 }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(format!(
                    "{} parameter `{name}` is not finite ({v})",
                    self.name()
                ))
            }
        };
        match *self {
            Activation::LeakyRelu { slope } => finite("slope", slope),
            Activation::Bilu { neg, pos } => {
                finite("neg", neg)?;
                finite("pos", pos)
            }
            Activation::Bipu { degree, neg, pos } => {
                finite("neg", neg)?;
                finite("pos", pos)?;
                finite("degree", degree)?;
                if degree > 0.0 {
                    Ok(())
                } else {
                    Err(format!("bipu degree must be > 0, got {degree}"))
                }
            }
            _ => Ok(()),
        }
    }
}

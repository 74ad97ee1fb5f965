//! The network JSON format: one object with `neurons` and `edges` (and optionally `ties`).
//!
//! ```json
//! {
//!   "neurons": [
//!     {"role": "input"},
//!     {"role": "hidden", "activation": "relu", "bias": 0.25},
//!     {"role": "hidden", "activation": {"name": "bilu", "neg": 0.2, "pos": 1.5}},
//!     {"role": "output", "activation": "linear", "bias": 0.01}
//!   ],
//!   "edges": [[0, 1, 0.5], [0, 2, -1.25, 0.5], [1, 3, 0.7], [2, 3, -0.4]]
//! }
//! ```
//!
//! - Neuron `i` is the `i`-th entry of `neurons`. `role`: `"input"`, `"hidden"` (default) or
//!   `"output"`. `activation`: a name (`linear`/`identity`, `relu`, `leaky_relu`, `tanh`,
//!   `sigmoid`, and our extensions `gelu`, `softplus`) or an object `{"name": ..., params}`:
//!   `leaky_relu` (`slope`, default 0.01), `bilu` (`neg`, `pos`, both required), `bipu`
//!   (`degree` > 0, `neg`, `pos`, all required). Default `linear`. Names are case-insensitive;
//!   unknown parameters are an error (a misspelt parameter must not silently become a default).
//!   An input neuron's activation is ignored (inputs are clamped) but kept in the document.
//!   `bias`: a number, default 0. `name`: a string label.
//! - Edge `e` is `[from, to, weight]` or `[from, to, weight, alpha]` with `alpha ≥ 0` its
//!   regularization coefficient (default 1). Indices are non-negative integers (`3` or `3.0`).
//! - Extension: `ties`, a list of lists of free neurons that must share one scale (convolution
//!   channels, the two ends of an identity skip); see [`crate::network::NetworkBuilder::tie`].
//! - Every other field, anywhere, is kept. Reading is one typed pass over the text (no
//!   `serde_json::Value` tree): edges go straight into the network's flat arrays, and
//!   [`JsonNetwork`] keeps only what is needed to write the document back with weights and biases
//!   changed: how each number was spelled (integer or float), the key order of each neuron, and
//!   small `Value`s for neurons with unknown fields and for unknown top-level fields. Writing
//!   streams the document; numbers are written in the shortest form that reads back to the same
//!   `f64`, and a value that did not change keeps its spelling, so an unchanged network is written
//!   back identical (in the layout of [`JsonNetwork::to_string_with`]).
//!
//! Errors ([`JsonError`]) name the JSON path at fault, e.g.
//! `edges[7]: target neuron 12 does not exist (10 neurons)`.
//!
//! ```
//! use synbal::io::json::JsonNetwork;
//! let text = r#"{"neurons": [{"role": "input"}, {"activation": "relu", "bias": 0.5},
//!                {"role": "output"}], "edges": [[0, 1, 2.0], [1, 2, 3.0]]}"#;
//! let doc = JsonNetwork::from_str(text).unwrap();
//! assert_eq!(doc.network.free_neurons(), vec![1]);
//! let mut net = doc.network.clone();
//! net.scale_neuron(1, 2.0).unwrap();
//! let out = doc.to_string_with(&net).unwrap();
//! let back = JsonNetwork::from_str(&out).unwrap();
//! assert_eq!(back.network.weights(), &[4.0, 1.5]);
//! assert_eq!(back.network.biases(), &[0.0, 1.0, 0.0]);
//! ```

mod doc;
mod read;
mod values;
mod write;

pub use doc::{JsonError, JsonNetwork};
pub use read::read_network;
pub use values::{activation_to_json, parse_activation};
pub use write::write_network;

impl PartialEq for JsonNetwork {
    /// The same network and the same document (as `serde_json::Value`s: key order within objects
    /// does not matter).
    fn eq(&self, other: &Self) -> bool {
        self.network == other.network && self.document() == other.document()
    }
}

impl std::str::FromStr for JsonNetwork {
    type Err = JsonError;
    /// Same as [`JsonNetwork::from_str`].
    fn from_str(text: &str) -> Result<Self, JsonError> {
        JsonNetwork::from_str(text)
    }
}

//! The writer: streams the document, one line per neuron and per edge, without building a
//! `Value`. Numbers go through `serde_json`'s own formatter (shortest round-trip form for floats),
//! so the bytes are those `serde_json` writes for the same document.

use super::doc::{edge_form, Field, JsonError, JsonNetwork, NeuronForm};
use super::values::activation_to_json;
use crate::io::atomic;
use crate::network::Network;
use rayon::prelude::*;
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::Value;
use std::io::{self, Write};
use std::path::Path;

/// Writes `doc` with the weights and biases of `net` to `path` atomically (temporary file in the
/// same directory, fsync, rename): on error an existing file at `path` is left untouched. The
/// network is checked against the document first, so nothing is written when it does not fit.
pub fn write_network(
    path: impl AsRef<Path>,
    doc: &JsonNetwork,
    net: &Network,
) -> Result<(), JsonError> {
    doc.check(net)?;
    atomic::write_with(path.as_ref(), |w| doc.write_checked(net, w))?;
    Ok(())
}

impl JsonNetwork {
    /// The document as a `serde_json::Value` (key order preserved): what
    /// [`JsonNetwork::to_string_with`] writes for the network read, parsed. It is built on demand;
    /// reading and writing never hold it.
    pub fn document(&self) -> Value {
        self.patched(&self.network)
            .expect("the document's own network always fits it")
    }

    /// The document with the weights and biases of `net` as a `serde_json::Value` (see
    /// [`JsonNetwork::to_string_with`]).
    pub fn patched(&self, net: &Network) -> Result<Value, JsonError> {
        let text = self.to_string_with(net)?;
        Ok(serde_json::from_str(&text).expect("the writer emits valid JSON"))
    }

    /// The document with the weights and biases of `net`, which must have the document's
    /// structure (same neuron count, same edges in the same order). Values that did not change
    /// keep their spelling; a neuron without `bias` gets one (as its last field) only if its bias
    /// became nonzero. Every other field is kept as it was. Layout: the top-level object with one
    /// key per line and, for arrays such as `neurons` and `edges`, one element per line (compact
    /// JSON inside).
    pub fn to_string_with(&self, net: &Network) -> Result<String, JsonError> {
        self.check(net)?;
        let mut out = Vec::new();
        self.write_checked(net, &mut out)
            .expect("writing to memory cannot fail");
        Ok(String::from_utf8(out).expect("the writer emits UTF-8"))
    }

    /// Checks that `net` can be written with this document: the same structure, and every weight
    /// and bias that changed is finite (edges first, then neurons). [`write_network`] and
    /// [`JsonNetwork::to_string_with`] do this before writing anything.
    pub fn check(&self, net: &Network) -> Result<(), JsonError> {
        let old = &self.network;
        if net.num_neurons() != old.num_neurons() || net.num_edges() != old.num_edges() {
            return Err(JsonError::Mismatch(format!(
                "{} neurons and {} edges given, the document has {} and {}",
                net.num_neurons(),
                net.num_edges(),
                old.num_neurons(),
                old.num_edges()
            )));
        }
        let (same_src, same_dst) = (
            net.sources() == old.sources(),
            net.targets() == old.targets(),
        );
        if !(same_src && same_dst) {
            let e = (0..net.num_edges())
                .find(|&e| net.edge(e) != old.edge(e))
                .unwrap_or(0);
            return Err(JsonError::Mismatch(format!(
                "edge {e} is {:?} in the network but {:?} in the document",
                net.edge(e),
                old.edge(e)
            )));
        }
        let changed_non_finite = |new: &[f64], old: &[f64]| {
            new.iter()
                .zip(old)
                .position(|(x, y)| x.to_bits() != y.to_bits() && !x.is_finite())
        };
        if let Some(e) = changed_non_finite(net.weights(), old.weights()) {
            return Err(JsonError::NonFinite {
                at: format!("edges[{e}][2]"),
                value: net.weights()[e],
            });
        }
        if let Some(i) = changed_non_finite(net.biases(), old.biases()) {
            return Err(JsonError::NonFinite {
                at: format!("neurons[{i}].bias"),
                value: net.biases()[i],
            });
        }
        Ok(())
    }
}

/// Output is collected in memory and handed to the writer in chunks of about this size.
const CHUNK: usize = 1 << 16;

/// Edges formatted by one thread at a time.
const PAR_ITEMS: usize = 1 << 14;

/// Bytes reserved per item of a parallel batch: an edge line of two indices and a 17-digit
/// weight takes about 40, so the batch buffer is never grown (a regrowth copies the buffer and
/// faults in new pages).
const BATCH_BYTES_PER_ITEM: usize = 64;

/// A chunked output buffer in front of a writer.
struct Out<'a> {
    buf: Vec<u8>,
    sink: &'a mut dyn Write,
}

impl Out<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Compact JSON of `v` (strings escaped).
    fn json<T: Serialize + ?Sized>(&mut self, v: &T) -> io::Result<()> {
        serde_json::to_writer(&mut self.buf, v).map_err(io::Error::other)
    }

    /// A finite float in its shortest round-trip form, e.g. `0.1`, `2.0`, `1e-7`.
    fn float(&mut self, x: f64) -> io::Result<()> {
        CompactFormatter.write_f64(&mut self.buf, x)
    }

    /// An integral float as an integer, e.g. `3`, `-2`.
    fn int(&mut self, x: f64) -> io::Result<()> {
        if x >= 0.0 {
            CompactFormatter.write_u64(&mut self.buf, x as u64)
        } else {
            CompactFormatter.write_i64(&mut self.buf, x as i64)
        }
    }

    fn flush_if_full(&mut self) -> io::Result<()> {
        if self.buf.len() >= CHUNK {
            self.sink.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        self.sink.write_all(&self.buf)?;
        self.sink.flush()
    }

    /// [`Out::list`] with the items formatted in parallel: batches of [`PAR_ITEMS`] items per
    /// thread, each into a buffer of its own, written in order (the same bytes).
    fn list_par(
        &mut self,
        len: usize,
        item: impl Fn(&mut Out, usize) -> io::Result<()> + Sync,
    ) -> io::Result<()> {
        if len < 2 * PAR_ITEMS {
            return self.list(len, item);
        }
        self.put(b"[\n");
        let batch = PAR_ITEMS * rayon::current_num_threads().max(1);
        let mut start = 0;
        while start < len {
            let end = (start + batch).min(len);
            let chunks: Vec<io::Result<Vec<u8>>> = (start..end)
                .step_by(PAR_ITEMS)
                .collect::<Vec<_>>()
                .into_par_iter()
                .map(|a| {
                    let mut sink = io::sink();
                    let mut out = Out {
                        buf: Vec::with_capacity(PAR_ITEMS * BATCH_BYTES_PER_ITEM),
                        sink: &mut sink,
                    };
                    for j in a..(a + PAR_ITEMS).min(len) {
                        out.put(b"    ");
                        item(&mut out, j)?;
                        out.put(if j + 1 < len { b",\n" } else { b"\n" });
                    }
                    Ok(out.buf)
                })
                .collect();
            for chunk in chunks {
                let chunk = chunk?;
                self.sink.write_all(&self.buf)?;
                self.buf.clear();
                self.sink.write_all(&chunk)?;
            }
            start = end;
        }
        self.put(b"  ]");
        Ok(())
    }

    /// A JSON array of `len` items written by `item`: `[]`, or one item per line.
    fn list(
        &mut self,
        len: usize,
        mut item: impl FnMut(&mut Self, usize) -> io::Result<()>,
    ) -> io::Result<()> {
        if len == 0 {
            self.put(b"[]");
            return Ok(());
        }
        self.put(b"[\n");
        for j in 0..len {
            self.put(b"    ");
            item(self, j)?;
            self.put(if j + 1 < len { b",\n" } else { b"\n" });
            self.flush_if_full()?;
        }
        self.put(b"  ]");
        Ok(())
    }
}

impl JsonNetwork {
    /// Writes the document with the weights and biases of `net`, which
    /// [`JsonNetwork::check`] accepted: the top-level object with one key per line, arrays with
    /// one element per line.
    pub(super) fn write_checked(&self, net: &Network, sink: &mut dyn Write) -> io::Result<()> {
        let mut out = Out {
            buf: Vec::with_capacity(CHUNK + 1024),
            sink,
        };
        out.put(b"{\n");
        let top = &self.spelling.top;
        for (k, (key, value)) in top.iter().enumerate() {
            out.put(b"  ");
            out.json(key)?;
            out.put(b": ");
            match (key.as_str(), value) {
                ("neurons", _) => out.list(net.num_neurons(), |o, i| self.neuron(o, net, i))?,
                ("edges", _) => out.list_par(net.num_edges(), |o, e| self.edge(o, net, e))?,
                (_, Value::Array(items)) => out.list(items.len(), |o, j| o.json(&items[j]))?,
                (_, v) => out.json(v)?,
            }
            out.put(if k + 1 < top.len() { b",\n" } else { b"\n" });
            out.flush_if_full()?;
        }
        out.put(b"}\n");
        out.finish()
    }

    /// Edge `e`: `[from, to, weight]` or `[from, to, weight, alpha]`, spelled as read; the
    /// weight of `net` replaces the document's when it changed.
    fn edge(&self, out: &mut Out, net: &Network, e: usize) -> io::Result<()> {
        use edge_form::*;
        let old = &self.network;
        let form = self.spelling.edges[e];
        let w = net.weights()[e];
        let changed = w.to_bits() != old.weights()[e].to_bits();
        out.put(b"[");
        if form & VERBATIM != 0 {
            if let Some(numbers) = self.spelling.verbatim_edges.get(&e) {
                for (k, x) in numbers.iter().enumerate() {
                    if k > 0 {
                        out.put(b",");
                    }
                    if k == 2 && changed {
                        out.float(w)?;
                    } else {
                        out.json(x)?;
                    }
                }
            }
            out.put(b"]");
            return Ok(());
        }
        let index = |out: &mut Out, i: u32, float: bool| {
            if float {
                out.float(i as f64)
            } else {
                CompactFormatter.write_u64(&mut out.buf, i as u64)
            }
        };
        index(out, old.sources()[e], form & FROM_FLOAT != 0)?;
        out.put(b",");
        index(out, old.targets()[e], form & TO_FLOAT != 0)?;
        out.put(b",");
        if form & WEIGHT_INT != 0 && !changed {
            out.int(w)?;
        } else {
            out.float(w)?;
        }
        if form & ALPHA != 0 {
            out.put(b",");
            let a = old.alphas()[e];
            if form & ALPHA_INT != 0 {
                out.int(a)?;
            } else {
                out.float(a)?;
            }
        }
        out.put(b"]");
        Ok(())
    }

    /// Neuron `i`, spelled as read; the bias of `net` replaces the document's when it changed,
    /// and is added as the last field if the neuron had none and it became nonzero.
    fn neuron(&self, out: &mut Out, net: &Network, i: usize) -> io::Result<()> {
        let old = &self.network;
        let b = net.biases()[i];
        let changed = b.to_bits() != old.biases()[i].to_bits();
        out.put(b"{");
        let has_bias = match &self.spelling.neurons[i] {
            NeuronForm::Known { fields, len } => {
                let fields = &fields[..*len as usize];
                for (k, field) in fields.iter().enumerate() {
                    if k > 0 {
                        out.put(b",");
                    }
                    match field {
                        Field::Role => {
                            out.put(b"\"role\":");
                            out.json(old.role(i).name())?;
                        }
                        Field::Activation => {
                            out.put(b"\"activation\":");
                            out.json(&activation_to_json(&old.activation(i)))?;
                        }
                        Field::Bias => {
                            out.put(b"\"bias\":");
                            out.float(b)?;
                        }
                        Field::Name => {
                            out.put(b"\"name\":");
                            out.json(&old.name(i))?;
                        }
                    }
                }
                fields.contains(&Field::Bias)
            }
            NeuronForm::Verbatim(m) => {
                for (k, (key, v)) in m.iter().enumerate() {
                    if k > 0 {
                        out.put(b",");
                    }
                    out.json(key)?;
                    out.put(b":");
                    if key == "bias" && changed {
                        out.float(b)?;
                    } else {
                        out.json(v)?;
                    }
                }
                m.contains_key("bias")
            }
        };
        if changed && !has_bias && b != 0.0 {
            let empty = match &self.spelling.neurons[i] {
                NeuronForm::Known { len, .. } => *len == 0,
                NeuronForm::Verbatim(m) => m.is_empty(),
            };
            if !empty {
                out.put(b",");
            }
            out.put(b"\"bias\":");
            out.float(b)?;
        }
        out.put(b"}");
        Ok(())
    }
}

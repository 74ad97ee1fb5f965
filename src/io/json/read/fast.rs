//! The fast path of the reader, for documents without surprises: the `edges` rows are scanned by
//! hand and their numbers converted by the standard library (correctly rounded, like
//! `serde_json` with `float_roundtrip`, but several times faster); every other top-level value is
//! located by a bracket scan and handed to `serde_json`. Anything unexpected — a syntax error, a
//! row that is not two plain indices and one or two numbers, an integer `serde_json` would read as
//! a float, a repeated key, deep nesting, an invalid row — returns `None`, and the document is
//! read again by the general reader, which gives the exact result or error. Results are the same
//! on both paths: rows are added by the same [`Edges::add`] and the whole is checked by the same
//! [`Top::finish`].

use super::parts::{Edges, Found, Neurons, Row, Top, EXACT_INT};
use super::visit::{Expect, NeuronsBody};
use crate::io::json::doc::edge_form;
use rayon::prelude::*;
use serde::de::DeserializeSeed;
use serde_json::{Map, Value};

/// Deeper values are left to the general reader, whose recursion limit counts from the document.
const MAX_DEPTH: usize = 100;

/// Bytes of the `edges` array read at once (split between the threads).
const SEGMENT: usize = 1 << 20;

/// Most parts a segment is split into.
const MAX_PARTS: usize = 8;

/// Bytes tested at once by [`Scan::array_end`].
const BLOCK: usize = 64;

/// Fewest bytes per part (smaller windows are read in one part).
const MIN_PART: usize = 1 << 16;

/// Reads the top-level object, or `None` if anything is unexpected.
pub(super) fn parse(text: &str) -> Option<Top> {
    let mut s = Scan { text, pos: 0 };
    s.ws();
    s.eat(b'{')?;
    let mut top = Top {
        fields: Map::new(),
        neurons: None,
        edges: None,
    };
    // The text of `neurons`, read when `edges` comes (both at once) or at the end.
    let mut neurons_text: Option<&str> = None;
    s.ws();
    if s.peek() == Some(b'}') {
        s.pos += 1;
    } else {
        loop {
            s.ws();
            let key_start = s.pos;
            s.string()?;
            let key: String = serde_json::from_str(&text[key_start..s.pos]).ok()?;
            if top.fields.contains_key(&key) {
                return None;
            }
            s.ws();
            s.eat(b':')?;
            s.ws();
            let value = match key.as_str() {
                "edges" => {
                    let edges = match neurons_text.take() {
                        Some(t) => {
                            let (neurons, edges) = rayon::join(|| neurons(t), || s.edges());
                            top.neurons = Some(neurons?);
                            edges
                        }
                        None => s.edges(),
                    };
                    top.edges = Some(Found::Ok(edges?));
                    Value::Null
                }
                "neurons" => {
                    neurons_text = Some(s.value()?);
                    Value::Null
                }
                _ => serde_json::from_str(s.value()?).ok()?,
            };
            top.fields.insert(key, value);
            s.ws();
            match s.next()? {
                b',' => continue,
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    if s.pos != text.len() {
        return None;
    }
    if let Some(t) = neurons_text {
        top.neurons = Some(neurons(t)?);
    }
    Some(top)
}

/// The `neurons` array from its text, as the general reader reads it.
fn neurons(text: &str) -> Option<Found<Neurons>> {
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Expect(NeuronsBody).deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(found)
}

/// A position in the text.
struct Scan<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    /// Skips JSON whitespace.
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// Moves past a string (its content is checked later by `serde_json`).
    fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            match self.next()? {
                b'"' => return Some(()),
                b'\\' => {
                    self.next()?;
                }
                _ => {}
            }
        }
    }

    /// The text of the value starting here: a string, a bracketed value (matched, strings
    /// skipped) or a scalar up to the next delimiter.
    fn value(&mut self) -> Option<&'a str> {
        let start = self.pos;
        match self.peek()? {
            b'"' => self.string()?,
            b'[' | b'{' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'[' | b'{' => depth += 1,
                        b']' | b'}' => depth -= 1,
                        _ => {}
                    }
                    self.pos += 1;
                    if depth == 0 {
                        break;
                    }
                    if depth > MAX_DEPTH {
                        return None;
                    }
                }
            }
            _ => {
                while !matches!(
                    self.peek(),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.pos += 1;
                }
            }
        }
        Some(&self.text[start..self.pos])
    }

    /// The `edges` array, every row of the form `[index, index, number(, number)]`.
    ///
    /// The array is read in windows of about [`SEGMENT`] bytes, each cut at row ends into one
    /// part per thread; the parts are scanned in parallel and their rows added in order (those
    /// of a window while the next one is scanned), so the result is that of one scan from the
    /// start. A window ends at the array's end if a `]`
    /// followed by `]` (white space between) is in it, and every cut is a comma after a `]`
    /// before that end. Each part must be a list of complete rows separated by commas, ending
    /// exactly at its cut, so anything else (a nested value, a string) fails a part and the whole
    /// fast path.
    fn edges(&mut self) -> Option<Edges> {
        let mut edges = Edges::new(self.text.len() / 24);
        self.eat(b'[')?;
        self.ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Some(edges);
        }
        let threads = rayon::current_num_threads().clamp(1, MAX_PARTS);
        let text = self.text;
        let mut e = 0;
        // The rows of the previous window, added to the network while this one is scanned.
        let mut pending: Vec<Vec<Row>> = Vec::new();
        let add = |edges: &mut Edges, e: &mut usize, rows: Vec<Vec<Row>>| {
            for r in rows.into_iter().flatten() {
                edges.add(*e, r);
                *e += 1;
            }
        };
        loop {
            let window = (self.pos + SEGMENT).min(text.len());
            let end = self.array_end(window);
            let limit = end.unwrap_or(window);
            let parts = if limit - self.pos < MIN_PART * threads {
                1
            } else {
                threads
            };
            let mut cuts = Vec::with_capacity(parts);
            let mut at = self.pos;
            for k in 1..parts {
                let from = self.pos + (limit - self.pos) * k / parts;
                if from <= at {
                    continue;
                }
                match self.cut(from) {
                    Some((c, false)) if c < limit => {
                        cuts.push((at, c));
                        at = c + 1;
                    }
                    _ => break,
                }
            }
            let (last, closes) = match end {
                Some(end) => (end, true),
                None => self.cut(limit)?,
            };
            cuts.push((at, last));
            let (rows, ()) = rayon::join(
                || {
                    cuts.par_iter()
                        .map(|&(a, b)| Scan { text, pos: a }.rows(b))
                        .collect::<Option<Vec<Vec<Row>>>>()
                },
                || add(&mut edges, &mut e, std::mem::take(&mut pending)),
            );
            pending = rows?;
            self.pos = last + 1;
            if closes {
                add(&mut edges, &mut e, pending);
                return Some(edges);
            }
        }
    }

    /// The position of the second `]` of the first `]` + white space + `]` starting before
    /// `window`, if any (the end of an array of flat rows).
    ///
    /// Inside an array of rows almost every `]` is followed by a comma, so the window is
    /// searched in blocks of [`BLOCK`] bytes for a `]` followed by anything else (a branch-free
    /// test per block); only such candidates are looked at closely.
    fn array_end(&self, window: usize) -> Option<usize> {
        let b = self.text.as_bytes();
        let closes = |k: usize| {
            let mut i = k + 1;
            while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
                i += 1;
            }
            (b.get(i) == Some(&b']')).then_some(i)
        };
        let candidate = |k: usize| b[k] == b']' && b.get(k + 1) != Some(&b',');
        let mut k = self.pos;
        // blocks whose every byte and the one after it are inside the text
        while k + BLOCK < window.min(b.len()) {
            let hit = b[k..k + BLOCK]
                .iter()
                .zip(&b[k + 1..k + BLOCK + 1])
                .fold(false, |any, (&c, &n)| any | ((c == b']') & (n != b',')));
            if hit {
                if let Some(end) = (k..k + BLOCK).filter(|&j| candidate(j)).find_map(closes) {
                    return Some(end);
                }
            }
            k += BLOCK;
        }
        (k..window).filter(|&j| candidate(j)).find_map(closes)
    }

    /// The first `]` at or after `from` and what follows it (white space skipped): the position
    /// of a comma and `false`, or of a `]` and `true`; `None` for anything else.
    fn cut(&self, from: usize) -> Option<(usize, bool)> {
        let b = self.text.as_bytes();
        let mut i = from + memchr::memchr(b']', b.get(from..)?)? + 1;
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        match b.get(i)? {
            b',' => Some((i, false)),
            b']' => Some((i, true)),
            _ => None,
        }
    }

    /// Rows separated by commas from here up to exactly `end` (a comma or the array's `]`).
    fn rows(mut self, end: usize) -> Option<Vec<Row>> {
        let mut rows = Vec::with_capacity((end - self.pos) / 24 + 1);
        loop {
            self.ws();
            rows.push(self.row()?);
            self.ws();
            if self.pos >= end {
                return (self.pos == end).then_some(rows);
            }
            self.eat(b',')?;
        }
    }

    /// One row `[from, to, weight]` or `[from, to, weight, alpha]` that [`typed_row`](super::parts::typed_row)
    /// would accept with the same result: integer indices, `alpha ≥ 0`, integer weights and
    /// alphas within ±2^53 (larger ones are left to the general reader).
    fn row(&mut self) -> Option<Row> {
        self.eat(b'[')?;
        let mut index = || match self.item()? {
            Num::U(u) => Some(u),
            _ => None,
        };
        let (from, to) = (index()?, index()?);
        let mut form = 0;
        let (weight, int, last) = self.value_item()?;
        if int {
            form |= edge_form::WEIGHT_INT;
        }
        let mut alpha = 1.0;
        if !last {
            let (a, int, last) = self.value_item()?;
            if !last || a < 0.0 {
                return None;
            }
            alpha = a;
            form |= edge_form::ALPHA | if int { edge_form::ALPHA_INT } else { 0 };
        }
        Some(Row {
            from,
            to,
            weight,
            alpha,
            form,
        })
    }

    /// A number that is a weight or alpha: its value, whether it is an integer, and whether it
    /// ended the row.
    fn value_item(&mut self) -> Option<(f64, bool, bool)> {
        let exact = |x: u64| (x <= EXACT_INT).then_some(());
        let (x, int) = match self.number()? {
            Num::U(u) => (exact(u).map(|()| u as f64)?, true),
            Num::I(i) => (exact(i.unsigned_abs()).map(|()| i as f64)?, true),
            Num::F(x) => (x, false),
        };
        self.ws();
        match self.next()? {
            b',' => Some((x, int, false)),
            b']' => Some((x, int, true)),
            _ => None,
        }
    }

    /// A number followed by a comma (not the last of a row).
    fn item(&mut self) -> Option<Num> {
        self.ws();
        let x = self.number()?;
        self.ws();
        self.eat(b',')?;
        self.ws();
        Some(x)
    }

    /// A JSON number as `serde_json` reads it: an integer token as `u64` (or `i64` when
    /// negative), anything else as the correctly rounded `f64`. The cases where `serde_json`
    /// reads an integer token as a float (`-0`, beyond 64 bits) are left to it.
    fn number(&mut self) -> Option<Num> {
        self.ws();
        let b = self.text.as_bytes();
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let start = self.pos;
        let negative = b.get(start) == Some(&b'-');
        let mut i = start + negative as usize;
        // the integer part, accumulated (None once it overflows 64 bits)
        let mut int = Some(0u64);
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                let end = digits(i);
                let digit = |c: &u8| u64::from(c - b'0');
                // 19 decimal digits always fit in 64 bits
                int = if end - i <= 19 {
                    Some(b[i..end].iter().fold(0, |x, c| x * 10 + digit(c)))
                } else {
                    b[i..end]
                        .iter()
                        .try_fold(0u64, |x, c| x.checked_mul(10)?.checked_add(digit(c)))
                };
                i = end;
            }
            _ => return None,
        }
        let mut float = false;
        if b.get(i) == Some(&b'.') {
            let end = digits(i + 1);
            (end > i + 1).then_some(())?;
            (i, float) = (end, true);
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let end = digits(i);
            (end > i).then_some(())?;
            (i, float) = (end, true);
        }
        self.pos = i;
        if float {
            let x: f64 = self.text[start..i].parse().ok()?;
            return x.is_finite().then_some(Num::F(x));
        }
        match (negative, int?) {
            (false, u) => Some(Num::U(u)),
            (true, 0) => None,
            (true, u) if u <= 1 << 63 => Some(Num::I((u as i64).wrapping_neg())),
            _ => None,
        }
    }
}

/// A number token as `serde_json` classifies it.
enum Num {
    U(u64),
    I(i64),
    F(f64),
}

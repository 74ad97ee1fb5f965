//! The reader: one pass of `serde_json`'s parser with typed visitors, no `Value` tree.
//!
//! Syntax errors come from the same parser as `serde_json::from_str` at the same place. Semantic
//! errors are recorded while parsing goes on (a syntax error later in the text still wins, as it
//! did when the whole document was parsed first) and reported in a fixed order: the document, then
//! `neurons`, then `edges`, then `ties`, then what
//! [`NetworkBuilder::build`](crate::network::NetworkBuilder::build) finds. Edge indices are
//! checked against the number of neurons at the end, since `edges` may come before `neurons`.

mod fast;
mod parts;
mod visit;

use super::doc::{JsonError, JsonNetwork};
use parts::{Found, Top};
use serde::de::DeserializeSeed;
use std::path::Path;
use visit::{Expect, TopBody};

/// Reads and validates a network JSON file.
///
/// Errors: [`JsonError::Read`] (with the path) when the file cannot be read, otherwise the errors
/// of [`JsonNetwork::from_str`] (which name the JSON path, not the file).
pub fn read_network(path: impl AsRef<Path>) -> Result<JsonNetwork, JsonError> {
    let path = path.as_ref();
    let read_error = |error| JsonError::Read {
        path: path.to_path_buf(),
        error,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let regular = file.metadata().map_err(read_error)?;
    if regular.is_file() && regular.len() > 0 {
        // A regular file is read through a memory map (no copy of the text, no anonymous pages
        // to fault in). SAFETY: the map is read-only; the file must not be truncated by another
        // process while it is read (the usual contract of memory-mapped input, as for model
        // files).
        if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
            let text = std::str::from_utf8(&map).map_err(|_| {
                read_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "stream did not contain valid UTF-8",
                ))
            })?;
            let top = parse_text(text.strip_prefix('\u{feff}').unwrap_or(text))?;
            drop(map);
            return top.finish();
        }
    }
    let text = std::io::read_to_string(file).map_err(read_error)?;
    parse_owned(text)
}

impl JsonNetwork {
    /// Parses and validates a network JSON document.
    ///
    /// ```
    /// use synbal::io::json::JsonNetwork;
    /// let err = JsonNetwork::from_str(r#"{"neurons": [{}, {}], "edges": [[0, 5, 1.0]]}"#)
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "edges[0]: target neuron 5 does not exist (2 neurons)");
    /// ```
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str) -> Result<JsonNetwork, JsonError> {
        parse(text)
    }
}

/// Parses and validates `text`.
fn parse(text: &str) -> Result<JsonNetwork, JsonError> {
    parse_text(text)?.finish()
}

/// Reads `text` (the file is dropped before the network is built, which then needs memory).
fn parse_owned(text: String) -> Result<JsonNetwork, JsonError> {
    // A UTF-8 byte order mark is not JSON but some editors write one.
    let top = parse_text(text.strip_prefix('\u{feff}').unwrap_or(&text))?;
    drop(text);
    top.finish()
}

/// Parses `text` into its top-level object; semantic errors are recorded, not yet reported.
fn parse_text(text: &str) -> Result<Top, JsonError> {
    if let Some(top) = fast::parse(text) {
        return Ok(top);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let found = Expect(TopBody)
        .deserialize(&mut de)
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| syntax_error(text, &e))?;
    match found {
        Found::Other(kind) => Err(JsonError::invalid(
            "document",
            format!("expected a JSON object with \"neurons\" and \"edges\", found {kind}"),
        )),
        Found::Ok(top) => Ok(top),
    }
}

/// Removes serde_json's " at line L column C" suffix.
fn strip_location(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(k) => &msg[..k],
        None => msg,
    }
}

fn syntax_error(text: &str, e: &serde_json::Error) -> JsonError {
    let (line, column) = (e.line(), e.column());
    let full = e.to_string();
    let mut message = strip_location(&full).to_string();
    // Look around the error position for tokens JSON cannot hold.
    let src = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .as_bytes();
    let lo = column.saturating_sub(12).min(src.len());
    let hi = (column + 10).min(src.len());
    let window = &src[lo..hi];
    let has = |pat: &[u8]| window.windows(pat.len()).any(|w| w == pat);
    if message.starts_with("number out of range") {
        message
            .push_str(" (the number overflows a 64-bit float; non-finite numbers are not allowed)");
    } else if has(b"NaN") || has(b"nan") || has(b"Infinity") || has(b"inf") {
        message.push_str(
            " (NaN and Infinity are not valid JSON numbers; every number must be finite)",
        );
    }
    JsonError::Syntax {
        line,
        column,
        message,
    }
}

//! Configuration documents: HCL, JSON and YAML read into one line-numbered tree ([`Value`]),
//! and a serde decoder from that tree into typed structs whose errors name the line.
//!
//! The files are the ones `consul config write` and Consul agent service definitions take, so
//! the decoder follows Consul's habits: struct field names match ignoring case and underscores
//! (`DefaultSubset`, `default_subset`), while map keys (`Meta`, `Subsets`, `Failover`) stay exactly
//! as written.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use hcl_edit::expr::{Expression, ObjectKey};
use hcl_edit::structure::{Block, Body, Structure};
use hcl_edit::template::{Element, Template};
use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, StrInput};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

pub use crate::model::spanned::Spanned;
use crate::model::spanned::{SPANNED_LINE, SPANNED_NAME, SPANNED_VALUE};

/// How deep arrays and objects may nest in YAML and JSON: deeper input is refused rather than
/// risking the stack of the recursive readers. Real configuration nests a handful of levels.
const MAX_DEPTH: usize = 128;

// ---------------------------------------------------------------------------------------------
// The tree
// ---------------------------------------------------------------------------------------------

/// The syntax of a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Hcl,
    Json,
    Yaml,
}

impl Format {
    /// The format named by a file's extension (`.hcl`, `.json`, `.yaml`, `.yml`, any case).
    pub fn from_path(p: &Path) -> Option<Format> {
        let ext = p.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "hcl" => Some(Format::Hcl),
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            _ => None,
        }
    }
}

/// A value with the 1-based line it starts on (0 when unknown, e.g. JSON from an HTTP API).
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub line: u32,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Value>),
    /// Fields in the order written; keys are kept exactly as written.
    Object(Vec<Field>),
}

/// One key of an object: `line` is the key's line, which may differ from the value's.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub key: String,
    pub line: u32,
    pub value: Value,
}

/// One document of a file; `line` is the line of its first token (`---` when explicit in YAML).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub line: u32,
    pub value: Value,
}

/// A file that is not valid HCL, JSON or YAML, or uses a construct this reader refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SyntaxError {
    pub line: u32,
    pub message: String,
}

impl SyntaxError {
    fn new(line: u32, message: impl Into<String>) -> SyntaxError {
        SyntaxError {
            line,
            message: message.into(),
        }
    }
}

impl Value {
    fn new(line: u32, kind: Kind) -> Value {
        Value { line, kind }
    }

    /// The field whose key matches `name` the way struct fields do (ignoring case and
    /// underscores), for callers that look at one key before decoding, such as `Kind`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        let Kind::Object(fields) = &self.kind else {
            return None;
        };
        let wanted = normalize(name);
        fields.iter().find(|f| normalize(&f.key) == wanted)
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl Kind {
    /// How a value of this kind is named in error messages ("found an integer").
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool(_) => "a boolean",
            Kind::Int(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Str(_) => "a string",
            Kind::Array(_) => "an array",
            Kind::Object(_) => "an object",
        }
    }
}

/// JSON from Consul's HTTP API has no lines: every line is 0.
impl From<&serde_json::Value> for Value {
    fn from(json: &serde_json::Value) -> Value {
        let kind = match json {
            serde_json::Value::Null => Kind::Null,
            serde_json::Value::Bool(b) => Kind::Bool(*b),
            // An integer beyond i64 (only u64 can be) keeps its magnitude as a float.
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Kind::Int(i),
                None => Kind::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Kind::Str(s.clone()),
            serde_json::Value::Array(items) => Kind::Array(items.iter().map(Value::from).collect()),
            serde_json::Value::Object(map) => Kind::Object(
                map.iter()
                    .map(|(key, value)| Field {
                        key: key.clone(),
                        line: 0,
                        value: Value::from(value),
                    })
                    .collect(),
            ),
        };
        Value::new(0, kind)
    }
}

/// Reads a file's text into documents. YAML may hold several (`---`); JSON and HCL hold one.
/// A file with nothing in it (or only comments) holds none, except in JSON, which needs a value.
pub fn parse(text: &str, format: Format) -> Result<Vec<Document>, SyntaxError> {
    match format {
        Format::Hcl => parse_hcl(text),
        Format::Json => parse_json(text).map(|doc| vec![doc]),
        Format::Yaml => YamlReader::new(text).documents(),
    }
}

fn to_line(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn int_out_of_range(line: u32, text: &str) -> SyntaxError {
    SyntaxError::new(line, format!("the integer {text} does not fit in 64 bits"))
}

// ---------------------------------------------------------------------------------------------
// YAML
// ---------------------------------------------------------------------------------------------

/// Builds the tree from saphyr's event stream, whose spans carry 1-based lines.
struct YamlReader<'t> {
    events: Parser<'t, StrInput<'t>>,
    /// Anchored nodes of the current document, so aliases resolve to copies of them.
    anchors: HashMap<usize, Value>,
}

impl<'t> YamlReader<'t> {
    fn new(text: &'t str) -> YamlReader<'t> {
        YamlReader {
            events: Parser::new_from_str(text),
            anchors: HashMap::new(),
        }
    }

    /// The next event and its line.
    fn next(&mut self) -> Result<(Event<'t>, u32), SyntaxError> {
        match self.events.next_event() {
            Some(Ok((event, span))) => Ok((event, to_line(span.start.line()))),
            Some(Err(e)) => Err(yaml_error(&e)),
            None => Err(SyntaxError::new(0, "unexpected end of the YAML stream")),
        }
    }

    fn documents(mut self) -> Result<Vec<Document>, SyntaxError> {
        let mut documents = Vec::new();
        loop {
            match self.next()? {
                (Event::StreamStart, _) => {}
                (Event::StreamEnd, _) => return Ok(documents),
                (Event::DocumentStart(_), line) => {
                    let (event, value_line) = self.next()?;
                    let value = self.node(event, value_line, 0)?;
                    // Consumes the DocumentEnd event (implicit or `...`).
                    self.next()?;
                    self.anchors.clear();
                    // A stray `---` at the end of a file is no entry.
                    if value.kind != Kind::Null {
                        documents.push(Document { line, value });
                    }
                }
                (event, line) => {
                    return Err(SyntaxError::new(line, format!("unexpected YAML {event:?}")));
                }
            }
        }
    }

    fn node(&mut self, event: Event<'t>, line: u32, depth: usize) -> Result<Value, SyntaxError> {
        if depth > MAX_DEPTH {
            return Err(SyntaxError::new(line, "values nest too deeply"));
        }
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, _tag) => {
                (Value::new(line, yaml_scalar(&text, style, line)?), anchor)
            }
            Event::SequenceStart(anchor, _tag) => (self.sequence(line, depth)?, anchor),
            Event::MappingStart(anchor, _tag) => (self.mapping(line, depth)?, anchor),
            Event::Alias(id) => {
                return self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| SyntaxError::new(line, "alias to an unknown anchor"));
            }
            other => {
                return Err(SyntaxError::new(line, format!("unexpected YAML {other:?}")));
            }
        };
        // Anchor id 0 means "no anchor".
        if anchor != 0 {
            self.anchors.insert(anchor, value.clone());
        }
        Ok(value)
    }

    fn sequence(&mut self, line: u32, depth: usize) -> Result<Value, SyntaxError> {
        let mut items = Vec::new();
        loop {
            match self.next()? {
                (Event::SequenceEnd, _) => return Ok(Value::new(line, Kind::Array(items))),
                (event, item_line) => items.push(self.node(event, item_line, depth + 1)?),
            }
        }
    }

    fn mapping(&mut self, line: u32, depth: usize) -> Result<Value, SyntaxError> {
        let mut fields = Vec::new();
        loop {
            let key = match self.next()? {
                (Event::MappingEnd, _) => return Ok(Value::new(line, Kind::Object(fields))),
                // A key is kept as written, even `true` or `1`: map keys are names.
                (Event::Scalar(text, _, _, _), key_line) => (text.into_owned(), key_line),
                (_, key_line) => {
                    return Err(SyntaxError::new(
                        key_line,
                        "only scalar mapping keys are supported",
                    ));
                }
            };
            let (event, value_line) = self.next()?;
            let value = self.node(event, value_line, depth + 1)?;
            fields.push(Field {
                key: key.0,
                line: key.1,
                value,
            });
        }
    }
}

fn yaml_error(e: &ScanError) -> SyntaxError {
    let mark = e.marker();
    SyntaxError::new(
        to_line(mark.line()),
        format!("{} (column {})", e.info(), mark.col() + 1),
    )
}

/// Quoted and block scalars are strings; plain ones follow the YAML 1.2 core schema.
fn yaml_scalar(text: &str, style: ScalarStyle, line: u32) -> Result<Kind, SyntaxError> {
    if style != ScalarStyle::Plain {
        return Ok(Kind::Str(text.to_owned()));
    }
    Ok(match text {
        "" | "~" | "null" | "Null" | "NULL" => Kind::Null,
        "true" | "True" | "TRUE" => Kind::Bool(true),
        "false" | "False" | "FALSE" => Kind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => Kind::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Kind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Kind::Float(f64::NAN),
        _ => {
            if let Some(int) = core_int(text) {
                Kind::Int(int.ok_or_else(|| int_out_of_range(line, text))?)
            } else if is_core_float(text) {
                // The core-schema float syntax is a subset of what Rust's parser accepts.
                Kind::Float(text.parse().unwrap_or(f64::NAN))
            } else {
                Kind::Str(text.to_owned())
            }
        }
    })
}

/// `Some` when `text` has the core schema's integer syntax (`-12`, `0o17`, `0x1F`); the inner
/// `None` when it does not fit in an i64.
fn core_int(text: &str) -> Option<Option<i64>> {
    let all = |s: &str, f: fn(&u8) -> bool| !s.is_empty() && s.as_bytes().iter().all(f);
    if let Some(hex) = text.strip_prefix("0x") {
        return all(hex, u8::is_ascii_hexdigit).then(|| i64::from_str_radix(hex, 16).ok());
    }
    if let Some(oct) = text.strip_prefix("0o") {
        return all(oct, |b| (b'0'..=b'7').contains(b)).then(|| i64::from_str_radix(oct, 8).ok());
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    all(digits, u8::is_ascii_digit).then(|| text.parse().ok())
}

/// The core schema's float: `[-+]? ( \.[0-9]+ | [0-9]+ ( \.[0-9]* )? ) ( [eE] [-+]? [0-9]+ )?`.
fn is_core_float(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (unsigned, None),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => digits(int) && digits(frac) && !(int.is_empty() && frac.is_empty()),
        None => !mantissa.is_empty() && digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    mantissa_ok && exponent_ok
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

/// JSON is checked by serde_json first, so anything that is not JSON is refused with its
/// `line N column M` message. The tree is then built by the small reader below rather than by the
/// YAML parser: JSON is YAML 1.2 flow syntax in theory, but a YAML parser differs at the edges
/// (tab indentation, escaped surrogate pairs, very long keys), and a JSON file that serde_json
/// accepts must not then be refused. The reader only tracks lines; strings are unescaped by
/// serde_json itself.
fn parse_json(text: &str) -> Result<Document, SyntaxError> {
    if let Err(e) = serde_json::from_str::<de::IgnoredAny>(text) {
        return Err(SyntaxError::new(to_line(e.line()), e.to_string()));
    }
    let mut reader = JsonReader {
        text,
        pos: 0,
        line: 1,
    };
    reader.skip_whitespace();
    let line = reader.line;
    let value = reader.value(0)?;
    Ok(Document { line, value })
}

struct JsonReader<'t> {
    text: &'t str,
    pos: usize,
    line: u32,
}

impl JsonReader<'_> {
    fn peek(&self) -> u8 {
        self.text.as_bytes().get(self.pos).copied().unwrap_or(0)
    }

    fn skip_whitespace(&mut self) {
        while let b' ' | b'\t' | b'\r' | b'\n' = self.peek() {
            if self.peek() == b'\n' {
                self.line += 1;
            }
            self.pos += 1;
        }
    }

    /// Skips whitespace and one expected punctuation byte.
    fn expect(&mut self, byte: u8) -> Result<(), SyntaxError> {
        self.skip_whitespace();
        if self.peek() != byte {
            return Err(self.unexpected());
        }
        self.pos += 1;
        Ok(())
    }

    /// Never reached for text serde_json accepted; kept so a disagreement is an error, not a panic.
    fn unexpected(&self) -> SyntaxError {
        SyntaxError::new(self.line, "unexpected character in JSON")
    }

    fn value(&mut self, depth: usize) -> Result<Value, SyntaxError> {
        self.skip_whitespace();
        let line = self.line;
        if depth > MAX_DEPTH {
            return Err(SyntaxError::new(line, "values nest too deeply"));
        }
        let kind = match self.peek() {
            b'{' => self.object(depth)?,
            b'[' => self.array(depth)?,
            b'"' => Kind::Str(self.string()?),
            b't' => self.word("true", Kind::Bool(true))?,
            b'f' => self.word("false", Kind::Bool(false))?,
            b'n' => self.word("null", Kind::Null)?,
            _ => self.number()?,
        };
        Ok(Value::new(line, kind))
    }

    fn object(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        self.pos += 1;
        let mut fields = Vec::new();
        self.skip_whitespace();
        if self.peek() == b'}' {
            self.pos += 1;
            return Ok(Kind::Object(fields));
        }
        loop {
            self.skip_whitespace();
            let line = self.line;
            if self.peek() != b'"' {
                return Err(self.unexpected());
            }
            let key = self.string()?;
            self.expect(b':')?;
            let value = self.value(depth + 1)?;
            fields.push(Field { key, line, value });
            self.skip_whitespace();
            match self.peek() {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(Kind::Object(fields));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Kind, SyntaxError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == b']' {
            self.pos += 1;
            return Ok(Kind::Array(items));
        }
        loop {
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(Kind::Array(items));
                }
                _ => return Err(self.unexpected()),
            }
        }
    }

    /// A string token, unescaped by serde_json. JSON strings hold no raw newlines, so the line
    /// does not move. `"` and `\` are ASCII and never inside a multi-byte character, so the
    /// slice boundaries are character boundaries.
    fn string(&mut self) -> Result<String, SyntaxError> {
        let start = self.pos;
        self.pos += 1;
        loop {
            match self.peek() {
                b'\\' => self.pos += 2,
                b'"' => break,
                0 => return Err(self.unexpected()),
                _ => self.pos += 1,
            }
        }
        self.pos += 1;
        let raw = &self.text[start..self.pos];
        serde_json::from_str(raw).map_err(|e| SyntaxError::new(self.line, e.to_string()))
    }

    fn word(&mut self, word: &str, kind: Kind) -> Result<Kind, SyntaxError> {
        if !self.text[self.pos..].starts_with(word) {
            return Err(self.unexpected());
        }
        self.pos += word.len();
        Ok(kind)
    }

    fn number(&mut self) -> Result<Kind, SyntaxError> {
        let start = self.pos;
        while matches!(self.peek(), b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
            self.pos += 1;
        }
        let raw = &self.text[start..self.pos];
        if raw.contains(['.', 'e', 'E']) {
            raw.parse().map(Kind::Float).map_err(|_| self.unexpected())
        } else if raw.is_empty() {
            Err(self.unexpected())
        } else {
            raw.parse()
                .map(Kind::Int)
                .map_err(|_| int_out_of_range(self.line, raw))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HCL
// ---------------------------------------------------------------------------------------------

fn parse_hcl(text: &str) -> Result<Vec<Document>, SyntaxError> {
    let body = hcl_edit::parser::parse_body(text).map_err(|e| {
        let at = e.location();
        let message = format!("{} (column {})", e.message(), at.column());
        SyntaxError::new(to_line(at.line()), message)
    })?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let lines = LineIndex::new(text);
    let line = body.iter().next().map_or(1, |s| lines.of(s));
    let value = Value::new(line, Kind::Object(hcl_body(&body, &lines)?));
    Ok(vec![Document { line, value }])
}

/// Byte offsets (hcl-edit's spans) to 1-based lines.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let newlines = text.match_indices('\n').map(|(i, _)| i + 1);
        LineIndex {
            starts: std::iter::once(0).chain(newlines).collect(),
        }
    }

    /// The line an item starts on; 0 if the parser gave it no span.
    fn of(&self, item: &impl hcl_edit::Span) -> u32 {
        item.span().map_or(0, |r| {
            to_line(self.starts.partition_point(|&s| s <= r.start))
        })
    }
}

/// A body's attributes become fields; its blocks become fields holding objects, nested by label
/// (`service "web" {}` is `service = { web = {} }`); a block repeated under the same name (and
/// labels) becomes an array of those objects, as Consul reads `check {}` twice.
fn hcl_body(body: &Body, lines: &LineIndex) -> Result<Vec<Field>, SyntaxError> {
    let mut fields: Vec<Field> = Vec::new();
    // For each key: the line that first set it and, for blocks, their number of labels.
    let mut seen: HashMap<String, (u32, Option<usize>)> = HashMap::new();
    for structure in body.iter() {
        match structure {
            Structure::Attribute(attr) => {
                let key = attr.key.value().as_str().to_owned();
                let line = lines.of(&attr.key);
                if let Some((first, _)) = seen.get(&key) {
                    return Err(SyntaxError::new(
                        line,
                        format!("{key} is already set on line {first}"),
                    ));
                }
                seen.insert(key.clone(), (line, None));
                let value = hcl_expr(&attr.value, lines)?;
                fields.push(Field { key, line, value });
            }
            Structure::Block(block) => {
                let key = block.ident.value().as_str().to_owned();
                let line = lines.of(&block.ident);
                let labels = block.labels.len();
                match seen.get(&key) {
                    Some((first, None)) => {
                        return Err(SyntaxError::new(
                            line,
                            format!("{key} is already set as an attribute on line {first}"),
                        ));
                    }
                    // Mixing `b {}` and `b "x" {}` has no sensible tree.
                    Some((first, Some(n))) if *n != labels => {
                        return Err(SyntaxError::new(
                            line,
                            format!("block {key} has {labels} labels, but {n} on line {first}"),
                        ));
                    }
                    _ => {
                        seen.insert(key.clone(), (line, Some(labels)));
                    }
                }
                insert_block(&mut fields, block, line, lines)?;
            }
        }
    }
    Ok(fields)
}

fn insert_block(
    fields: &mut Vec<Field>,
    block: &Block,
    line: u32,
    lines: &LineIndex,
) -> Result<(), SyntaxError> {
    let body = Value::new(line, Kind::Object(hcl_body(&block.body, lines)?));
    let mut path = vec![block.ident.value().as_str()];
    path.extend(block.labels.iter().map(|label| label.as_str()));
    insert_path(fields, &path, line, body);
    Ok(())
}

/// Puts `body` at `path` (block name then labels), creating the label objects on the way; at
/// the end of the path a second body turns the field into an array.
fn insert_path(fields: &mut Vec<Field>, path: &[&str], line: u32, body: Value) {
    let (key, rest) = match path.split_first() {
        Some(split) => split,
        None => return,
    };
    let existing = fields.iter_mut().find(|f| f.key == *key);
    if rest.is_empty() {
        match existing {
            None => fields.push(Field {
                key: (*key).to_owned(),
                line,
                value: body,
            }),
            Some(field) => match &mut field.value.kind {
                Kind::Array(items) => items.push(body),
                _ => {
                    let first = std::mem::replace(&mut field.value.kind, Kind::Null);
                    let first = Value::new(field.value.line, first);
                    field.value.kind = Kind::Array(vec![first, body]);
                }
            },
        }
        return;
    }
    let field = match existing {
        Some(field) => field,
        None => {
            fields.push(Field {
                key: (*key).to_owned(),
                line,
                value: Value::new(line, Kind::Object(Vec::new())),
            });
            fields.last_mut().expect("just pushed")
        }
    };
    // Label levels only ever hold objects: hcl_body checks the label count per block name.
    if let Kind::Object(inner) = &mut field.value.kind {
        insert_path(inner, rest, line, body);
    }
}

/// Literal expressions only: configuration is data, so references, function calls, operators
/// and interpolations are refused with their line instead of being evaluated.
fn hcl_expr(expr: &Expression, lines: &LineIndex) -> Result<Value, SyntaxError> {
    let line = lines.of(expr);
    let kind = match expr {
        Expression::Null(_) => Kind::Null,
        Expression::Bool(b) => Kind::Bool(*b.value()),
        Expression::Number(n) => {
            let n = n.value();
            if n.is_f64() {
                Kind::Float(n.as_f64().unwrap_or(f64::NAN))
            } else {
                let int = n.as_i64();
                Kind::Int(int.ok_or_else(|| int_out_of_range(line, &n.to_string()))?)
            }
        }
        Expression::String(s) => Kind::Str(s.value().clone()),
        Expression::StringTemplate(t) => Kind::Str(hcl_template(t, line)?),
        Expression::HeredocTemplate(h) => Kind::Str(hcl_template(&h.template, line)?),
        Expression::Array(items) => Kind::Array(
            items
                .iter()
                .map(|item| hcl_expr(item, lines))
                .collect::<Result<_, _>>()?,
        ),
        Expression::Object(object) => {
            let mut fields = Vec::new();
            for (key, value) in object.iter() {
                fields.push(Field {
                    key: hcl_object_key(key, lines)?,
                    line: lines.of(key),
                    value: hcl_expr(value.expr(), lines)?,
                });
            }
            Kind::Object(fields)
        }
        Expression::Parenthesis(p) => return hcl_expr(p.inner(), lines),
        Expression::Variable(v) => {
            return Err(SyntaxError::new(
                line,
                format!(
                    "{} is a variable reference, which is not supported (quote strings)",
                    v.value().as_str()
                ),
            ));
        }
        Expression::Conditional(_) => return Err(unsupported(line, "a conditional")),
        Expression::FuncCall(_) => return Err(unsupported(line, "a function call")),
        Expression::Traversal(_) => return Err(unsupported(line, "a reference")),
        Expression::UnaryOp(_) | Expression::BinaryOp(_) => {
            return Err(unsupported(line, "an operator"));
        }
        Expression::ForExpr(_) => return Err(unsupported(line, "a for expression")),
    };
    Ok(Value::new(line, kind))
}

fn unsupported(line: u32, what: &str) -> SyntaxError {
    SyntaxError::new(
        line,
        format!("{what} is not supported: only literal values are"),
    )
}

fn hcl_object_key(key: &ObjectKey, lines: &LineIndex) -> Result<String, SyntaxError> {
    match key {
        ObjectKey::Ident(ident) => Ok(ident.value().as_str().to_owned()),
        ObjectKey::Expression(expr) => match hcl_expr(expr, lines)?.kind {
            Kind::Str(s) => Ok(s),
            _ => Err(SyntaxError::new(
                lines.of(key),
                "an object key must be a name or a string",
            )),
        },
    }
}

/// A template's literal text; interpolations and directives would need evaluation.
fn hcl_template(template: &Template, line: u32) -> Result<String, SyntaxError> {
    let mut out = String::new();
    for element in template.iter() {
        match element {
            Element::Literal(text) => out.push_str(text.value()),
            Element::Interpolation(_) => {
                return Err(SyntaxError::new(line, "interpolation is not supported"));
            }
            Element::Directive(_) => {
                return Err(SyntaxError::new(
                    line,
                    "template directives are not supported",
                ));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Decoding with serde
// ---------------------------------------------------------------------------------------------

/// A value that could not be decoded into the wanted type, with the line to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    pub line: u32,
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Line 0 means the value came without lines (JSON from an HTTP API).
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

impl DecodeError {
    fn new(line: u32, message: impl Into<String>) -> DecodeError {
        DecodeError {
            line,
            message: message.into(),
        }
    }
}

/// Errors raised by a type's own `Deserialize` (an unknown field, a missing one, a value its
/// visitor refuses) come without a line: the decoder that called it adds the line afterwards.
impl de::Error for DecodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        DecodeError::new(0, msg.to_string())
    }

    fn invalid_type(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DecodeError::new(0, format!("expected {exp}, found {unexp}"))
    }

    fn invalid_value(unexp: de::Unexpected, exp: &dyn de::Expected) -> Self {
        DecodeError::new(0, format!("invalid value {unexp}, expected {exp}"))
    }

    fn unknown_field(field: &str, _expected: &'static [&'static str]) -> Self {
        DecodeError::new(0, format!("unknown field {field:?}"))
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DecodeError::new(
            0,
            format!("unknown value {variant:?}, expected one of {expected:?}"),
        )
    }

    fn missing_field(field: &'static str) -> Self {
        DecodeError::new(0, format!("missing field {field:?}"))
    }

    fn duplicate_field(field: &'static str) -> Self {
        DecodeError::new(0, format!("{field:?} is given twice"))
    }
}

/// Decodes a value into `T`. Struct field names match ignoring case and underscores; map keys
/// stay as written; unknown fields are errors where `T` says `deny_unknown_fields`.
pub fn decode<T: de::DeserializeOwned>(value: &Value) -> Result<T, DecodeError> {
    T::deserialize(Decoder { value, name: None })
}

/// Struct names compare this way, so `TLSMinVersion`, `tls_min_version` and `tlsminversion`
/// are the same field, as in Consul.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// The declared field a key fills: the exact name first, then the normalized one.
fn canonical_field(key: &str, declared: &'static [&'static str]) -> Option<&'static str> {
    declared.iter().copied().find(|f| *f == key).or_else(|| {
        let key = normalize(key);
        declared.iter().copied().find(|f| normalize(f) == key)
    })
}

/// The serde deserializer over one value; `name` is the key it sits under, as written, so type
/// errors can say which setting is wrong.
#[derive(Clone, Copy)]
struct Decoder<'a> {
    value: &'a Value,
    name: Option<&'a str>,
}

impl<'a> Decoder<'a> {
    fn child(&self, value: &'a Value) -> Decoder<'a> {
        Decoder {
            value,
            name: self.name,
        }
    }

    fn for_name(&self) -> String {
        self.name.map(|n| format!(" for {n:?}")).unwrap_or_default()
    }

    /// `expected a string for "Filter", found an integer`, on the value's line.
    fn type_error(&self, expected: &str) -> DecodeError {
        DecodeError::new(
            self.value.line,
            format!(
                "expected {expected}{}, found {}",
                self.for_name(),
                self.value.kind.describe()
            ),
        )
    }

    /// Gives a line to an error the visitor raised (it has none), naming the setting too.
    fn locate(&self, mut e: DecodeError) -> DecodeError {
        if e.line == 0 && self.value.line != 0 {
            e.line = self.value.line;
            if let Some(name) = self.name {
                e.message = format!("{name:?}: {}", e.message);
            }
        }
        e
    }

    /// An integer that must fit `T`, whose bounds are `min` and `max` for the message.
    fn int<T: TryFrom<i64>>(
        &self,
        type_name: &str,
        min: i128,
        max: i128,
    ) -> Result<T, DecodeError> {
        let Kind::Int(n) = self.value.kind else {
            return Err(self.type_error("an integer"));
        };
        T::try_from(n).map_err(|_| {
            let target = match self.name {
                Some(name) => format!("{name:?}"),
                None => format!("a {type_name}"),
            };
            DecodeError::new(
                self.value.line,
                format!("{n} is out of range for {target} ({min} to {max})"),
            )
        })
    }

    fn float(&self) -> Result<f64, DecodeError> {
        match self.value.kind {
            Kind::Float(f) => Ok(f),
            // Integers are numbers too: `Weight = 1` fills an f64.
            Kind::Int(n) => Ok(n as f64),
            _ => Err(self.type_error("a number")),
        }
    }

    fn str(&self) -> Result<&'a str, DecodeError> {
        match &self.value.kind {
            Kind::Str(s) => Ok(s),
            _ => Err(self.type_error("a string")),
        }
    }
}

macro_rules! deserialize_int {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
                let n: $ty = self.int(stringify!($ty), <$ty>::MIN.into(), <$ty>::MAX.into())?;
                visitor.$visit(n).map_err(|e| self.locate(e))
            }
        )*
    };
}

impl<'de, 'a> de::Deserializer<'de> for Decoder<'a> {
    type Error = DecodeError;

    /// For self-describing targets (`serde_json::Value`, untagged enums): keys stay as written.
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match &self.value.kind {
            Kind::Null => visitor.visit_unit(),
            Kind::Bool(b) => visitor.visit_bool(*b),
            Kind::Int(n) => visitor.visit_i64(*n),
            Kind::Float(f) => visitor.visit_f64(*f),
            Kind::Str(s) => visitor.visit_str(s),
            Kind::Array(items) => visitor.visit_seq(Seq::new(self, items)),
            Kind::Object(fields) => visitor.visit_map(Map::new(fields, None)),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value.kind {
            Kind::Bool(b) => visitor.visit_bool(b).map_err(|e| self.locate(e)),
            _ => Err(self.type_error("true or false")),
        }
    }

    deserialize_int! {
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let f = self.float()?;
        visitor.visit_f64(f).map_err(|e| self.locate(e))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let s = self.str()?;
        visitor.visit_str(s).map_err(|e| self.locate(e))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match &self.value.kind {
            Kind::Str(s) => visitor
                .visit_bytes(s.as_bytes())
                .map_err(|e| self.locate(e)),
            _ => self.deserialize_seq(visitor),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match self.value.kind {
            Kind::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        match self.value.kind {
            Kind::Null => visitor.visit_unit().map_err(|e| self.locate(e)),
            _ => Err(self.type_error("null")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        visitor
            .visit_newtype_struct(self)
            .map_err(|e| self.locate(e))
    }

    /// An object where a list is expected is a list of one: in HCL a single `check {}` block is
    /// an object, two are an array. Null (JSON from Consul's API writes it for empty lists) is
    /// an empty list.
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match &self.value.kind {
            Kind::Array(items) => visitor.visit_seq(Seq::new(self, items)),
            Kind::Object(_) => visitor.visit_seq(Seq::new(self, std::slice::from_ref(self.value))),
            Kind::Null => visitor.visit_seq(Seq::new(self, &[])),
            _ => return Err(self.type_error("a list")),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        self.deserialize_seq(visitor)
    }

    /// Map keys (`Meta`, `Subsets`, `Failover`) are data and stay exactly as written.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        let result = match &self.value.kind {
            Kind::Object(fields) => visitor.visit_map(Map::new(fields, None)),
            Kind::Null => visitor.visit_map(Map::new(&[], None)),
            _ => return Err(self.type_error("an object")),
        };
        result.map_err(|e| self.locate(e))
    }

    /// Keys are matched to the declared fields ignoring case and underscores, and handed to the
    /// visitor under the declared name; a key matching none is handed on as written, so
    /// `deny_unknown_fields` names it.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        if name == SPANNED_NAME {
            return visitor.visit_map(SpannedAccess {
                decoder: self,
                step: 0,
            });
        }
        let Kind::Object(entries) = &self.value.kind else {
            return Err(self.type_error("an object"));
        };
        let mut map = Map::new(entries, Some(fields));
        visitor.visit_map(&mut map).map_err(|mut e| {
            // Raised between a key and its value (a field given twice): the key's line.
            if let (0, Some(field)) = (e.line, map.current) {
                e.line = field.line;
            }
            self.locate(e)
        })
    }

    /// Unit variants from strings (`"allow"`); other variants from an object of one key.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        let result = match &self.value.kind {
            Kind::Str(s) => visitor.visit_enum(s.as_str().into_deserializer()),
            Kind::Object(fields) if fields.len() == 1 => visitor.visit_enum(Variant {
                field: &fields[0],
                parent: self,
            }),
            _ => return Err(self.type_error("a string or an object of one key")),
        };
        result.map_err(|e| self.locate(e))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DecodeError> {
        visitor.visit_unit()
    }
}

/// The elements of an array, each decoded under the array's name.
struct Seq<'a> {
    parent: Decoder<'a>,
    items: std::slice::Iter<'a, Value>,
}

impl<'a> Seq<'a> {
    fn new(parent: Decoder<'a>, items: &'a [Value]) -> Seq<'a> {
        Seq {
            parent,
            items: items.iter(),
        }
    }
}

impl<'de> de::SeqAccess<'de> for Seq<'_> {
    type Error = DecodeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DecodeError> {
        match self.items.next() {
            Some(item) => seed.deserialize(self.parent.child(item)).map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The fields of an object, for a map (`declared` is None: keys as written) or a struct
/// (keys renamed to the declared field they match).
struct Map<'a> {
    fields: std::slice::Iter<'a, Field>,
    declared: Option<&'static [&'static str]>,
    current: Option<&'a Field>,
}

impl<'a> Map<'a> {
    fn new(fields: &'a [Field], declared: Option<&'static [&'static str]>) -> Map<'a> {
        Map {
            fields: fields.iter(),
            declared,
            current: None,
        }
    }
}

impl<'de, 'a> de::MapAccess<'de> for Map<'a> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = Some(field);
        let key = self
            .declared
            .and_then(|declared| canonical_field(&field.key, declared))
            .unwrap_or(&field.key);
        let key: de::value::StrDeserializer<'_, DecodeError> = key.into_deserializer();
        // An unknown or duplicate field is reported on the key's own line.
        seed.deserialize(key).map(Some).map_err(|mut e| {
            if e.line == 0 {
                e.line = field.line;
            }
            e
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        let field = self
            .current
            .take()
            .ok_or_else(|| DecodeError::new(0, "a value was asked for before its key"))?;
        seed.deserialize(Decoder {
            value: &field.value,
            name: Some(&field.key),
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.fields.len())
    }
}

/// An externally tagged variant: the single key names it, its value holds the content.
struct Variant<'a> {
    field: &'a Field,
    parent: Decoder<'a>,
}

impl<'de, 'a> de::EnumAccess<'de> for Variant<'a> {
    type Error = DecodeError;
    type Variant = Decoder<'a>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Decoder<'a>), DecodeError> {
        let key: de::value::StrDeserializer<'_, DecodeError> =
            self.field.key.as_str().into_deserializer();
        let variant = seed.deserialize(key).map_err(|e| self.parent.locate(e))?;
        let content = Decoder {
            value: &self.field.value,
            name: Some(&self.field.key),
        };
        Ok((variant, content))
    }
}

impl<'de> de::VariantAccess<'de> for Decoder<'_> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<(), DecodeError> {
        de::Deserialize::deserialize(self)
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DecodeError> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        de::Deserializer::deserialize_seq(self, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DecodeError> {
        de::Deserializer::deserialize_struct(self, "", fields, visitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Spanned (the type lives in the model; the decoder fills in its line)
// ---------------------------------------------------------------------------------------------

/// Hands [`Spanned`] its two magic fields: the value's line, then the value itself.
struct SpannedAccess<'a> {
    decoder: Decoder<'a>,
    step: u8,
}

impl<'de> de::MapAccess<'de> for SpannedAccess<'_> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DecodeError> {
        let key = match self.step {
            0 => SPANNED_LINE,
            1 => SPANNED_VALUE,
            _ => return Ok(None),
        };
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DecodeError> {
        self.step += 1;
        if self.step == 1 {
            seed.deserialize(self.decoder.value.line.into_deserializer())
        } else {
            seed.deserialize(self.decoder)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::collections::BTreeMap;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Resolver {
        kind: String,
        name: String,
        #[serde(default)]
        default_subset: String,
        #[serde(default)]
        subsets: BTreeMap<String, Subset>,
        #[serde(default)]
        connect_timeout: Option<String>,
        #[serde(default)]
        failover: BTreeMap<String, Failover>,
        #[serde(default)]
        meta: BTreeMap<String, String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Subset {
        filter: String,
        #[serde(default)]
        only_passing: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Failover {
        #[serde(default)]
        datacenters: Vec<String>,
    }

    fn one(text: &str, format: Format) -> Value {
        let mut docs = parse(text, format).unwrap();
        assert_eq!(docs.len(), 1, "{docs:?}");
        docs.remove(0).value
    }

    fn decode_one<T: de::DeserializeOwned>(text: &str, format: Format) -> Result<T, DecodeError> {
        decode(&one(text, format))
    }

    fn decode_err<T: de::DeserializeOwned + fmt::Debug>(text: &str, format: Format) -> String {
        decode_one::<T>(text, format).unwrap_err().to_string()
    }

    fn syntax_err(text: &str, format: Format) -> SyntaxError {
        parse(text, format).unwrap_err()
    }

    const RESOLVER_HCL: &str = r#"
Kind = "service-resolver"
Name = "web"
DefaultSubset = "v1"
Subsets = {
  v1 = {
    Filter = "Service.Meta.version == v1"
    OnlyPassing = true
  }
}
ConnectTimeout = "15s"
Failover = {
  "*" = {
    Datacenters = ["dc2"]
  }
}
Meta = { Owner_Team = "edge" }
"#;

    /// snake_case, blocks instead of object attributes, and a labelled block for the `*` key.
    const RESOLVER_HCL_SNAKE: &str = r#"
kind = "service-resolver"
name = "web"
default_subset = "v1"
subsets {
  v1 {
    filter = "Service.Meta.version == v1"
    only_passing = true
  }
}
connect_timeout = "15s"
failover "*" {
  datacenters = ["dc2"]
}
meta {
  Owner_Team = "edge"
}
"#;

    const RESOLVER_JSON: &str = r#"{
  "Kind": "service-resolver",
  "Name": "web",
  "DefaultSubset": "v1",
  "Subsets": {
    "v1": {"Filter": "Service.Meta.version == v1", "OnlyPassing": true}
  },
  "ConnectTimeout": "15s",
  "Failover": {"*": {"Datacenters": ["dc2"]}},
  "Meta": {"Owner_Team": "edge"}
}"#;

    const RESOLVER_YAML_SNAKE: &str = r#"
kind: service-resolver
name: web
default_subset: v1
subsets:
  v1:
    filter: Service.Meta.version == v1
    only_passing: true
connect_timeout: 15s
failover:
  "*":
    datacenters:
      - dc2
meta:
  Owner_Team: edge
"#;

    /// All lower case, no underscores, in flow style.
    const RESOLVER_YAML_LOWER: &str = r#"
kind: "service-resolver"
name: 'web'
defaultsubset: v1
subsets: {v1: {filter: "Service.Meta.version == v1", onlypassing: true}}
connecttimeout: 15s
failover: {"*": {datacenters: [dc2]}}
meta: {Owner_Team: edge}
"#;

    #[test]
    fn the_same_entry_in_every_format_and_case_decodes_equal() {
        let expected = Resolver {
            kind: "service-resolver".into(),
            name: "web".into(),
            default_subset: "v1".into(),
            subsets: BTreeMap::from([(
                "v1".into(),
                Subset {
                    filter: "Service.Meta.version == v1".into(),
                    only_passing: true,
                },
            )]),
            connect_timeout: Some("15s".into()),
            failover: BTreeMap::from([(
                "*".into(),
                Failover {
                    datacenters: vec!["dc2".into()],
                },
            )]),
            meta: BTreeMap::from([("Owner_Team".into(), "edge".into())]),
        };
        for (text, format) in [
            (RESOLVER_HCL, Format::Hcl),
            (RESOLVER_HCL_SNAKE, Format::Hcl),
            (RESOLVER_JSON, Format::Json),
            (RESOLVER_YAML_SNAKE, Format::Yaml),
            (RESOLVER_YAML_LOWER, Format::Yaml),
        ] {
            let got: Resolver = decode_one(text, format).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(got, expected, "{format:?}:\n{text}");
        }
    }

    #[test]
    fn map_keys_are_not_normalized() {
        // `Owner_Team` and `owner_team` are different metadata keys, and `V1` is not `v1`.
        let text = "Meta = {\n  Owner_Team = \"a\"\n  owner_team = \"b\"\n}\nSubsets = { V1 = {} }";
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            meta: BTreeMap<String, String>,
            subsets: BTreeMap<String, serde_json::Value>,
        }
        let entry: Entry = decode_one(text, Format::Hcl).unwrap();
        let keys: Vec<_> = entry.meta.keys().map(String::as_str).collect();
        assert_eq!(keys, ["Owner_Team", "owner_team"]);
        assert!(entry.subsets.contains_key("V1"));
    }

    #[test]
    fn field_names_ignore_case_and_underscores_but_prefer_an_exact_match() {
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(deny_unknown_fields)]
        struct Tls {
            #[serde(rename = "TLSMinVersion")]
            min: String,
            #[serde(rename = "name", default)]
            lower: String,
            #[serde(rename = "Name", default)]
            upper: String,
        }
        let tls: Tls =
            decode_one("tls_min_version: TLSv1_2\nName: a\nname: b\n", Format::Yaml).unwrap();
        assert_eq!(tls.min, "TLSv1_2");
        assert_eq!((tls.upper.as_str(), tls.lower.as_str()), ("a", "b"));

        // Two spellings of one field are one field given twice, reported at the second.
        let twice = "Kind: x\nName: web\nDefaultSubset: a\ndefault_subset: b\n";
        let err = decode_err::<Resolver>(twice, Format::Yaml);
        assert_eq!(err, "line 4: \"DefaultSubset\" is given twice");
    }

    #[test]
    fn yaml_documents_are_split_with_their_lines() {
        let text = "Kind: service-defaults\nName: web\n---\n# api\nKind: service-defaults\nName: api\n---\n";
        let docs = parse(text, Format::Yaml).unwrap();
        assert_eq!(docs.len(), 2, "the trailing --- is no document");
        assert_eq!(docs[0].line, 1);
        assert_eq!(docs[1].line, 3);
        assert_eq!(docs[1].value.line, 5);
        let name = docs[1].value.field("name").unwrap();
        assert_eq!((name.line, name.value.as_str()), (6, Some("api")));
    }

    #[test]
    fn yaml_top_level_list_is_one_array_document() {
        let text = "- Name: a\n  Port: 1\n- Name: b\n  Port: 2\n";
        let value = one(text, Format::Yaml);
        let Kind::Array(items) = value.kind else {
            panic!("not an array: {value:?}");
        };
        assert_eq!(items.iter().map(|i| i.line).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn yaml_plain_scalars_follow_the_core_schema_and_quoted_ones_are_strings() {
        let text = "a: true\nb: \"true\"\nc: ~\nd: 0x1F\ne: -12\nf: 1.5\ng: 15s\nh: '8080'\ni: null\nj: 1e3\nk: 0o17\nl:\n";
        let value = one(text, Format::Yaml);
        let kinds: Vec<_> = "abcdefghijkl"
            .chars()
            .map(|k| value.field(&k.to_string()).unwrap().value.kind.clone())
            .collect();
        assert_eq!(
            kinds,
            [
                Kind::Bool(true),
                Kind::Str("true".into()),
                Kind::Null,
                Kind::Int(31),
                Kind::Int(-12),
                Kind::Float(1.5),
                Kind::Str("15s".into()),
                Kind::Str("8080".into()),
                Kind::Null,
                Kind::Float(1000.0),
                Kind::Int(15),
                Kind::Null,
            ]
        );
    }

    #[test]
    fn yaml_aliases_resolve_to_the_anchored_value() {
        let text = "base: &b {Port: 80}\ncopy: *b\n";
        let value = one(text, Format::Yaml);
        assert_eq!(
            value.field("copy").unwrap().value.kind,
            value.field("base").unwrap().value.kind
        );
    }

    #[test]
    fn json_array_file_is_one_document_with_item_lines() {
        let text = "[\n  {\"Name\": \"a\"},\n\n  {\"Name\": \"b\", \"Tags\": [\"x\\u00e9\\ud83d\\ude00\"]}\n]";
        let docs = parse(text, Format::Json).unwrap();
        assert_eq!(docs.len(), 1);
        let Kind::Array(items) = &docs[0].value.kind else {
            panic!("not an array");
        };
        assert_eq!(items.iter().map(|i| i.line).collect::<Vec<_>>(), [2, 4]);
        let tags = &items[1].field("Tags").unwrap().value;
        assert_eq!(
            tags.kind,
            Kind::Array(vec![Value::new(4, Kind::Str("xé😀".into()))])
        );
    }

    #[test]
    fn json_with_tabs_and_numbers() {
        let text =
            "{\n\t\"Port\": 8080,\n\t\"Weight\": -1.5e2,\n\t\"On\": false,\n\t\"X\": null\n}";
        let value = one(text, Format::Json);
        let port = value.field("Port").unwrap();
        assert_eq!((port.line, &port.value.kind), (2, &Kind::Int(8080)));
        assert_eq!(
            value.field("Weight").unwrap().value.kind,
            Kind::Float(-150.0)
        );
        assert_eq!(value.field("On").unwrap().value.kind, Kind::Bool(false));
        assert_eq!(value.field("X").unwrap().value.kind, Kind::Null);
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Service {
        name: String,
        #[serde(default)]
        port: u16,
        #[serde(default)]
        checks: Vec<Check>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Check {
        name: String,
    }

    #[test]
    fn hcl_repeated_blocks_become_an_array_and_one_block_a_list_of_one() {
        let text = "service {\n  name = \"web\"\n  checks {\n    name = \"a\"\n  }\n  checks {\n    name = \"b\"\n  }\n}\n";
        let value = one(text, Format::Hcl);
        let service = &value.field("service").unwrap().value;
        let Kind::Array(checks) = &service.field("checks").unwrap().value.kind else {
            panic!("not an array: {service:?}");
        };
        assert_eq!(checks.iter().map(|c| c.line).collect::<Vec<_>>(), [3, 6]);

        #[derive(Deserialize)]
        struct File {
            service: Service,
        }
        let two: File = decode(&value).unwrap();
        let names: Vec<_> = two.service.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);

        let single = "service {\n  name = \"web\"\n  checks {\n    name = \"a\"\n  }\n}\n";
        let one_check: File = decode_one(single, Format::Hcl).unwrap();
        assert_eq!(one_check.service.checks, [Check { name: "a".into() }]);

        // A list written as an attribute stays a list.
        let list = "service {\n  name = \"web\"\n  checks = [{ name = \"a\" }]\n}\n";
        let from_list: File = decode_one(list, Format::Hcl).unwrap();
        assert_eq!(from_list.service, one_check.service);
    }

    #[test]
    fn hcl_labelled_blocks_nest_by_label() {
        let text = "service \"web\" {\n  port = 80\n}\nservice \"api\" {\n  port = 81\n}\nupstream \"dc2\" \"db\" {\n  port = 5432\n}\n";
        let value = one(text, Format::Hcl);
        let service = &value.field("service").unwrap().value;
        assert_eq!(service.line, 1);
        let api = service.field("api").unwrap();
        assert_eq!(api.line, 4);
        assert_eq!(api.value.field("port").unwrap().value.kind, Kind::Int(81));
        let db = value.field("upstream").unwrap().value.field("dc2").unwrap();
        let port = &db
            .value
            .field("db")
            .unwrap()
            .value
            .field("port")
            .unwrap()
            .value;
        assert_eq!((port.line, &port.kind), (8, &Kind::Int(5432)));

        #[derive(Deserialize)]
        struct Ports {
            port: u16,
        }
        #[derive(Deserialize)]
        struct File {
            service: BTreeMap<String, Ports>,
        }
        let file: File = decode(&value).unwrap();
        assert_eq!(file.service["web"].port, 80);
        assert_eq!(file.service["api"].port, 81);
    }

    #[test]
    fn hcl_heredocs_negative_numbers_and_string_keys() {
        let text = "Script = <<EOT\necho hi\nEOT\nIndented = <<-EOT\n    a\n    b\n  EOT\nOffset = -3\nRatio = -0.5\nTags = { \"a.b\" = 1, c = \"$${literal}\" }\n";
        let value = one(text, Format::Hcl);
        let get = |k: &str| value.field(k).unwrap().value.kind.clone();
        assert_eq!(get("Script"), Kind::Str("echo hi\n".into()));
        assert_eq!(get("Indented"), Kind::Str("a\nb\n".into()));
        assert_eq!(get("Offset"), Kind::Int(-3));
        assert_eq!(get("Ratio"), Kind::Float(-0.5));
        let tags = &value.field("Tags").unwrap().value;
        assert_eq!(tags.field("a.b").unwrap().value.kind, Kind::Int(1));
        assert_eq!(tags.field("c").unwrap().value.as_str(), Some("${literal}"));
    }

    #[test]
    fn hcl_interpolation_and_expressions_are_refused_with_their_line() {
        let err = syntax_err(
            "Kind = \"service-defaults\"\nName = \"${var.name}\"\n",
            Format::Hcl,
        );
        assert_eq!(err.line, 2);
        assert_eq!(err.message, "interpolation is not supported");

        for (text, what) in [
            ("A = 1\nB = upper(\"x\")\n", "a function call"),
            ("A = 1\nB = var.x\n", "a reference"),
            ("A = 1\nB = 1 + 2\n", "an operator"),
            ("A = 1\nB = true ? 1 : 2\n", "a conditional"),
            ("A = 1\nB = web\n", "web is a variable reference"),
        ] {
            let err = syntax_err(text, Format::Hcl);
            assert_eq!(err.line, 2, "{text}");
            assert!(err.message.contains(what), "{text}: {}", err.message);
        }
    }

    #[test]
    fn hcl_conflicting_keys_are_refused() {
        // hcl-edit refuses a repeated attribute itself.
        assert_eq!(
            syntax_err("Name = \"a\"\n\nName = \"b\"\n", Format::Hcl).line,
            3
        );
        let err = syntax_err("Check = 1\n\nCheck {}\n", Format::Hcl);
        assert_eq!(
            err.to_string(),
            "line 3: Check is already set as an attribute on line 1"
        );
        let err = syntax_err("check {}\n\ncheck = 1\n", Format::Hcl);
        assert_eq!(err.to_string(), "line 3: check is already set on line 1");
        let err = syntax_err("check {}\ncheck \"x\" {}\n", Format::Hcl);
        assert_eq!(err.line, 2);
    }

    #[test]
    fn unknown_field_reports_the_key_line_in_every_format() {
        for (text, format) in [
            (
                "Kind = \"x\"\nName = \"web\"\n\nProtcol = \"http\"\n",
                Format::Hcl,
            ),
            (
                "{\n  \"Kind\": \"x\",\n  \"Name\": \"web\",\n  \"Protcol\": \"http\"\n}",
                Format::Json,
            ),
            (
                "Kind: x\nName: web\n# typo below\nProtcol: http\n",
                Format::Yaml,
            ),
        ] {
            let err = decode_one::<Resolver>(text, format).unwrap_err();
            assert_eq!(
                err.to_string(),
                "line 4: unknown field \"Protcol\"",
                "{format:?}"
            );
        }
    }

    #[test]
    fn unknown_field_in_a_nested_value_keeps_the_key_line() {
        // The key is on line 3 and its value on line 4: the key's line is reported.
        let text = "Name: web\nSubsets:\n  v1:\n    Filtre:\n      x\n";
        let err = decode_one::<Resolver>(text, Format::Yaml).unwrap_err();
        assert_eq!(err.line, 4);
        assert!(err.message.contains("\"Filtre\""), "{err}");
    }

    #[test]
    fn type_errors_name_the_value_line_and_the_field() {
        let hcl = "Kind = \"x\"\nName = \"web\"\nSubsets = {\n  v1 = {\n    Filter = 12\n  }\n}\n";
        assert_eq!(
            decode_err::<Resolver>(hcl, Format::Hcl),
            "line 5: expected a string for \"Filter\", found an integer"
        );
        // The value sits on the line after its key: the value's line is reported.
        let yaml = "Kind: x\nName: web\nsubsets:\n  v1:\n    filter:\n      [a]\n";
        assert_eq!(
            decode_err::<Resolver>(yaml, Format::Yaml),
            "line 6: expected a string for \"filter\", found an array"
        );
        let json = "{\"Kind\": \"x\", \"Name\": \"web\",\n \"Failover\": {\"*\": {\"Datacenters\": [\n \"dc2\", 3]}}}";
        assert_eq!(
            decode_err::<Resolver>(json, Format::Json),
            "line 3: expected a string for \"Datacenters\", found an integer"
        );
        let no_coercion = "Kind: x\nName: web\nSubsets: {v1: {Filter: a, OnlyPassing: \"true\"}}\n";
        assert_eq!(
            decode_err::<Resolver>(no_coercion, Format::Yaml),
            "line 3: expected true or false for \"OnlyPassing\", found a string"
        );
    }

    #[test]
    fn missing_field_names_the_object_line() {
        let err = decode_err::<Resolver>("\nKind: x\n", Format::Yaml);
        assert_eq!(err, "line 2: missing field \"Name\"");
    }

    #[test]
    fn integers_are_range_checked_and_floats_refused() {
        let err = decode_err::<Service>("Name = \"web\"\nPort = 70000\n", Format::Hcl);
        assert_eq!(
            err,
            "line 2: 70000 is out of range for \"Port\" (0 to 65535)"
        );
        let err = decode_err::<Service>("Name: web\nport: -1\n", Format::Yaml);
        assert_eq!(err, "line 2: -1 is out of range for \"port\" (0 to 65535)");
        let err = decode_err::<Service>("{\"Name\": \"web\",\n\"Port\": 80.5}", Format::Json);
        assert_eq!(
            err,
            "line 2: expected an integer for \"Port\", found a float"
        );

        #[derive(Deserialize)]
        struct Weight {
            w: f64,
        }
        let w: Weight = decode_one("w: 3\n", Format::Yaml).unwrap();
        assert_eq!(w.w, 3.0);
    }

    #[test]
    fn syntax_errors_report_their_line_in_every_format() {
        let hcl = syntax_err("Kind = \"x\"\nName = \"web\"\nPort = \n", Format::Hcl);
        assert_eq!(hcl.line, 3, "{hcl}");
        let json = syntax_err(
            "{\n  \"Kind\": \"x\",\n  \"Name\": \"web\"\n  \"Port\": 1\n}",
            Format::Json,
        );
        assert_eq!(json.line, 4, "{json}");
        assert!(json.message.contains("line 4 column"), "{json}");
        let yaml = syntax_err("Kind: x\nName: web\n  Port: 1\n", Format::Yaml);
        assert_eq!(yaml.line, 3, "{yaml}");
        let yaml_flow = syntax_err("Kind: x\nTags: [a, b\nName: web\n", Format::Yaml);
        assert!(yaml_flow.line >= 2, "{yaml_flow}");
        // Not JSON even though it is YAML: JSON files are held to JSON.
        let not_json = syntax_err("{\n  Kind: x\n}", Format::Json);
        assert_eq!(not_json.line, 2, "{not_json}");
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Named {
        name: Spanned<String>,
        #[serde(default)]
        port: Option<Spanned<u16>>,
    }

    #[test]
    fn spanned_captures_the_value_line_in_every_format() {
        for (text, format) in [
            ("Kind = \"x\"\n\nName = \"web\"\n", Format::Hcl),
            ("{\"Kind\": \"x\",\n\n \"Name\": \"web\"}", Format::Json),
            ("Kind: x\n\nname: web\n", Format::Yaml),
            ("Kind: x\nname:\n  web\n", Format::Yaml),
        ] {
            let named: Named = decode_one(text, format).unwrap();
            assert_eq!(named.name.line, 3, "{format:?}: {text}");
            assert_eq!(*named.name, "web");
            assert!(named.port.is_none());
        }
        let with_port: Named = decode_one("Name: web\nPort: 8080\n", Format::Yaml).unwrap();
        let port = with_port.port.unwrap();
        assert_eq!((port.line, port.value), (2, 8080));
        assert_eq!(serde_json::to_string(&port).unwrap(), "8080");
        let err = decode_err::<Named>("Name: web\nPort: x\n", Format::Yaml);
        assert_eq!(
            err,
            "line 2: expected an integer for \"Port\", found a string"
        );
    }

    #[test]
    fn enums_from_strings_and_single_key_objects() {
        #[derive(Debug, Deserialize, PartialEq)]
        enum Action {
            #[serde(rename = "allow")]
            Allow,
            #[serde(rename = "deny")]
            Deny,
        }
        #[derive(Debug, Deserialize, PartialEq)]
        enum Match {
            Exact(String),
            Range { start: u16, end: u16 },
        }
        #[derive(Debug, Deserialize, PartialEq)]
        #[serde(rename_all = "PascalCase")]
        struct Rule {
            action: Action,
            matches: Vec<Match>,
        }
        let text = "action: deny\nmatches:\n  - Exact: /admin\n  - Range: {start: 1, end: 9}\n";
        let rule: Rule = decode_one(text, Format::Yaml).unwrap();
        assert_eq!(
            rule,
            Rule {
                action: Action::Deny,
                matches: vec![
                    Match::Exact("/admin".into()),
                    Match::Range { start: 1, end: 9 }
                ],
            }
        );
        let err = decode_err::<Rule>("action: maybe\nmatches: []\n", Format::Yaml);
        assert!(
            err.starts_with("line 1: \"action\": unknown value \"maybe\""),
            "{err}"
        );
    }

    #[test]
    fn arbitrary_config_decodes_into_json_values() {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct ProxyDefaults {
            config: BTreeMap<String, serde_json::Value>,
        }
        let text = "Config {\n  protocol = \"http\"\n  envoy_extra = { Max_Conns = 5, ratio = 0.5, on = true, none = null }\n}\n";
        let entry: ProxyDefaults = decode_one(text, Format::Hcl).unwrap();
        assert_eq!(entry.config["protocol"], "http");
        assert_eq!(
            entry.config["envoy_extra"],
            serde_json::json!({"Max_Conns": 5, "ratio": 0.5, "on": true, "none": null})
        );
    }

    #[test]
    fn json_from_the_http_api_has_no_lines() {
        let json = serde_json::json!({"Name": "web", "Port": 70000, "Checks": null});
        let value = Value::from(&json);
        assert_eq!(value.line, 0);
        assert_eq!(value.field("port").unwrap().value.kind, Kind::Int(70000));
        let err = decode::<Service>(&value).unwrap_err();
        assert_eq!(
            err.to_string(),
            "70000 is out of range for \"Port\" (0 to 65535)"
        );
        let ok = Value::from(&serde_json::json!({"Name": "web", "Checks": null}));
        assert_eq!(decode::<Service>(&ok).unwrap().checks, []);
    }

    #[test]
    fn null_is_none_and_unit() {
        #[derive(Debug, Deserialize)]
        struct Opt {
            a: Option<String>,
            #[allow(dead_code)]
            b: (),
        }
        let opt: Opt = decode_one("a: null\nb: ~\n", Format::Yaml).unwrap();
        assert!(opt.a.is_none());
        let err = decode_err::<Opt>("a: x\nb: 1\n", Format::Yaml);
        assert_eq!(err, "line 2: expected null for \"b\", found an integer");
    }

    #[test]
    fn empty_files_hold_no_documents_except_in_json() {
        assert_eq!(parse("# nothing\n", Format::Yaml).unwrap(), []);
        assert_eq!(parse("// nothing\n", Format::Hcl).unwrap(), []);
        assert_eq!(syntax_err("  \n", Format::Json).line, 2);
    }

    #[test]
    fn format_from_path_extension() {
        assert_eq!(Format::from_path(Path::new("a/b.hcl")), Some(Format::Hcl));
        assert_eq!(Format::from_path(Path::new("b.JSON")), Some(Format::Json));
        assert_eq!(Format::from_path(Path::new("b.yml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("b.yaml")), Some(Format::Yaml));
        assert_eq!(Format::from_path(Path::new("b.toml")), None);
        assert_eq!(Format::from_path(Path::new("yaml")), None);
    }
}

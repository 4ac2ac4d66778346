//! Consul's filter expressions (the go-bexpr language), as used by the `Filter` of a
//! `service-resolver` subset, evaluated against one service instance (a `/v1/health/service`
//! entry: `Node` and `Service`).
//!
//! The grammar follows go-bexpr's:
//!
//! ```text
//! filter     = ws? or ws? EOF
//! or         = and (WS "or" WS and)*
//! and        = not (WS "and" WS not)*
//! not        = "not" WS not | group
//! group      = "(" ws? or ws? ")" | match
//! match      = selector ws? ("==" | "!=") ws? value
//!            | selector WS ("contains" | "not" WS "contains" | "matches" | "not" WS "matches") WS value
//!            | selector WS "is" WS ("empty" | "not" WS "empty")
//!            | value WS ("in" | "not" WS "in") WS selector
//! selector   = name ("." name | "." digits | "[" ws? string ws? "]")*  |  '"' ("/" segment)* '"'
//! name       = [a-zA-Z] [a-zA-Z0-9_/]*
//! value      = selector | number | string
//! number     = "-"? ("0" | [1-9][0-9]*) ("." [0-9]+)?       (followed by whitespace, ")" or the end)
//! string     = '"' chars with Go escapes, no '"' '"'  |  '`' raw chars '`'
//! ```
//!
//! So an unquoted value (a "bareword") is anything that parses as a selector: `v1`, `v1.2`,
//! `a/b`; `prod-east` or `10.0.0.1` must be quoted. A selector-shaped value stands for its
//! parts joined with `.`, a JSON-pointer-shaped quoted value (`"/a/b"`) for its parts joined
//! with `/` (so it loses its leading slash, exactly as in go-bexpr).
//!
//! Unlike go-bexpr, which resolves selectors by reflection when it evaluates, selectors are
//! checked when the filter is parsed, against the fields Consul's health endpoint returns
//! that meshgate models (see [`Selector`]), and so are the operator/field combinations that
//! go-bexpr would reject on every evaluation (`==` on a list, `matches` on the port, a port
//! compared with `abc`) and the regular expressions. Collection expressions (`any`/`all`)
//! and `is nil` are not supported.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

/// How deep parentheses and `not` may nest; keeps parsing and evaluation off the stack limit.
const MAX_DEPTH: usize = 64;

/// A field of a service instance that a filter reads, as named in Consul's health API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Selector<'a> {
    /// `Service.ID`: a string.
    ServiceId,
    /// `Service.Service`: the service name, a string.
    ServiceName,
    /// `Service.Kind`: a string, empty for a typical service.
    ServiceKind,
    /// `Service.Address`: a string.
    ServiceAddress,
    /// `Service.Port`: a number ([`Value::Int`]).
    ServicePort,
    /// `Service.Tags`: a list.
    ServiceTags,
    /// `Service.Meta`: a map.
    ServiceMeta,
    /// `Service.Meta.<key>`: the string under the key, or [`Value::Missing`].
    ServiceMetaKey(&'a str),
    /// `Node.ID`: a string.
    NodeId,
    /// `Node.Node`: the node name, a string.
    NodeName,
    /// `Node.Address`: a string.
    NodeAddress,
    /// `Node.Datacenter`: a string.
    NodeDatacenter,
    /// `Node.Meta`: a map.
    NodeMeta,
    /// `Node.Meta.<key>`: the string under the key, or [`Value::Missing`].
    NodeMetaKey(&'a str),
    /// `Node.TaggedAddresses`: a map.
    NodeTaggedAddresses,
    /// `Node.TaggedAddresses.<key>`: the string under the key, or [`Value::Missing`].
    NodeTaggedAddressesKey(&'a str),
}

impl fmt::Display for Selector<'_> {
    /// The selector as it would be written in a filter.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (field, key) = match *self {
            Selector::ServiceId => (Field::ServiceId, None),
            Selector::ServiceName => (Field::ServiceName, None),
            Selector::ServiceKind => (Field::ServiceKind, None),
            Selector::ServiceAddress => (Field::ServiceAddress, None),
            Selector::ServicePort => (Field::ServicePort, None),
            Selector::ServiceTags => (Field::ServiceTags, None),
            Selector::ServiceMeta => (Field::ServiceMeta, None),
            Selector::ServiceMetaKey(k) => (Field::ServiceMeta, Some(k)),
            Selector::NodeId => (Field::NodeId, None),
            Selector::NodeName => (Field::NodeName, None),
            Selector::NodeAddress => (Field::NodeAddress, None),
            Selector::NodeDatacenter => (Field::NodeDatacenter, None),
            Selector::NodeMeta => (Field::NodeMeta, None),
            Selector::NodeMetaKey(k) => (Field::NodeMeta, Some(k)),
            Selector::NodeTaggedAddresses => (Field::NodeTaggedAddresses, None),
            Selector::NodeTaggedAddressesKey(k) => (Field::NodeTaggedAddresses, Some(k)),
        };
        f.write_str(field.name())?;
        match key {
            None => Ok(()),
            Some(k) if is_name(k) => write!(f, ".{k}"),
            Some(k) if !k.contains(['"', '\\', '\n']) => write!(f, "[\"{k}\"]"),
            Some(k) => write!(f, "[`{k}`]"),
        }
    }
}

/// What an instance holds for a [`Selector`].
///
/// Return the shape documented on the selector: a different shape (say `Str` for
/// `Service.Port`) makes the positive operators (`==`, `contains`, `is empty`, `matches`)
/// false and their negations true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    List(&'a [String]),
    Map(&'a BTreeMap<String, String>),
    /// A map key that is not there.
    Missing,
}

impl<'a> Value<'a> {
    /// The value for a `….<key>` selector: the entry's string, or [`Value::Missing`].
    pub fn entry(map: &'a BTreeMap<String, String>, key: &str) -> Value<'a> {
        map.get(key).map_or(Value::Missing, |v| Value::Str(v))
    }
}

/// What a filter reads from an instance.
pub trait Selectable {
    fn select(&self, selector: Selector<'_>) -> Value<'_>;
}

/// A parsed filter expression. Compares (and prints) as its source text.
#[derive(Clone, Debug)]
pub struct Filter {
    text: String,
    expr: Expr,
}

impl Filter {
    /// Parses `text`, checking its selectors, operator/field combinations, numbers and
    /// regular expressions. An empty text is an error: the caller decides what a subset
    /// without a filter means (in Consul, every instance).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        let mut parser = Parser {
            chars: text.chars().collect(),
            pos: 0,
            far: 0,
            expected: Vec::new(),
            depth: 0,
        };
        match parser.filter() {
            Ok(expr) => Ok(Filter {
                text: text.to_owned(),
                expr,
            }),
            Err(Fail::Fatal(pos, message)) => Err(FilterError::new(text, pos, message)),
            Err(Fail::Soft) => Err(FilterError::new(text, parser.far, parser.expectation())),
        }
    }

    /// Whether the instance passes the filter.
    pub fn matches(&self, target: &dyn Selectable) -> bool {
        self.expr.eval(target)
    }

    /// The source text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Filter {
    fn eq(&self, other: &Filter) -> bool {
        self.text == other.text
    }
}

impl Eq for Filter {}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Filter {
    type Err = FilterError;

    fn from_str(text: &str) -> Result<Filter, FilterError> {
        Filter::parse(text)
    }
}

/// Why a filter does not parse: where (a 1-based character column) and what was expected.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("filter {filter:?}: at column {column}: {message}")]
pub struct FilterError {
    filter: String,
    column: usize,
    message: String,
}

impl FilterError {
    fn new(filter: &str, pos: usize, message: String) -> FilterError {
        FilterError {
            filter: filter.to_owned(),
            column: pos + 1,
            message,
        }
    }

    /// The filter text.
    pub fn filter(&self) -> &str {
        &self.filter
    }

    /// The 1-based character column of the problem (one past the end for a filter cut short).
    pub fn column(&self) -> usize {
        self.column
    }

    /// What is wrong, without the filter and column.
    pub fn message(&self) -> &str {
        &self.message
    }
}

// ---------------------------------------------------------------------------------------------
// Fields and the parsed expression

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ServiceId,
    ServiceName,
    ServiceKind,
    ServiceAddress,
    ServicePort,
    ServiceTags,
    ServiceMeta,
    NodeId,
    NodeName,
    NodeAddress,
    NodeDatacenter,
    NodeMeta,
    NodeTaggedAddresses,
}

const FIELDS: [Field; 13] = [
    Field::ServiceId,
    Field::ServiceName,
    Field::ServiceKind,
    Field::ServiceAddress,
    Field::ServicePort,
    Field::ServiceTags,
    Field::ServiceMeta,
    Field::NodeId,
    Field::NodeName,
    Field::NodeAddress,
    Field::NodeDatacenter,
    Field::NodeMeta,
    Field::NodeTaggedAddresses,
];

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::ServiceId => "Service.ID",
            Field::ServiceName => "Service.Service",
            Field::ServiceKind => "Service.Kind",
            Field::ServiceAddress => "Service.Address",
            Field::ServicePort => "Service.Port",
            Field::ServiceTags => "Service.Tags",
            Field::ServiceMeta => "Service.Meta",
            Field::NodeId => "Node.ID",
            Field::NodeName => "Node.Node",
            Field::NodeAddress => "Node.Address",
            Field::NodeDatacenter => "Node.Datacenter",
            Field::NodeMeta => "Node.Meta",
            Field::NodeTaggedAddresses => "Node.TaggedAddresses",
        }
    }

    fn kind(self) -> Kind {
        match self {
            Field::ServicePort => Kind::Int,
            Field::ServiceTags => Kind::List,
            Field::ServiceMeta | Field::NodeMeta | Field::NodeTaggedAddresses => Kind::Map,
            _ => Kind::Str,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    List,
    Map,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Int => "a number",
            Kind::List => "a list",
            Kind::Map => "a map",
        }
    }
}

/// A resolved selector: a field and, for a map, maybe one key of it.
#[derive(Debug, Clone)]
struct Path {
    field: Field,
    key: Option<String>,
}

impl Path {
    fn resolve(parts: &[String]) -> Option<Path> {
        let [root, name, rest @ ..] = parts else {
            return None;
        };
        let field = FIELDS
            .into_iter()
            .find(|f| f.name().split_once('.') == Some((root.as_str(), name.as_str())))?;
        match rest {
            [] => Some(Path { field, key: None }),
            [key] if field.kind() == Kind::Map => Some(Path {
                field,
                key: Some(key.clone()),
            }),
            _ => None,
        }
    }

    fn kind(&self) -> Kind {
        match self.key {
            Some(_) => Kind::Str,
            None => self.field.kind(),
        }
    }

    fn selector(&self) -> Selector<'_> {
        match (self.field, self.key.as_deref()) {
            (Field::ServiceId, _) => Selector::ServiceId,
            (Field::ServiceName, _) => Selector::ServiceName,
            (Field::ServiceKind, _) => Selector::ServiceKind,
            (Field::ServiceAddress, _) => Selector::ServiceAddress,
            (Field::ServicePort, _) => Selector::ServicePort,
            (Field::ServiceTags, _) => Selector::ServiceTags,
            (Field::ServiceMeta, None) => Selector::ServiceMeta,
            (Field::ServiceMeta, Some(k)) => Selector::ServiceMetaKey(k),
            (Field::NodeId, _) => Selector::NodeId,
            (Field::NodeName, _) => Selector::NodeName,
            (Field::NodeAddress, _) => Selector::NodeAddress,
            (Field::NodeDatacenter, _) => Selector::NodeDatacenter,
            (Field::NodeMeta, None) => Selector::NodeMeta,
            (Field::NodeMeta, Some(k)) => Selector::NodeMetaKey(k),
            (Field::NodeTaggedAddresses, None) => Selector::NodeTaggedAddresses,
            (Field::NodeTaggedAddresses, Some(k)) => Selector::NodeTaggedAddressesKey(k),
        }
    }
}

#[derive(Debug, Clone)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Not(Box<Expr>),
    Match(Box<Match>),
}

#[derive(Debug, Clone)]
struct Match {
    path: Path,
    test: Test,
    /// `!=`, `not in`, `not contains`, `is not empty`, `not matches`.
    negated: bool,
}

#[derive(Debug, Clone)]
enum Test {
    Equal(String),
    EqualInt(i64),
    /// `in` and `contains`: list element, map key or substring.
    Contains(String),
    Empty,
    Matches(Regex),
}

impl Expr {
    fn eval(&self, target: &dyn Selectable) -> bool {
        match self {
            Expr::Or(items) => items.iter().any(|e| e.eval(target)),
            Expr::And(items) => items.iter().all(|e| e.eval(target)),
            Expr::Not(inner) => !inner.eval(target),
            Expr::Match(m) => m.eval(target),
        }
    }
}

impl Match {
    fn eval(&self, target: &dyn Selectable) -> bool {
        let value = target.select(self.path.selector());
        let hit = match (&self.test, value) {
            // A missing map key is handled as go-bexpr does: nothing equals, contains or
            // matches it, and it counts as empty. So `Service.Meta.version != v1` and
            // `Service.Meta.version is empty` hold for an instance without that key, which
            // keeps `X` and `not X` forms consistent with `!=`/`not in`/`is not empty`.
            (Test::Empty, Value::Missing) => true,
            (_, Value::Missing) => false,
            (Test::Equal(want), Value::Str(s)) => s == want,
            (Test::EqualInt(want), Value::Int(i)) => i == *want,
            (Test::Contains(want), Value::Str(s)) => s.contains(want.as_str()),
            (Test::Contains(want), Value::List(items)) => items.iter().any(|i| i == want),
            (Test::Contains(want), Value::Map(map)) => map.contains_key(want),
            (Test::Empty, Value::Str(s)) => s.is_empty(),
            (Test::Empty, Value::List(items)) => items.is_empty(),
            (Test::Empty, Value::Map(map)) => map.is_empty(),
            (Test::Matches(re), Value::Str(s)) => re.is_match(s),
            _ => false,
        };
        hit != self.negated
    }
}

// ---------------------------------------------------------------------------------------------
// The parser: recursive descent with backtracking where go-bexpr's PEG has alternatives, and
// error reporting at the farthest position any alternative reached (as a PEG parser does),
// plus immediate ("fatal") errors where the input cannot be valid whatever follows.

enum Fail {
    /// This alternative does not apply; what was expected is in `Parser::expected`.
    Soft,
    /// A definite error at a character position.
    Fatal(usize, String),
}

type Parsed<T> = Result<T, Fail>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Expression,
    Value,
    Operator,
    InOperator,
    Space,
    SpaceAfter(&'static str),
    And,
    Or,
    CloseParen(usize),
    End,
}

const OPERATORS: &str =
    "==, !=, in, not in, contains, not contains, is empty, is not empty, matches, not matches";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equal,
    NotEqual,
    Contains,
    NotContains,
    In,
    NotIn,
    IsEmpty,
    IsNotEmpty,
    Matches,
    NotMatches,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Equal => "==",
            Op::NotEqual => "!=",
            Op::Contains => "contains",
            Op::NotContains => "not contains",
            Op::In => "in",
            Op::NotIn => "not in",
            Op::IsEmpty => "is empty",
            Op::IsNotEmpty => "is not empty",
            Op::Matches => "matches",
            Op::NotMatches => "not matches",
        }
    }
}

/// The operators that follow a selector, in go-bexpr's order, as words separated by
/// whitespace; `true` when whitespace must follow (a value comes next).
const SELECTOR_OPS: [(&[&str], Op, bool); 6] = [
    (&["contains"], Op::Contains, true),
    (&["not", "contains"], Op::NotContains, true),
    (&["matches"], Op::Matches, true),
    (&["not", "matches"], Op::NotMatches, true),
    (&["is", "empty"], Op::IsEmpty, false),
    (&["is", "not", "empty"], Op::IsNotEmpty, false),
];

const IN_OPS: [(&[&str], Op, bool); 2] =
    [(&["in"], Op::In, true), (&["not", "in"], Op::NotIn, true)];

/// A selector or value as written, with where it starts.
struct Token {
    start: usize,
    parts: Vec<String>,
    /// Parts joined as go-bexpr does when the token is used as a value.
    raw: String,
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    far: usize,
    expected: Vec<Expect>,
    depth: usize,
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '/'
}

fn is_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_alphabetic()) && s.chars().all(is_name_char)
}

/// Characters of a JSON pointer segment in go-bexpr (letters and digits in any script).
fn is_pointer_char(c: char) -> bool {
    c.is_alphabetic() || c.is_numeric() || matches!(c, '-' | '_' | '.' | '~' | ':' | '|')
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn text(&self, from: usize, to: usize) -> String {
        self.chars[from..to].iter().collect()
    }

    /// Skips whitespace; whether there was any.
    fn ws(&mut self) -> bool {
        let start = self.pos;
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
        self.pos > start
    }

    fn lit(&mut self, word: &str) -> bool {
        let mut at = self.pos;
        for c in word.chars() {
            if self.chars.get(at) != Some(&c) {
                return false;
            }
            at += 1;
        }
        self.pos = at;
        true
    }

    fn expect(&mut self, what: Expect) {
        if self.pos > self.far {
            self.far = self.pos;
            self.expected.clear();
        }
        if self.pos == self.far && !self.expected.contains(&what) {
            self.expected.push(what);
        }
    }

    /// The message for a parse that got no farther than `self.far`.
    fn expectation(&self) -> String {
        let has = |e: Expect| self.expected.contains(&e);
        let at_end = self.far >= self.chars.len();
        if !at_end
            && self.chars[self.far] == ')'
            && !self
                .expected
                .iter()
                .any(|e| matches!(e, Expect::CloseParen(_)))
        {
            return "\")\" without a matching \"(\"".to_owned();
        }
        let mut labels: Vec<String> = Vec::new();
        for e in &self.expected {
            let label = match *e {
                Expect::Expression => {
                    "an expression (a selector such as Service.Tags, \"not\" or \"(\")".to_owned()
                }
                Expect::Value if has(Expect::Expression) => continue,
                Expect::Value => {
                    "a value (a quoted string, a number or a name such as v1)".to_owned()
                }
                Expect::Operator => format!("an operator ({OPERATORS})"),
                Expect::InOperator if has(Expect::Operator) => continue,
                Expect::InOperator => "\"in\" or \"not in\"".to_owned(),
                Expect::Space if at_end => continue,
                Expect::Space => "a space".to_owned(),
                Expect::SpaceAfter(word) if at_end => {
                    format!("more of the filter after \"{word}\"")
                }
                Expect::SpaceAfter(word) => format!("a space after \"{word}\""),
                Expect::And => "\"and\"".to_owned(),
                Expect::Or => "\"or\"".to_owned(),
                Expect::CloseParen(col) => format!("\")\" to close the \"(\" at column {col}"),
                Expect::End => "the end of the filter".to_owned(),
            };
            labels.push(label);
        }
        let mut message = match labels.as_slice() {
            [] => "unexpected input".to_owned(),
            [one] => format!("expected {one}"),
            [init @ .., last] => format!("expected {} or {last}", init.join(", ")),
        };
        if self.chars.get(self.far) == Some(&'\'') {
            message.push_str(" (single quotes do not delimit strings: use \"...\" or `...`)");
        }
        message
    }

    fn enter(&mut self, at: usize) -> Parsed<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Fail::Fatal(
                at,
                format!("parentheses and \"not\" nest deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn filter(&mut self) -> Parsed<Expr> {
        self.ws();
        let expr = self.or()?;
        self.ws();
        if self.peek().is_some() {
            self.expect(Expect::End);
            return Err(Fail::Soft);
        }
        Ok(expr)
    }

    fn or(&mut self) -> Parsed<Expr> {
        let mut items = vec![self.and()?];
        while self.connective("or", Expect::Or) {
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::Or(items)
        })
    }

    fn and(&mut self) -> Parsed<Expr> {
        let mut items = vec![self.not()?];
        while self.connective("and", Expect::And) {
            items.push(self.not()?);
        }
        Ok(if items.len() == 1 {
            items.swap_remove(0)
        } else {
            Expr::And(items)
        })
    }

    /// `WS word WS`; consumes nothing when it does not match.
    fn connective(&mut self, word: &'static str, what: Expect) -> bool {
        let save = self.pos;
        let found = if !self.ws() {
            self.expect(Expect::Space);
            false
        } else if !self.lit(word) {
            self.expect(what);
            false
        } else if !self.ws() {
            self.expect(Expect::SpaceAfter(word));
            false
        } else {
            true
        };
        if !found {
            self.pos = save;
        }
        found
    }

    fn not(&mut self) -> Parsed<Expr> {
        let save = self.pos;
        if self.lit("not") {
            if self.ws() {
                self.enter(save)?;
                let inner = self.not();
                self.depth -= 1;
                match inner {
                    // `not not X` is X.
                    Ok(Expr::Not(x)) => return Ok(*x),
                    Ok(x) => return Ok(Expr::Not(Box::new(x))),
                    Err(Fail::Soft) => {}
                    Err(fatal) => return Err(fatal),
                }
            } else {
                self.expect(Expect::SpaceAfter("not"));
            }
            // `not in Service.Tags` is the value "not" in the tags, as in go-bexpr.
            self.pos = save;
        }
        self.group()
    }

    fn group(&mut self) -> Parsed<Expr> {
        let open = self.pos;
        if self.peek() != Some('(') {
            return self.matcher();
        }
        self.pos += 1;
        self.enter(open)?;
        self.ws();
        let inner = self.or();
        self.depth -= 1;
        let inner = inner?;
        self.ws();
        if self.peek() == Some(')') {
            self.pos += 1;
            return Ok(inner);
        }
        self.expect(Expect::CloseParen(open + 1));
        Err(Fail::Soft)
    }

    fn matcher(&mut self) -> Parsed<Expr> {
        let start = self.pos;
        // selector op value | selector op
        match self.selector() {
            Ok(sel) => {
                if let Some((op, op_pos)) = self.selector_op() {
                    let value = match op {
                        Op::IsEmpty | Op::IsNotEmpty => None,
                        _ => Some(self.value()?),
                    };
                    return self.build(sel, op, op_pos, value);
                }
            }
            Err(Fail::Soft) => {}
            Err(fatal) => return Err(fatal),
        }
        self.pos = start;
        // value in selector
        let value = match self.value() {
            Ok(value) => value,
            Err(Fail::Soft) => {
                self.pos = start;
                self.expect(Expect::Expression);
                return Err(Fail::Soft);
            }
            Err(fatal) => return Err(fatal),
        };
        let Some((op, op_pos)) = self.ops(&IN_OPS, Expect::InOperator) else {
            let word = self.text(start, (start + 4).min(self.chars.len()));
            if (word == "any " || word == "all ") && value.raw.len() == 3 {
                return Err(Fail::Fatal(
                    start,
                    format!(
                        "collection expressions (\"{}\") are not supported",
                        &word[..3]
                    ),
                ));
            }
            return Err(Fail::Soft);
        };
        let sel_start = self.pos;
        let sel = match self.selector() {
            Ok(sel) => sel,
            Err(Fail::Soft) => {
                return Err(Fail::Fatal(
                    sel_start,
                    format!(
                        "expected a selector after \"{}\", such as Service.Tags (selectors are not quoted)",
                        op.text()
                    ),
                ));
            }
            Err(fatal) => return Err(fatal),
        };
        self.build(sel, op, op_pos, Some(value))
    }

    /// The operators after a selector; consumes them and the whitespace after them.
    fn selector_op(&mut self) -> Option<(Op, usize)> {
        let save = self.pos;
        self.ws();
        let op_pos = self.pos;
        for (text, op) in [("==", Op::Equal), ("!=", Op::NotEqual)] {
            if self.lit(text) {
                self.ws();
                return Some((op, op_pos));
            }
        }
        self.expect(Expect::Operator);
        self.pos = save;
        self.ops(&SELECTOR_OPS, Expect::Operator)
    }

    /// `WS word (WS word)* WS?` for the first matching entry of `table`.
    fn ops(&mut self, table: &[(&[&'static str], Op, bool)], what: Expect) -> Option<(Op, usize)> {
        let save = self.pos;
        if !self.ws() {
            self.expect(what);
            return None;
        }
        let op_pos = self.pos;
        'entries: for &(words, op, trailing_ws) in table {
            self.pos = op_pos;
            for (i, word) in words.iter().enumerate() {
                if !self.lit(word) {
                    self.expect(what);
                    continue 'entries;
                }
                if (i + 1 < words.len() || trailing_ws) && !self.ws() {
                    self.expect(Expect::SpaceAfter(word));
                    continue 'entries;
                }
            }
            return Some((op, op_pos));
        }
        self.pos = save;
        None
    }

    /// A selector: dotted names with `["key"]` indexes, or a quoted JSON pointer.
    fn selector(&mut self) -> Parsed<Token> {
        let start = self.pos;
        match self.peek() {
            Some('"') => self.pointer().ok_or(Fail::Soft),
            Some(c) if c.is_ascii_alphabetic() => self.dotted(),
            _ => Err(Fail::Soft),
        }
        .inspect_err(|_| self.pos = start)
    }

    fn name(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.pos += 1;
        }
        self.text(start, self.pos)
    }

    fn dotted(&mut self) -> Parsed<Token> {
        let start = self.pos;
        let mut parts = vec![self.name()];
        loop {
            match (self.peek(), self.peek_at(1)) {
                (Some('.'), Some(c)) if c.is_ascii_alphabetic() => {
                    self.pos += 1;
                    parts.push(self.name());
                }
                (Some('.'), Some(c)) if c.is_ascii_digit() => {
                    self.pos += 1;
                    let from = self.pos;
                    while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                        self.pos += 1;
                    }
                    parts.push(self.text(from, self.pos));
                }
                (Some('['), _) => parts.push(self.index()?),
                _ => break,
            }
        }
        match self.peek() {
            None => {}
            Some(c) if is_ws(c) || matches!(c, '(' | ')' | '=' | '!') => {}
            Some('.') => {
                return Err(Fail::Fatal(
                    self.pos,
                    "\".\" must be followed by a name or digits".to_owned(),
                ));
            }
            Some(c) => return Err(Fail::Fatal(self.pos, self.bad_bareword(start, c))),
        }
        let raw = parts.join(".");
        Ok(Token { start, parts, raw })
    }

    /// The message for a selector or unquoted value that runs into character `bad`.
    fn bad_bareword(&self, start: usize, bad: char) -> String {
        let mut end = self.pos;
        while self
            .chars
            .get(end)
            .is_some_and(|&c| !is_ws(c) && !matches!(c, ')' | '=' | '!'))
        {
            end += 1;
        }
        let token = self.text(start, end);
        if token.starts_with("Service.") || token.starts_with("Node.") {
            let before: String = self.text(start, self.pos);
            let (map, key) = match before.rsplit_once('.') {
                Some((map, key_start)) => (
                    map.to_owned(),
                    format!("{key_start}{}", self.text(self.pos, end)),
                ),
                None => (before, String::new()),
            };
            format!(
                "\"{bad}\" cannot appear in a selector name; write a map key that contains it in brackets, e.g. {map}[\"{key}\"]"
            )
        } else {
            format!(
                "\"{bad}\" cannot appear in an unquoted value (only letters, digits, \"_\", \"/\" and \".\" can); quote it: \"{token}\""
            )
        }
    }

    /// `[ "key" ]` after a selector part.
    fn index(&mut self) -> Parsed<String> {
        let open = self.pos;
        self.pos += 1;
        self.ws();
        if !matches!(self.peek(), Some('"' | '`')) {
            return Err(Fail::Fatal(
                self.pos,
                "expected a quoted key after \"[\", e.g. Service.Meta[\"app.kubernetes.io/name\"]"
                    .to_owned(),
            ));
        }
        let key = self.string()?;
        self.ws();
        if self.peek() != Some(']') {
            return Err(Fail::Fatal(
                self.pos,
                format!("expected \"]\" to close the \"[\" at column {}", open + 1),
            ));
        }
        self.pos += 1;
        Ok(key)
    }

    /// `"/a/b"`: a JSON pointer, whose parts are unescaped (`~1` is `/`, `~0` is `~`).
    /// Consumes nothing and returns `None` when the quoted text is not one.
    fn pointer(&mut self) -> Option<Token> {
        let start = self.pos;
        self.pos += 1;
        let mut parts = Vec::new();
        while self.peek() == Some('/') {
            self.pos += 1;
            let from = self.pos;
            while self.peek().is_some_and(is_pointer_char) {
                self.pos += 1;
            }
            if self.pos == from {
                self.pos = start;
                return None;
            }
            parts.push(
                self.text(from, self.pos)
                    .replace("~1", "/")
                    .replace("~0", "~"),
            );
        }
        if self.peek() != Some('"') {
            self.pos = start;
            return None;
        }
        self.pos += 1;
        if parts.is_empty() {
            // go-bexpr parses `""` as the pointer "/", which has one empty part.
            parts.push(String::new());
        }
        let raw = parts.join("/");
        Some(Token { start, parts, raw })
    }

    fn value(&mut self) -> Parsed<Token> {
        let start = self.pos;
        let raw = match self.peek() {
            Some(c) if c.is_ascii_alphabetic() => return self.dotted(),
            Some('"') => match self.pointer() {
                Some(token) => return Ok(token),
                None => self.string()?,
            },
            Some('`') => self.string()?,
            Some(c) if c == '-' || c.is_ascii_digit() => self.number()?,
            _ => {
                self.expect(Expect::Value);
                return Err(Fail::Soft);
            }
        };
        Ok(Token {
            start,
            parts: Vec::new(),
            raw,
        })
    }

    fn number(&mut self) -> Parsed<String> {
        let start = self.pos;
        if self.peek() == Some('-') {
            self.pos += 1;
        }
        match self.peek() {
            Some('0') => self.pos += 1,
            Some('1'..='9') => {
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.pos += 1;
                }
            }
            _ => {
                self.pos = start;
                self.expect(Expect::Value);
                return Err(Fail::Soft);
            }
        }
        if self.peek() == Some('.') && self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        match self.peek() {
            None => {}
            Some(c) if is_ws(c) || c == ')' => {}
            Some(_) => {
                let mut end = self.pos;
                while self.chars.get(end).is_some_and(|&c| !is_ws(c) && c != ')') {
                    end += 1;
                }
                let token = self.text(start, end);
                return Err(Fail::Fatal(
                    start,
                    format!(
                        "invalid number {token:?}: quote values that are not plain numbers, e.g. \"{token}\""
                    ),
                ));
            }
        }
        Ok(self.text(start, self.pos))
    }

    /// A double-quoted string with Go escapes (it ends at the first `"`: there is no `\"`)
    /// or a backtick-quoted raw string (whose carriage returns are dropped, as Go does).
    fn string(&mut self) -> Parsed<String> {
        let open = self.pos;
        let quote = self.chars[open];
        self.pos += 1;
        let from = self.pos;
        while self.peek().is_some_and(|c| c != quote) {
            self.pos += 1;
        }
        if self.peek().is_none() {
            return Err(Fail::Fatal(
                open,
                format!("unterminated string: no closing {quote}"),
            ));
        }
        let body = &self.chars[from..self.pos];
        self.pos += 1;
        if quote == '`' {
            return Ok(body.iter().filter(|&&c| c != '\r').collect());
        }
        unescape(body).map_err(|(at, message)| Fail::Fatal(from + at, message))
    }

    fn build(&self, sel: Token, op: Op, op_pos: usize, value: Option<Token>) -> Parsed<Expr> {
        let written = self.text(sel.start, self.selector_end(&sel));
        let Some(path) = Path::resolve(&sel.parts) else {
            return Err(Fail::Fatal(
                sel.start,
                unknown_selector(&written, &sel.parts, value.as_ref(), op),
            ));
        };
        let kind = path.kind();
        let raw = value.as_ref().map(|v| v.raw.clone()).unwrap_or_default();
        let value_pos = value.as_ref().map_or(op_pos, |v| v.start);
        let wrong = |ops: &str| {
            Fail::Fatal(
                op_pos,
                format!(
                    "{written} is {}, so \"{}\" does not apply to it; {ops}",
                    kind.describe(),
                    op.text()
                ),
            )
        };
        let (test, negated) = match op {
            Op::Equal | Op::NotEqual => {
                let test = match kind {
                    Kind::Str => Test::Equal(raw),
                    Kind::Int => match parse_go_int(&raw) {
                        Some(n) => Test::EqualInt(n),
                        None => {
                            return Err(Fail::Fatal(
                                value_pos,
                                format!(
                                    "{written} is a number, so it can only be compared with a whole number, not {raw:?}"
                                ),
                            ));
                        }
                    },
                    Kind::List | Kind::Map => {
                        return Err(wrong("use contains, in or is empty"));
                    }
                };
                (test, op == Op::NotEqual)
            }
            Op::Contains | Op::NotContains | Op::In | Op::NotIn => {
                if kind == Kind::Int {
                    return Err(wrong("use == or !="));
                }
                (
                    Test::Contains(raw),
                    matches!(op, Op::NotContains | Op::NotIn),
                )
            }
            Op::IsEmpty | Op::IsNotEmpty => {
                if kind == Kind::Int {
                    return Err(wrong("use == or !="));
                }
                (Test::Empty, op == Op::IsNotEmpty)
            }
            Op::Matches | Op::NotMatches => {
                if kind != Kind::Str {
                    return Err(wrong(if kind == Kind::Int {
                        "use == or !="
                    } else {
                        "use contains, in or is empty"
                    }));
                }
                // Go's RE2 syntax and the regex crate's share their common forms; one
                // difference: `\d`, `\w`, `\s` and `\b` are Unicode-aware here and ASCII-only
                // in Go, which only matters for non-ASCII values. Matching is unanchored in both.
                match Regex::new(&raw) {
                    Ok(re) => (Test::Matches(re), op == Op::NotMatches),
                    Err(err) => {
                        return Err(Fail::Fatal(
                            value_pos,
                            format!("invalid regular expression {raw:?}: {}", regex_reason(&err)),
                        ));
                    }
                }
            }
        };
        Ok(Expr::Match(Box::new(Match {
            path,
            test,
            negated,
        })))
    }

    /// Where a selector token ends in the source: after its last non-space character.
    fn selector_end(&self, sel: &Token) -> usize {
        let mut end = sel.start;
        let mut quote: Option<char> = None;
        while let Some(&c) = self.chars.get(end) {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == '"' || c == '`' => {
                    // A JSON pointer closes at its second quote.
                    if end > sel.start && c == '"' && self.chars[sel.start] == '"' {
                        return end + 1;
                    }
                    quote = Some(c);
                }
                None if is_ws(c) || matches!(c, ')' | '(' | '=' | '!') => break,
                None => {}
            }
            end += 1;
        }
        end
    }
}

fn unknown_selector(written: &str, parts: &[String], value: Option<&Token>, op: Op) -> String {
    let mut known = Vec::new();
    for f in FIELDS {
        known.push(f.name().to_owned());
        if f.kind() == Kind::Map {
            known.push(format!("{}.<key>", f.name()));
        }
    }
    let mut message = format!("unknown selector {written:?} (known: {})", known.join(", "));
    if let [root, name, rest @ ..] = parts {
        let near = FIELDS.into_iter().find(|f| {
            f.name()
                .split_once('.')
                .is_some_and(|(r, n)| r.eq_ignore_ascii_case(root) && n.eq_ignore_ascii_case(name))
        });
        if let Some(f) = near {
            let mut suggestion = f.name().to_owned();
            for part in rest {
                suggestion.push('.');
                suggestion.push_str(part);
            }
            message.push_str(&format!(
                "; selectors are case-sensitive: did you mean {suggestion:?}?"
            ));
            return message;
        }
    }
    if let Some(v) = value
        && matches!(op, Op::Equal | Op::NotEqual)
        && Path::resolve(&v.parts).is_some()
    {
        message.push_str(&format!(
            "; the selector goes on the left: {} {} {written}",
            v.raw,
            op.text()
        ));
    }
    message
}

/// The one-line reason of a regex error (its display spans several lines).
fn regex_reason(err: &regex::Error) -> String {
    let text = err.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map_or_else(
            || text.lines().last().unwrap_or_default().trim().to_owned(),
            str::to_owned,
        )
}

/// Go's escapes in a double-quoted string; errors carry a character offset into `body`.
fn unescape(body: &[char]) -> Result<String, (usize, String)> {
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut i = 0;
    let digits = |from: usize, n: usize, radix: u32| -> Option<u32> {
        let s: String = body.get(from..from + n)?.iter().collect();
        if s.chars().all(|c| c.is_digit(radix)) {
            u32::from_str_radix(&s, radix).ok()
        } else {
            None
        }
    };
    while i < body.len() {
        let c = body[i];
        if c == '\n' {
            return Err((
                i,
                "a double-quoted string cannot span lines; use a backtick string".to_owned(),
            ));
        }
        if c != '\\' {
            let mut buf = [0; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            i += 1;
            continue;
        }
        let Some(&e) = body.get(i + 1) else {
            return Err((
                i,
                "a double-quoted string cannot contain an escaped quote (\\\"); write the value in backticks instead".to_owned(),
            ));
        };
        let bad = |what: &str| {
            (
                i,
                format!("invalid escape \"\\{e}\" in a double-quoted string: {what}"),
            )
        };
        let simple = match e {
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'v' => Some(0x0b),
            '\\' => Some(b'\\'),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            i += 2;
            continue;
        }
        match e {
            'x' => {
                let b = digits(i + 2, 2, 16).ok_or_else(|| bad("expected two hex digits"))?;
                out.push(b as u8);
                i += 4;
            }
            '0'..='7' => {
                let b = digits(i + 1, 3, 8)
                    .filter(|&b| b <= 0xff)
                    .ok_or_else(|| bad("expected three octal digits up to 377"))?;
                out.push(b as u8);
                i += 4;
            }
            'u' | 'U' => {
                let n = if e == 'u' { 4 } else { 8 };
                let ch = digits(i + 2, n, 16)
                    .and_then(char::from_u32)
                    .ok_or_else(|| bad("expected the hex digits of a Unicode code point"))?;
                let mut buf = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i += 2 + n;
            }
            _ => {
                return Err(bad(
                    "write regular expressions and other text with backslashes in backticks, e.g. `v\\d+`",
                ));
            }
        }
    }
    // Go allows `\xff`-style escapes that leave invalid UTF-8; such a string can never equal
    // a value decoded from Consul's JSON, so it is refused rather than silently never matching.
    String::from_utf8(out).map_err(|_| {
        (
            0,
            "the escapes in this string do not form valid UTF-8".to_owned(),
        )
    })
}

/// An integer as Go's `strconv.ParseInt(s, 0, 64)` reads it (what go-bexpr uses for int
/// fields): an optional sign, `0x`/`0o`/`0b` or a leading `0` for octal, `_` between digits.
fn parse_go_int(s: &str) -> Option<i64> {
    let (negative, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let prefix = |p: &str| {
        body.get(..2)
            .filter(|b| b.eq_ignore_ascii_case(p))
            .map(|_| &body[2..])
    };
    let (radix, digits, prefixed) = if let Some(d) = prefix("0x") {
        (16, d, true)
    } else if let Some(d) = prefix("0o") {
        (8, d, true)
    } else if let Some(d) = prefix("0b") {
        (2, d, true)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..], true)
    } else {
        (10, body, false)
    };
    // `_` must follow a digit or the base prefix and be followed by a digit.
    let mut after_digit = prefixed;
    for c in digits.chars() {
        if c == '_' {
            if !after_digit {
                return None;
            }
            after_digit = false;
        } else if c.is_ascii_alphanumeric() {
            after_digit = true;
        } else {
            return None;
        }
    }
    if !after_digit {
        return None;
    }
    let cleaned: String = digits.chars().filter(|&c| c != '_').collect();
    let magnitude = u64::from_str_radix(&cleaned, radix).ok()?;
    let value = if negative {
        -i128::from(magnitude)
    } else {
        i128::from(magnitude)
    };
    i64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `/v1/health/service` entry, reduced to what filters read.
    #[derive(Default)]
    struct Instance {
        id: String,
        name: String,
        kind: String,
        address: String,
        port: u16,
        tags: Vec<String>,
        meta: BTreeMap<String, String>,
        node: String,
        node_id: String,
        node_address: String,
        datacenter: String,
        node_meta: BTreeMap<String, String>,
        tagged_addresses: BTreeMap<String, String>,
    }

    impl Selectable for Instance {
        fn select(&self, selector: Selector<'_>) -> Value<'_> {
            match selector {
                Selector::ServiceId => Value::Str(&self.id),
                Selector::ServiceName => Value::Str(&self.name),
                Selector::ServiceKind => Value::Str(&self.kind),
                Selector::ServiceAddress => Value::Str(&self.address),
                Selector::ServicePort => Value::Int(i64::from(self.port)),
                Selector::ServiceTags => Value::List(&self.tags),
                Selector::ServiceMeta => Value::Map(&self.meta),
                Selector::ServiceMetaKey(k) => Value::entry(&self.meta, k),
                Selector::NodeId => Value::Str(&self.node_id),
                Selector::NodeName => Value::Str(&self.node),
                Selector::NodeAddress => Value::Str(&self.node_address),
                Selector::NodeDatacenter => Value::Str(&self.datacenter),
                Selector::NodeMeta => Value::Map(&self.node_meta),
                Selector::NodeMetaKey(k) => Value::entry(&self.node_meta, k),
                Selector::NodeTaggedAddresses => Value::Map(&self.tagged_addresses),
                Selector::NodeTaggedAddressesKey(k) => Value::entry(&self.tagged_addresses, k),
            }
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn a() -> Instance {
        Instance {
            id: "web-1".into(),
            name: "web".into(),
            kind: String::new(),
            address: "10.0.0.1".into(),
            port: 8080,
            tags: vec!["canary".into(), "v1".into(), "a/b".into()],
            meta: map(&[
                ("version", "v1"),
                ("external-source", "kubernetes"),
                ("app.kubernetes.io/name", "web"),
                ("path", "api/v1"),
                ("blank", ""),
                ("release", "v1.2"),
            ]),
            node: "node-a".into(),
            node_id: "6f1c7a3e".into(),
            node_address: "192.168.0.1".into(),
            datacenter: "dc1".into(),
            node_meta: map(&[("zone", "a")]),
            tagged_addresses: map(&[("lan", "192.168.0.1"), ("wan", "203.0.113.1")]),
        }
    }

    fn b() -> Instance {
        Instance {
            id: "web-2".into(),
            name: "web".into(),
            kind: "connect-proxy".into(),
            address: String::new(),
            port: 9090,
            tags: vec![],
            meta: map(&[("version", "v2"), ("path", "/api/v1")]),
            node: "node-b".into(),
            node_id: "9b2d4f10".into(),
            node_address: "192.168.0.2".into(),
            datacenter: "dc2".into(),
            node_meta: map(&[("zone", "b")]),
            tagged_addresses: BTreeMap::new(),
        }
    }

    #[test]
    fn evaluates_against_instances() {
        // (filter, matches a, matches b)
        let table: &[(&str, bool, bool)] = &[
            // == and != on strings, every field
            ("Service.ID == \"web-1\"", true, false),
            ("Service.Service == web", true, true),
            ("Service.Kind == \"connect-proxy\"", false, true),
            ("Service.Kind == \"\"", true, false),
            ("Service.Address == \"10.0.0.1\"", true, false),
            ("Node.ID == `6f1c7a3e`", true, false),
            ("Node.Node != \"node-a\"", false, true),
            ("Node.Address == \"192.168.0.2\"", false, true),
            ("Node.Datacenter == dc1", true, false),
            ("Node.TaggedAddresses.wan == \"203.0.113.1\"", true, false),
            ("Service.Meta.version == v1", true, false),
            ("Service.Meta.version != v1", false, true),
            ("Service.Meta.version==v2", false, true),
            // int field
            ("Service.Port == 8080", true, false),
            ("Service.Port != 8080", false, true),
            ("Service.Port == \"9090\"", false, true),
            ("Service.Port == \"0x1F90\"", true, false),
            ("Service.Port == -1", false, false),
            // in / contains: list element, map key, substring
            ("Service.Tags contains canary", true, false),
            ("canary in Service.Tags", true, false),
            ("\"canary\" not in Service.Tags", false, true),
            ("Service.Tags not contains \"canary\"", false, true),
            ("Service.Tags contains can", false, false),
            ("Service.Tags contains a/b", true, false),
            ("Service.Meta contains version", true, true),
            ("\"external-source\" in Service.Meta", true, false),
            ("Node.TaggedAddresses contains wan", true, false),
            ("Node.Meta not contains zone", false, false),
            ("Service.Kind contains proxy", false, true),
            ("\"192.168\" in Node.Address", true, true),
            ("Service.Meta.version contains 2", false, true),
            // is empty / is not empty
            ("Service.Tags is empty", false, true),
            ("Service.Tags is not empty", true, false),
            ("Service.Kind is empty", true, false),
            ("Node.TaggedAddresses is empty", false, true),
            ("Service.Meta.blank is empty", true, true),
            ("Service.Meta.blank is not empty", false, false),
            // matches / not matches
            ("Service.Meta.version matches `^v[0-9]+$`", true, true),
            ("Service.Meta.version matches \"^v1\"", true, false),
            ("Service.ID matches web", true, true),
            ("Service.ID not matches \"-2$\"", true, false),
            ("Node.Node matches `(?i)NODE-A`", true, false),
            // missing map keys: nothing equals, contains or matches them; they are empty
            ("Service.Meta.missing == v1", false, false),
            ("Service.Meta.missing != v1", true, true),
            ("Service.Meta.missing is empty", true, true),
            ("Service.Meta.missing is not empty", false, false),
            ("x in Service.Meta.missing", false, false),
            ("x not in Service.Meta.missing", true, true),
            ("Service.Meta.missing matches `.*`", false, false),
            ("Service.Meta.missing not matches `.*`", true, true),
            ("Service.Meta.blank == \"\"", true, false),
            ("Node.TaggedAddresses.lan == \"192.168.0.1\"", true, false),
            // precedence: not > and > or
            (
                "Service.ID == \"web-1\" or Service.Port == 9090 and Node.Meta.zone == b",
                true,
                true,
            ),
            (
                "(Service.ID == \"web-1\" or Service.Port == 9090) and Node.Meta.zone == b",
                false,
                true,
            ),
            (
                "(Service.ID == \"web-1\" or Service.Port == 9090) and Node.Meta.zone == a",
                true,
                false,
            ),
            (
                "not Service.Tags is empty and Node.Meta.zone == a",
                true,
                false,
            ),
            (
                "not Service.Tags is empty or Node.Meta.zone == b",
                true,
                true,
            ),
            (
                "not (Service.Tags is empty or Node.Meta.zone == b)",
                true,
                false,
            ),
            ("not not Service.Port == 8080", true, false),
            (
                "Service.Tags contains \"canary\" and not (Node.Meta.zone == \"b\")",
                true,
                false,
            ),
            (" ( ( Service.Port == 9090 ) ) ", false, true),
            (
                "\tService.Meta.version\n==\r\nv1\nand\tService.Port\n!=\n1",
                true,
                false,
            ),
            // a value spelled "not" needs no quotes, as in go-bexpr
            ("not in Service.Tags", false, false),
            // selector and quoting forms
            (
                "Service.Meta[\"external-source\"] == kubernetes",
                true,
                false,
            ),
            (
                "Service.Meta[ `app.kubernetes.io/name` ] == web",
                true,
                false,
            ),
            ("Service[\"Meta\"][\"version\"] == v2", false, true),
            ("\"/Service/Meta/version\" == v1", true, false),
            (
                "\"/Service/Meta/app.kubernetes.io~1name\" == web",
                true,
                false,
            ),
            ("v1 in \"/Service/Tags\"", true, false),
            ("Service.Meta.release == v1.2", true, false),
            ("Service.Meta.release == \"v1.2\"", true, false),
            ("Service.Meta.version == \"\\x76\\u0031\"", true, false),
            // a quoted value shaped like a JSON pointer loses its leading slash (go-bexpr)
            ("Service.Meta.path == \"/api/v1\"", true, false),
            ("Service.Meta.path == `/api/v1`", false, true),
        ];
        let (a, b) = (a(), b());
        for &(text, want_a, want_b) in table {
            let filter = Filter::parse(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(filter.matches(&a), want_a, "{text} on instance a");
            assert_eq!(filter.matches(&b), want_b, "{text} on instance b");
        }
    }

    #[test]
    fn rejects_bad_filters_with_a_column() {
        let table: &[(&str, &str)] = &[
            (
                "Service.Meta.version = v1",
                "at column 22: expected an operator (==, !=, in, not in, contains, not contains, is empty, is not empty, matches, not matches)",
            ),
            (
                "Service.Foo == x",
                "at column 1: unknown selector \"Service.Foo\" (known: Service.ID, Service.Service, Service.Kind, Service.Address, Service.Port, Service.Tags, Service.Meta, Service.Meta.<key>, Node.ID, Node.Node, Node.Address, Node.Datacenter, Node.Meta, Node.Meta.<key>, Node.TaggedAddresses, Node.TaggedAddresses.<key>)",
            ),
            (
                "",
                "at column 1: expected an expression (a selector such as Service.Tags, \"not\" or \"(\")",
            ),
            (
                "Service.Meta.version ==",
                "at column 24: expected a value (a quoted string, a number or a name such as v1)",
            ),
            (
                "Service.Meta.version == 'v1'",
                "at column 25: expected a value (a quoted string, a number or a name such as v1) (single quotes do not delimit strings: use \"...\" or `...`)",
            ),
            (
                "Service.Meta.env == prod-east",
                "at column 25: \"-\" cannot appear in an unquoted value (only letters, digits, \"_\", \"/\" and \".\" can); quote it: \"prod-east\"",
            ),
            (
                "Service.Meta.external-source == k8s",
                "at column 22: \"-\" cannot appear in a selector name; write a map key that contains it in brackets, e.g. Service.Meta[\"external-source\"]",
            ),
            (
                "Service.Address == 10.0.0.1",
                "at column 20: invalid number \"10.0.0.1\": quote values that are not plain numbers, e.g. \"10.0.0.1\"",
            ),
            (
                "Service.Port == 80.5",
                "at column 17: Service.Port is a number, so it can only be compared with a whole number, not \"80.5\"",
            ),
            (
                "Service.Port == http",
                "at column 17: Service.Port is a number, so it can only be compared with a whole number, not \"http\"",
            ),
            (
                "Service.Tags == canary",
                "at column 14: Service.Tags is a list, so \"==\" does not apply to it; use contains, in or is empty",
            ),
            (
                "Service.Meta != x",
                "at column 14: Service.Meta is a map, so \"!=\" does not apply to it; use contains, in or is empty",
            ),
            (
                "Service.Port contains 80",
                "at column 14: Service.Port is a number, so \"contains\" does not apply to it; use == or !=",
            ),
            (
                "Service.Port is empty",
                "at column 14: Service.Port is a number, so \"is empty\" does not apply to it; use == or !=",
            ),
            (
                "Service.Tags matches x",
                "at column 14: Service.Tags is a list, so \"matches\" does not apply to it; use contains, in or is empty",
            ),
            (
                "Service.ID matches \"(a\"",
                "at column 20: invalid regular expression \"(a\": unclosed group",
            ),
            (
                "Service.ID matches \"v\\d+\"",
                "at column 22: invalid escape \"\\d\" in a double-quoted string: write regular expressions and other text with backslashes in backticks, e.g. `v\\d+`",
            ),
            (
                "Service.ID == \"web",
                "at column 15: unterminated string: no closing \"",
            ),
            (
                "(Service.ID == web",
                "at column 19: expected \")\" to close the \"(\" at column 1",
            ),
            (
                "Service.ID == web)",
                "at column 18: \")\" without a matching \"(\"",
            ),
            (
                "external-source in Service.Meta",
                "at column 9: \"-\" cannot appear in an unquoted value (only letters, digits, \"_\", \"/\" and \".\" can); quote it: \"external-source\"",
            ),
            (
                "Service.ID == web Node.Node == n",
                "at column 19: expected \"and\", \"or\" or the end of the filter",
            ),
            (
                "Service.ID == web and",
                "at column 22: expected more of the filter after \"and\"",
            ),
            (
                "Service.ID == web and ",
                "at column 23: expected an expression (a selector such as Service.Tags, \"not\" or \"(\")",
            ),
            (
                "not(Service.ID == web)",
                "at column 4: expected a space after \"not\" or an operator (==, !=, in, not in, contains, not contains, is empty, is not empty, matches, not matches)",
            ),
            (
                "Service.Tags is emtpy",
                "at column 17: expected an operator (==, !=, in, not in, contains, not contains, is empty, is not empty, matches, not matches)",
            ),
            (
                "x in \"Service.Tags\"",
                "at column 6: expected a selector after \"in\", such as Service.Tags (selectors are not quoted)",
            ),
            ("32 == 32", "at column 4: expected \"in\" or \"not in\""),
            (
                "Service.Meta[version] == v1",
                "at column 14: expected a quoted key after \"[\", e.g. Service.Meta[\"app.kubernetes.io/name\"]",
            ),
            (
                "Service.Meta[\"version\" == v1",
                "at column 24: expected \"]\" to close the \"[\" at column 13",
            ),
            (
                "Service.Id == web",
                "at column 1: unknown selector \"Service.Id\" (known: Service.ID, Service.Service, Service.Kind, Service.Address, Service.Port, Service.Tags, Service.Meta, Service.Meta.<key>, Node.ID, Node.Node, Node.Address, Node.Datacenter, Node.Meta, Node.Meta.<key>, Node.TaggedAddresses, Node.TaggedAddresses.<key>); selectors are case-sensitive: did you mean \"Service.ID\"?",
            ),
            (
                "Service.Meta.a.b == x",
                "at column 1: unknown selector \"Service.Meta.a.b\"",
            ),
            (
                "v1 == Service.Meta.version",
                "; the selector goes on the left: Service.Meta.version == v1",
            ),
            (
                "all Service.Tags as t { t == x }",
                "at column 1: collection expressions (\"all\") are not supported",
            ),
            (
                "Service.ID == \"a\\\" b\"",
                "at column 17: a double-quoted string cannot contain an escaped quote (\\\"); write the value in backticks instead",
            ),
        ];
        for &(text, want) in table {
            let err = Filter::parse(text).expect_err(text);
            let shown = err.to_string();
            let prefix = format!("filter {text:?}: ");
            assert!(shown.starts_with(&prefix), "{shown}");
            assert!(shown.contains(want), "{text}\n got: {shown}\nwant: {want}");
        }
    }

    #[test]
    fn error_names_filter_column_and_expectation() {
        let err = Filter::parse("Service.Meta.version = v1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "filter \"Service.Meta.version = v1\": at column 22: expected an operator (==, !=, in, not in, contains, not contains, is empty, is not empty, matches, not matches)"
        );
        assert_eq!(err.column(), 22);
        assert_eq!(err.filter(), "Service.Meta.version = v1");
        // Columns count characters, not bytes.
        let err = Filter::parse("Service.Meta.zoné == a").unwrap_err();
        assert_eq!(err.column(), 17, "{err}");
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}Service.Port == 1{}", "(".repeat(100), ")".repeat(100));
        let err = Filter::parse(&deep).unwrap_err();
        assert!(err.message().contains("nest deeper than 64"), "{err}");
        let ok = format!("{}Service.Port == 1{}", "(".repeat(60), ")".repeat(60));
        assert!(Filter::parse(&ok).unwrap().matches(&Instance {
            port: 1,
            ..Instance::default()
        }));
        // Long chains of and/or are flat and do not nest.
        let long = vec!["Service.Port != 2"; 5000].join(" and ");
        assert!(Filter::parse(&long).unwrap().matches(&a()));
    }

    #[test]
    fn filter_compares_and_prints_as_its_text() {
        let f = Filter::parse("Service.Port == 8080").unwrap();
        let g: Filter = "Service.Port == 8080".parse().unwrap();
        assert_eq!(f, g);
        assert_ne!(f, Filter::parse("Service.Port == 8081").unwrap());
        assert_eq!(f.as_str(), "Service.Port == 8080");
        assert_eq!(f.to_string(), "Service.Port == 8080");
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Filter>();
        send_sync::<FilterError>();
    }

    #[test]
    fn selectors_display_as_written() {
        assert_eq!(Selector::ServiceName.to_string(), "Service.Service");
        assert_eq!(Selector::NodeMetaKey("zone").to_string(), "Node.Meta.zone");
        assert_eq!(
            Selector::ServiceMetaKey("app.kubernetes.io/name").to_string(),
            "Service.Meta[\"app.kubernetes.io/name\"]"
        );
        assert_eq!(
            Selector::NodeTaggedAddressesKey("a\"b").to_string(),
            "Node.TaggedAddresses[`a\"b`]"
        );
    }

    #[test]
    fn go_integer_syntax() {
        assert_eq!(parse_go_int("8080"), Some(8080));
        assert_eq!(parse_go_int("-12"), Some(-12));
        assert_eq!(parse_go_int("+7"), Some(7));
        assert_eq!(parse_go_int("0x1f90"), Some(8080));
        assert_eq!(parse_go_int("0o17"), Some(15));
        assert_eq!(parse_go_int("017"), Some(15));
        assert_eq!(parse_go_int("0b101"), Some(5));
        assert_eq!(parse_go_int("8_080"), Some(8080));
        assert_eq!(parse_go_int("0x_1f"), Some(31));
        assert_eq!(parse_go_int("-9223372036854775808"), Some(i64::MIN));
        for bad in [
            "",
            "-",
            "08",
            "8__0",
            "_8",
            "8_",
            "0x",
            "80.5",
            "1e3",
            "0x+5",
            "9223372036854775808",
        ] {
            assert_eq!(parse_go_int(bad), None, "{bad}");
        }
    }
}

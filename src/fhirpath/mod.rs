//! FHIRPath (N1 subset) for FHIR R4 JSON: the public API. An [`Expression`] is parsed once
//! (unknown functions, bad literal regexes and over-deep nesting fail here) and then evaluated
//! many times against `serde_json::Value` trees without copying them.
//!
//! Submodules: `parse` (lexer + parser to AST), `eval` (tree-walking evaluator), `regex` (the
//! tiny regex engine behind `matches()`), `temporal` (partial dates/times).

mod eval;
mod parse;
mod regex;
mod temporal;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde_json::Value;

pub(crate) use eval::is_choice_suffix;
pub use temporal::Temporal;

/// A compiled FHIRPath expression.
#[derive(Debug, Clone)]
pub struct Expression {
    source: String,
    ast: parse::Ast,
}

/// The evaluation context: `focus` is `$this`/`%context`, `resource` is `%resource` and `root`
/// is `%rootResource` (they differ for contained resources). `focus_type` is the FHIR type of the
/// focus when the caller knows it (e.g. `"Period"`), used by `is`/`ofType`.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    pub focus: &'a Value,
    pub focus_type: Option<&'a str>,
    pub resource: &'a Value,
    pub root: &'a Value,
    /// Values of the caller's `%name` variables (named when the expression was parsed with
    /// [`Expression::parse_with`]). A JSON array is a collection; `null` is empty.
    pub vars: &'a [(&'a str, &'a Value)],
    /// Set when the expression reads a `%name` that `vars` does not bind:
    /// the result did not depend on any variable unless it is set.
    pub unbound: Option<&'a Cell<bool>>,
}

impl<'a> Env<'a> {
    /// Evaluate on a whole resource: focus, `%resource` and `%rootResource` are all `resource`.
    pub fn new(resource: &'a Value) -> Env<'a> {
        Env {
            focus: resource,
            focus_type: None,
            resource,
            root: resource,
            vars: &[],
            unbound: None,
        }
    }
}

/// One item of a FHIRPath collection. `Node` borrows an element of the JSON; the other variants
/// are computed or literal System values.
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A JSON element; `type_name` is known for choice elements (`valueQuantity` -> `Quantity`,
    /// `valueDateTime` -> `dateTime`) and for a typed focus.
    Node {
        value: &'a Value,
        type_name: Option<&'a str>,
    },
    Boolean(bool),
    Integer(i64),
    Decimal(f64),
    String(Cow<'a, str>),
    Date(Temporal),
    DateTime(Temporal),
    Time(Temporal),
    Quantity {
        value: f64,
        unit: Cow<'a, str>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the source.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at offset {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for ParseError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for EvalError {}

impl Expression {
    pub fn parse(source: &str) -> Result<Expression, ParseError> {
        Expression::parse_with(source, &[])
    }

    /// Parses an expression that may use the caller's variables `%name` for each name in
    /// `externals` (their values come with [`Env::vars`]); any other `%name` is an error.
    pub fn parse_with(source: &str, externals: &[&str]) -> Result<Expression, ParseError> {
        Ok(Expression {
            source: source.to_string(),
            ast: parse::parse(source, externals)?,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluate with `focus` as the context item (%context, $this) inside `resource` (%resource)
    /// and `root` (%rootResource).
    pub fn evaluate<'a>(&self, env: &Env<'a>) -> Result<Vec<Item<'a>>, EvalError> {
        self.run(env).map(eval::Items::into_vec)
    }

    /// Invariant semantics: empty is satisfied, a single boolean is the answer, anything else is
    /// an error (the constraint is not a boolean expression).
    pub fn is_satisfied(&self, env: &Env<'_>) -> Result<bool, EvalError> {
        match &*self.run(env)? {
            [] => Ok(true),
            [Item::Boolean(b)] => Ok(*b),
            [
                Item::Node {
                    value: Value::Bool(b),
                    ..
                },
            ] => Ok(*b),
            other => Err(EvalError {
                message: format!(
                    "invariant gave {} item(s), not a single boolean",
                    other.len()
                ),
            }),
        }
    }

    /// Evaluation without converting the result to a `Vec`, so invariants stay allocation-free.
    fn run<'a>(&self, env: &Env<'a>) -> Result<eval::Items<'a>, EvalError> {
        let this = [Item::Node {
            value: env.focus,
            type_name: env.focus_type,
        }];
        (eval::Ctx { env }).run(&self.ast, &this)
    }
}

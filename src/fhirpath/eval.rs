//! Tree-walking evaluator: runs the compiled AST over borrowed FHIR JSON. Items borrow strings
//! and subtrees from the JSON; only computed values allocate.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::slice::from_ref;

use serde_json::Value;

use super::parse::{Ast, Func, Kind, Lit, Op, TypeOp, Var};
use super::regex::Regex;
use super::temporal::Temporal;
use super::{Env, EvalError, Item};

type Res<T> = Result<T, EvalError>;

/// FHIR resources are far shallower; a deeper document is hostile or broken.
const MAX_DESCENDANT_DEPTH: usize = 64;
const MAX_REPEAT_ITEMS: usize = 10_000;

/// Choice-element suffixes (`value[x]` -> `valueString`); primitives get a lower-cased type name.
#[rustfmt::skip]
const PRIMITIVE_TYPES: &[&str] = &[
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id", "instant",
    "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt", "uri", "url", "uuid",
];
#[rustfmt::skip]
const COMPLEX_TYPES: &[&str] = &[
    "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "Coding", "ContactPoint", "Count",
    "Distance", "Duration", "HumanName", "Identifier", "Money", "Period", "Quantity", "Range", "Ratio",
    "Reference", "SampledData", "Signature", "Timing", "ContactDetail", "Contributor", "DataRequirement",
    "Expression", "ParameterDefinition", "RelatedArtifact", "TriggerDefinition", "UsageContext", "Dosage",
    "Meta",
];

fn err(message: impl Into<String>) -> EvalError {
    EvalError {
        message: message.into(),
    }
}

fn fail<T>(message: impl Into<String>) -> Res<T> {
    Err(err(message))
}

/// A collection keeping a single item inline: most intermediate results are singletons, so
/// typical invariants evaluate without touching the allocator.
#[derive(Debug, Clone)]
pub(super) enum Items<'a> {
    One(Item<'a>),
    Many(Vec<Item<'a>>),
}

impl<'a> Items<'a> {
    const NONE: Items<'a> = Items::Many(Vec::new());

    #[inline]
    fn push(&mut self, it: Item<'a>) {
        match self {
            Items::Many(v) if v.is_empty() => *self = Items::One(it),
            Items::Many(v) => v.push(it),
            Items::One(_) => {
                if let Items::One(first) = std::mem::replace(self, Items::NONE) {
                    *self = Items::Many(vec![first, it]);
                }
            }
        }
    }

    pub(super) fn into_vec(self) -> Vec<Item<'a>> {
        match self {
            Items::One(it) => vec![it],
            Items::Many(v) => v,
        }
    }
}

impl<'a> std::ops::Deref for Items<'a> {
    type Target = [Item<'a>];
    fn deref(&self) -> &[Item<'a>] {
        match self {
            Items::One(it) => from_ref(it),
            Items::Many(v) => v,
        }
    }
}

impl<'a> IntoIterator for Items<'a> {
    type Item = Item<'a>;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Item<'a>>, std::vec::IntoIter<Item<'a>>>;
    fn into_iter(self) -> Self::IntoIter {
        let (first, rest) = match self {
            Items::One(it) => (Some(it), Vec::new()),
            Items::Many(v) => (None, v),
        };
        first.into_iter().chain(rest)
    }
}

impl<'a> From<Option<Item<'a>>> for Items<'a> {
    fn from(it: Option<Item<'a>>) -> Self {
        it.map_or(Items::NONE, Items::One)
    }
}

impl<'a> Extend<Item<'a>> for Items<'a> {
    fn extend<I: IntoIterator<Item = Item<'a>>>(&mut self, iter: I) {
        iter.into_iter().for_each(|it| self.push(it));
    }
}

impl<'a> FromIterator<Item<'a>> for Items<'a> {
    fn from_iter<I: IntoIterator<Item = Item<'a>>>(iter: I) -> Self {
        let mut out = Items::NONE;
        out.extend(iter);
        out
    }
}

fn one(it: Item<'_>) -> Res<Items<'_>> {
    Ok(Items::One(it))
}

fn boolean<'a>(v: Option<bool>) -> Res<Items<'a>> {
    Ok(v.map(Item::Boolean).into())
}

fn owned<'a>(s: String) -> Res<Items<'a>> {
    one(Item::String(Cow::Owned(s)))
}

fn node<'a>(value: &'a Value, type_name: Option<&'a str>) -> Item<'a> {
    Item::Node { value, type_name }
}

/// The primitive value behind an item, borrowing from it, so operators match on one shape.
#[derive(Debug, Clone, Copy)]
enum View<'s> {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(&'s str),
    Tm(Temporal),
    Qty(f64, Option<&'s str>),
    Obj(&'s Value),
}

impl<'a> Item<'a> {
    #[inline]
    fn view(&self) -> View<'_> {
        match self {
            Item::Node {
                value: Value::Bool(b),
                ..
            }
            | Item::Boolean(b) => View::Bool(*b),
            Item::Node {
                value: Value::Number(n),
                ..
            } => n
                .as_i64()
                .map_or_else(|| View::Dec(n.as_f64().unwrap_or(f64::NAN)), View::Int),
            Item::Node {
                value: Value::String(s),
                ..
            } => View::Str(s),
            Item::Node { value, .. } => View::Obj(value),
            Item::Integer(i) => View::Int(*i),
            Item::Decimal(d) => View::Dec(*d),
            Item::String(s) => View::Str(s),
            Item::Date(t) | Item::DateTime(t) | Item::Time(t) => View::Tm(*t),
            Item::Quantity { value, unit } => View::Qty(*value, Some(unit)),
        }
    }

    fn text(&self) -> Option<Cow<'a, str>> {
        match self {
            Item::Node {
                value: Value::String(s),
                ..
            } => Some(Cow::Borrowed(s)),
            Item::String(s) => Some(s.clone()),
            _ => None,
        }
    }
}

fn num(v: View) -> Option<f64> {
    match v {
        View::Int(i) => Some(i as f64),
        View::Dec(d) => Some(d),
        _ => None,
    }
}

/// A Quantity literal or a FHIR Quantity object, with its code (or else unit).
fn qty(v: View<'_>) -> Option<(f64, Option<&str>)> {
    match v {
        View::Qty(n, u) => Some((n, u)),
        View::Obj(Value::Object(m)) => {
            let unit = m
                .get("code")
                .or_else(|| m.get("unit"))
                .and_then(Value::as_str);
            Some((m.get("value")?.as_f64()?, unit))
        }
        _ => None,
    }
}

/// Both strings parse as dates/times and at least one is unmistakably one (not a bare year).
fn as_dates(p: &str, q: &str) -> Option<(Temporal, Temporal)> {
    let shaped = |s: &str| s.contains(['-', ':']);
    (shaped(p) || shaped(q)).then(|| Temporal::parse_any(p).zip(Temporal::parse_any(q)))?
}

/// `=` on single items; `None` when temporal precisions make it undecidable.
fn equal(x: &Item, y: &Item) -> Option<bool> {
    use View::*;
    let (a, b) = (x.view(), y.view());
    match (a, b) {
        (Bool(p), Bool(q)) => Some(p == q),
        (Int(p), Int(q)) => Some(p == q),
        (Str(p), Str(q)) if p == q => Some(true),
        // Differently written instants (`Z` vs `+00:00`) are equal as dates.
        (Str(p), Str(q)) => {
            as_dates(p, q).map_or(Some(false), |(s, t)| s.compare(&t).map(Ordering::is_eq))
        }
        (Tm(s), Tm(t)) => s.compare(&t).map(Ordering::is_eq),
        (Str(p), Tm(t)) | (Tm(t), Str(p)) => match Temporal::parse_any(p) {
            Some(s) => s.compare(&t).map(Ordering::is_eq),
            None => Some(false),
        },
        (Obj(p), Obj(q)) => Some(p == q),
        (Qty(p, u), Qty(q, v)) => Some(p == q && u == v),
        _ => Some(matches!((num(a), num(b)), (Some(p), Some(q)) if p == q)),
    }
}

/// `~`: strings compare case-insensitively with whitespace runs collapsed.
fn equivalent(x: &Item, y: &Item) -> bool {
    fn folded(s: &str) -> impl Iterator<Item = char> + '_ {
        let words = s.split_whitespace().enumerate();
        words.flat_map(|(i, w)| {
            (i > 0)
                .then_some(' ')
                .into_iter()
                .chain(w.chars().flat_map(char::to_lowercase))
        })
    }
    match (x.view(), y.view()) {
        (View::Str(p), View::Str(q)) => folded(p).eq(folded(q)),
        _ => equal(x, y).unwrap_or(false),
    }
}

fn compare(x: &Item, y: &Item) -> Res<Option<Ordering>> {
    use View::*;
    let (a, b) = (x.view(), y.view());
    Ok(match (a, b) {
        (Int(p), Int(q)) => Some(p.cmp(&q)),
        (Str(p), Str(q)) => as_dates(p, q).map_or(Some(p.cmp(q)), |(s, t)| s.compare(&t)),
        (Str(p), Tm(t)) => Temporal::parse_any(p).and_then(|s| s.compare(&t)),
        (Tm(t), Str(p)) => Temporal::parse_any(p).and_then(|s| t.compare(&s)),
        (Tm(s), Tm(t)) => s.compare(&t),
        _ => match (num(a), num(b), qty(a), qty(b)) {
            (Some(p), Some(q), ..) => p.partial_cmp(&q),
            // Quantities compare only when their units agree (or one has none).
            (.., Some((p, u)), Some((q, v))) => (u.is_none() || v.is_none() || u == v)
                .then(|| p.partial_cmp(&q))
                .flatten(),
            _ => return fail(format!("cannot compare {a:?} with {b:?}")),
        },
    })
}

fn contains(coll: &[Item], x: &Item) -> bool {
    coll.iter().any(|y| equal(x, y) == Some(true))
}

fn distinct<'a>(items: impl IntoIterator<Item = Item<'a>>) -> Items<'a> {
    let mut out = Items::NONE;
    for it in items {
        if !contains(&out, &it) {
            out.push(it);
        }
    }
    out
}

fn single<'x, 'a>(items: &'x [Item<'a>]) -> Res<Option<&'x Item<'a>>> {
    match items {
        [] => Ok(None),
        [it] => Ok(Some(it)),
        _ => fail(format!("expected a single item but got {}", items.len())),
    }
}

/// Singleton evaluation to Boolean: a single non-boolean item counts as true (FHIRPath §4.5).
fn to_bool(items: &[Item]) -> Res<Option<bool>> {
    Ok(single(items)?.map(|it| !matches!(it.view(), View::Bool(false))))
}

fn single_str<'a>(items: &[Item<'a>]) -> Res<Option<Cow<'a, str>>> {
    match single(items)? {
        None => Ok(None),
        Some(it) => it
            .text()
            .map(Some)
            .ok_or_else(|| err(format!("expected a string, got {:?}", it.view()))),
    }
}

fn bools(input: &[Item]) -> Res<Vec<bool>> {
    let as_bool = |it: &Item| match it.view() {
        View::Bool(v) => Ok(v),
        v => fail(format!("expected booleans, got {v:?}")),
    };
    input.iter().map(as_bool).collect()
}

fn fmt_dec(d: f64) -> String {
    if d.fract() == 0.0 && d.abs() < 1e15 {
        format!("{d:.1}")
    } else {
        d.to_string()
    }
}

fn to_text<'a>(it: &Item<'a>) -> Option<Cow<'a, str>> {
    if let Some(s) = it.text() {
        return Some(s);
    }
    Some(Cow::Owned(match it.view() {
        View::Bool(b) => b.to_string(),
        View::Int(i) => i.to_string(),
        View::Dec(d) => fmt_dec(d),
        View::Tm(t) => t.to_string(),
        View::Qty(v, u) => format!("{} '{}'", fmt_dec(v), u.unwrap_or("1")),
        View::Str(_) | View::Obj(_) => return None,
    }))
}

fn is_int(s: &str) -> bool {
    let d = s.strip_prefix(['+', '-']).unwrap_or(s);
    !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit())
}

fn convert<'a>(func: Func, it: &Item<'a>) -> Option<Item<'a>> {
    use Func::*;
    use View::*;
    let is_word = |s: &str, words: &[&str]| words.iter().any(|w| w.eq_ignore_ascii_case(s));
    let is_dec = |s: &str| {
        s.split_once('.').map_or(is_int(s), |(i, f)| {
            is_int(i) && is_int(f) && !f.starts_with('+')
        })
    };
    Some(match (func, it.view()) {
        (ToInteger | ConvertsToInteger, v) => Item::Integer(match v {
            Int(i) => i,
            Bool(b) => i64::from(b),
            Str(s) if is_int(s) => s.parse().ok()?,
            _ => return None,
        }),
        (ToDecimal | ConvertsToDecimal, v) => Item::Decimal(match v {
            Bool(b) => f64::from(u8::from(b)),
            Str(s) if is_dec(s) => s.parse().ok()?,
            v => num(v)?,
        }),
        (ToString | ConvertsToString, _) => Item::String(to_text(it)?),
        (ToBoolean | ConvertsToBoolean, v) => Item::Boolean(match v {
            Bool(b) => b,
            Int(i @ (0 | 1)) => i == 1,
            Dec(d) if d == 0.0 || d == 1.0 => d == 1.0,
            Str(s) if is_word(s, &["true", "t", "yes", "y", "1", "1.0"]) => true,
            Str(s) if is_word(s, &["false", "f", "no", "n", "0", "0.0"]) => false,
            _ => return None,
        }),
        (ToDate | ConvertsToDate, Tm(t)) if !t.is_time() => Item::Date(t.date_part()),
        (ToDate | ConvertsToDate, Str(s)) => Item::Date(Temporal::parse_date(s)?.0.date_part()),
        (ToDateTime | ConvertsToDateTime, Tm(t)) if !t.is_time() => Item::DateTime(t),
        (ToDateTime | ConvertsToDateTime, Str(s)) => Item::DateTime(Temporal::parse_date(s)?.0),
        _ => return None,
    })
}

fn type_matches(it: &Item, ty: &str) -> bool {
    let ty = ty
        .strip_prefix("FHIR.")
        .or_else(|| ty.strip_prefix("System."))
        .unwrap_or(ty);
    // `dateTime` (FHIR) and `DateTime` (System) name the same primitive here.
    let same = |name: &str| {
        let (mut a, mut b) = (name.chars(), ty.chars());
        a.next()
            .zip(b.next())
            .is_some_and(|(x, y)| x.eq_ignore_ascii_case(&y))
            && a.eq(b)
    };
    match it {
        Item::Node {
            value,
            type_name: Some(t),
        } => same(t) || resource_type(value) == Some(ty),
        Item::Node {
            value: v @ Value::Object(_),
            ..
        } => resource_type(v) == Some(ty),
        Item::Node {
            value: Value::Number(n),
            ..
        } => same("Decimal") || (n.is_i64() && same("Integer")),
        Item::Node {
            value: Value::String(_),
            ..
        }
        | Item::String(_) => same("String"),
        Item::Node {
            value: Value::Bool(_),
            ..
        }
        | Item::Boolean(_) => same("Boolean"),
        Item::Node { .. } => false,
        Item::Integer(_) => same("Integer"),
        Item::Decimal(_) => same("Decimal"),
        Item::Date(_) => same("Date"),
        Item::DateTime(_) => same("DateTime"),
        Item::Time(_) => same("Time"),
        Item::Quantity { .. } => same("Quantity"),
    }
}

fn resource_type(v: &Value) -> Option<&str> {
    v.get("resourceType")?.as_str()
}

fn push_json<'a>(v: &'a Value, type_name: Option<&'a str>, out: &mut Items<'a>) {
    match v {
        Value::Null => {}
        Value::Array(a) => out.extend(
            a.iter()
                .filter(|x| !x.is_null())
                .map(|x| node(x, type_name)),
        ),
        _ => out.push(node(v, type_name)),
    }
}

fn navigate<'a>(it: &Item<'a>, name: &str, out: &mut Items<'a>) {
    let Item::Node {
        value: Value::Object(m),
        ..
    } = it
    else {
        return;
    };
    // One linear pass beats hashing for the few members FHIR objects have, and finds choice
    // elements (`value` -> `valueQuantity`) at the same time.
    let mut choice = None;
    for (key, v) in m {
        match key.strip_prefix(name) {
            Some("") => return push_json(v, None, out),
            Some(suffix) if choice.is_none() => choice = choice_type(suffix).map(|t| (v, t)),
            _ => {}
        }
    }
    if let Some((v, t)) = choice {
        push_json(v, Some(t), out);
    }
}

/// Whether `value` + `suffix` names a choice element's value as FHIRPath
/// navigates it (`valueString`, `valueCodeableConcept`).
pub(crate) fn is_choice_suffix(suffix: &str) -> bool {
    choice_type(suffix).is_some()
}

fn choice_type(suffix: &str) -> Option<&str> {
    let mut c = suffix.chars();
    let first = c.next().filter(char::is_ascii_uppercase)?;
    let primitive = PRIMITIVE_TYPES
        .iter()
        .find(|t| t.starts_with(first.to_ascii_lowercase()) && t.get(1..) == Some(c.as_str()));
    primitive
        .copied()
        .or_else(|| COMPLEX_TYPES.contains(&suffix).then_some(suffix))
}

fn children<'a>(it: &Item<'a>, out: &mut Items<'a>) {
    let Item::Node {
        value: Value::Object(m),
        ..
    } = it
    else {
        return;
    };
    // `resourceType` is not an element, and `_x` holds primitive extensions, not children.
    for (_, v) in m
        .iter()
        .filter(|(k, _)| *k != "resourceType" && !k.starts_with('_'))
    {
        push_json(v, None, out);
    }
}

/// Byte offset of the `n`th character (or the end).
fn char_byte(s: &str, n: usize) -> usize {
    if s.is_ascii() {
        n.min(s.len())
    } else {
        s.char_indices().nth(n).map_or(s.len(), |(b, _)| b)
    }
}

fn sub_cow<'a>(s: &Cow<'a, str>, from: usize, to: usize) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(from..to).unwrap_or("")),
        Cow::Owned(o) => Cow::Owned(o.get(from..to).unwrap_or("").to_string()),
    }
}

fn lit<'a>(l: &Lit) -> Items<'a> {
    Items::One(match l {
        Lit::Empty => return Items::NONE,
        Lit::Bool(b) => Item::Boolean(*b),
        Lit::Int(i) => Item::Integer(*i),
        Lit::Dec(d) => Item::Decimal(*d),
        Lit::Str(s) => Item::String(Cow::Owned(s.to_string())),
        Lit::Static(s) => Item::String(Cow::Borrowed(s)),
        Lit::Date(t) => Item::Date(*t),
        Lit::DateTime(t) => Item::DateTime(*t),
        Lit::Time(t) => Item::Time(*t),
        Lit::Qty(value, unit) => Item::Quantity {
            value: *value,
            unit: Cow::Owned(unit.to_string()),
        },
    })
}

/// Arithmetic; overflow and division by zero give an empty result.
fn arith<'a>(op: Op, x: &Item<'a>, y: &Item<'a>) -> Res<Items<'a>> {
    let r = match (x.view(), y.view()) {
        (View::Int(a), View::Int(b)) => match op {
            Op::Add => a.checked_add(b),
            Op::Sub => a.checked_sub(b),
            Op::Mul => a.checked_mul(b),
            Op::Div => return Ok((b != 0).then(|| Item::Decimal(a as f64 / b as f64)).into()),
            Op::IDiv => a.checked_div(b),
            _ => a.checked_rem(b),
        }
        .map(Item::Integer),
        (View::Str(a), View::Str(b)) if op == Op::Add => return owned(format!("{a}{b}")),
        (a, b) => {
            let (Some(p), Some(q)) = (num(a), num(b)) else {
                return fail(format!("cannot apply {op:?} to {a:?} and {b:?}"));
            };
            let v = match op {
                Op::Add => p + q,
                Op::Sub => p - q,
                Op::Mul => p * q,
                Op::Div => p / q,
                Op::IDiv => {
                    let t = (p / q).trunc();
                    return Ok((t.is_finite() && t.abs() < 9.0e18)
                        .then_some(Item::Integer(t as i64))
                        .into());
                }
                _ => p % q,
            };
            v.is_finite().then_some(Item::Decimal(v))
        }
    };
    Ok(r.into())
}

/// `$this` (a slice: one item inside lambdas, the focus at the top) and `$index`.
#[derive(Clone, Copy)]
struct Scope<'s, 'a> {
    this: &'s [Item<'a>],
    index: Option<usize>,
}

impl<'a> Scope<'_, 'a> {
    fn this_items(&self) -> Items<'a> {
        match self.this {
            [it] => Items::One(it.clone()),
            many => Items::Many(many.to_vec()),
        }
    }
}

pub(super) struct Ctx<'e, 'a> {
    pub env: &'e Env<'a>,
}

impl<'a> Ctx<'_, 'a> {
    pub(super) fn run(&self, ast: &Ast, this: &[Item<'a>]) -> Res<Items<'a>> {
        self.eval(ast, Scope { this, index: None })
    }

    fn eval(&self, ast: &Ast, sc: Scope<'_, 'a>) -> Res<Items<'a>> {
        let env = self.env;
        Ok(match &ast.kind {
            Kind::Lit(l) => lit(l),
            Kind::Var(Var::This) => sc.this_items(),
            Kind::Var(Var::Index) => sc
                .index
                .and_then(|i| i64::try_from(i).ok())
                .map(Item::Integer)
                .into(),
            Kind::Var(Var::Resource) => Items::One(node(env.resource, None)),
            Kind::Var(Var::Root) => Items::One(node(env.root, None)),
            Kind::Var(Var::Context) => Items::One(node(env.focus, env.focus_type)),
            Kind::Var(Var::External(name)) => {
                let mut out = Items::NONE;
                match env.vars.iter().find(|(n, _)| *n == &**name) {
                    Some((_, value)) => push_json(value, None, &mut out),
                    None => {
                        if let Some(unbound) = env.unbound {
                            unbound.set(true);
                        }
                    }
                }
                out
            }
            Kind::Ident(name) => {
                let is_type = name.starts_with(|c: char| c.is_ascii_uppercase());
                let mut out = Items::NONE;
                for it in sc.this {
                    match it {
                        Item::Node { value, .. }
                            if is_type && resource_type(value) == Some(name) =>
                        {
                            out.push(it.clone())
                        }
                        _ => navigate(it, name, &mut out),
                    }
                }
                out
            }
            Kind::Member(base, name) => {
                let mut out = Items::NONE;
                self.eval(base, sc)?
                    .iter()
                    .for_each(|it| navigate(it, name, &mut out));
                out
            }
            Kind::Index(base, i) => {
                let items = self.eval(base, sc)?;
                match single(&self.eval(i, sc)?)?.map(Item::view) {
                    None => Items::NONE,
                    Some(View::Int(i)) => usize::try_from(i)
                        .ok()
                        .and_then(|i| items.into_iter().nth(i))
                        .into(),
                    Some(v) => return fail(format!("index must be an integer, got {v:?}")),
                }
            }
            Kind::Neg(a) => match single(&self.eval(a, sc)?)?.map(Item::view) {
                None => Items::NONE,
                Some(View::Int(i)) => i.checked_neg().map(Item::Integer).into(),
                Some(View::Dec(d)) => Items::One(Item::Decimal(-d)),
                Some(v) => return fail(format!("cannot negate {v:?}")),
            },
            Kind::Bin(op, a, b) => return self.binary(*op, a, b, sc),
            Kind::Type(op, recv, ty) => {
                let input = recv
                    .as_ref()
                    .map_or_else(|| Ok(sc.this_items()), |r| self.eval(r, sc))?;
                if *op == TypeOp::Is {
                    single(&input)?
                        .map(|it| Item::Boolean(type_matches(it, ty)))
                        .into()
                } else {
                    input
                        .into_iter()
                        .filter(|it| type_matches(it, ty))
                        .collect()
                }
            }
            Kind::Call {
                recv,
                func,
                args,
                regex,
            } => {
                let input = recv
                    .as_ref()
                    .map_or_else(|| Ok(sc.this_items()), |r| self.eval(r, sc))?;
                return self.call(*func, input, args, regex.as_deref(), sc);
            }
        })
    }

    fn binary(&self, op: Op, a: &Ast, b: &Ast, sc: Scope<'_, 'a>) -> Res<Items<'a>> {
        if matches!(op, Op::And | Op::Or | Op::Xor | Op::Implies) {
            let l = to_bool(&self.eval(a, sc)?)?;
            // The spec's truth tables let the left side decide alone here.
            match (op, l) {
                (Op::And, Some(false)) => return boolean(Some(false)),
                (Op::Or | Op::Implies, Some(v)) if v == (op == Op::Or) => {
                    return boolean(Some(true));
                }
                _ => {}
            }
            let r = to_bool(&self.eval(b, sc)?)?;
            return boolean(match (op, l, r) {
                (Op::And, _, Some(false)) => Some(false),
                (Op::And, Some(true), Some(true)) => Some(true),
                (Op::Or | Op::Implies, _, Some(true)) => Some(true),
                (Op::Or, Some(false), Some(false)) => Some(false),
                (Op::Implies, Some(true), r) => r,
                (Op::Xor, Some(l), Some(r)) => Some(l != r),
                _ => None,
            });
        }
        let (l, r) = (self.eval(a, sc)?, self.eval(b, sc)?);
        match op {
            Op::Union => Ok(distinct(l.into_iter().chain(r))),
            Op::Eq | Op::Ne if l.is_empty() || r.is_empty() => Ok(Items::NONE),
            Op::Eq | Op::Ne => {
                let pairs = || {
                    l.iter()
                        .zip(r.iter())
                        .try_fold(true, |acc, (x, y)| Some(acc && equal(x, y)?))
                };
                let eq = if l.len() == r.len() {
                    pairs()
                } else {
                    Some(false)
                };
                boolean(eq.map(|e| e == (op == Op::Eq)))
            }
            Op::Equiv | Op::NotEquiv => {
                let eq = l.len() == r.len() && l.iter().all(|x| r.iter().any(|y| equivalent(x, y)));
                boolean(Some(eq == (op == Op::Equiv)))
            }
            Op::In => boolean(single(&l)?.map(|x| contains(&r, x))),
            Op::Contains => boolean(single(&r)?.map(|x| contains(&l, x))),
            Op::Concat => {
                let text = |v: &[Item<'a>]| match single(v)? {
                    None => Ok(Cow::Borrowed("")),
                    Some(it) => to_text(it).ok_or_else(|| err("& needs strings")),
                };
                owned(format!("{}{}", text(&l)?, text(&r)?))
            }
            _ => {
                let (Some(x), Some(y)) = (single(&l)?, single(&r)?) else {
                    return Ok(Items::NONE);
                };
                match op {
                    Op::Lt => boolean(compare(x, y)?.map(Ordering::is_lt)),
                    Op::Gt => boolean(compare(x, y)?.map(Ordering::is_gt)),
                    Op::Le => boolean(compare(x, y)?.map(Ordering::is_le)),
                    Op::Ge => boolean(compare(x, y)?.map(Ordering::is_ge)),
                    _ => arith(op, x, y),
                }
            }
        }
    }

    fn arg(&self, args: &[Ast], i: usize, sc: Scope<'_, 'a>) -> Res<Items<'a>> {
        args.get(i).map_or(Ok(Items::NONE), |a| self.eval(a, sc))
    }

    fn arg_int(&self, args: &[Ast], i: usize, sc: Scope<'_, 'a>) -> Res<Option<i64>> {
        if let Some(Kind::Lit(Lit::Int(n))) = args.get(i).map(|a| &a.kind) {
            return Ok(Some(*n));
        }
        match single(&self.arg(args, i, sc)?)?.map(Item::view) {
            None => Ok(None),
            Some(View::Int(n)) => Ok(Some(n)),
            Some(v) => fail(format!("expected an integer argument, got {v:?}")),
        }
    }

    fn arg_str(&self, args: &[Ast], i: usize, sc: Scope<'_, 'a>) -> Res<Option<Cow<'a, str>>> {
        single_str(&self.arg(args, i, sc)?)
    }

    /// Evaluates the first argument once per input item with that item as `$this`; stops when
    /// `f` returns false.
    fn per_item(
        &self,
        args: &[Ast],
        input: &[Item<'a>],
        mut f: impl FnMut(&Item<'a>, Items<'a>) -> Res<bool>,
    ) -> Res<()> {
        let crit = args.first().ok_or_else(|| err("missing argument"))?;
        for (i, it) in input.iter().enumerate() {
            if !f(
                it,
                self.eval(
                    crit,
                    Scope {
                        this: from_ref(it),
                        index: Some(i),
                    },
                )?,
            )? {
                break;
            }
        }
        Ok(())
    }

    /// Functions. Non-lambda arguments are evaluated against the caller's `$this`, not the input.
    fn call(
        &self,
        func: Func,
        mut input: Items<'a>,
        args: &[Ast],
        re: Option<&Regex>,
        sc: Scope<'_, 'a>,
    ) -> Res<Items<'a>> {
        use Func::*;
        let b = |v: bool| boolean(Some(v));
        match func {
            Empty => b(input.is_empty()),
            Exists if args.is_empty() => b(!input.is_empty()),
            Exists | Where => {
                let mut out = Items::NONE;
                self.per_item(args, &input, |it, r| {
                    if to_bool(&r)? == Some(true) {
                        out.push(it.clone());
                    }
                    Ok(func == Where || out.is_empty())
                })?;
                if func == Exists {
                    b(!out.is_empty())
                } else {
                    Ok(out)
                }
            }
            All => {
                let mut all = true;
                self.per_item(args, &input, |_, r| {
                    all = to_bool(&r)? == Some(true);
                    Ok(all)
                })?;
                b(all)
            }
            AllTrue => b(bools(&input)?.iter().all(|v| *v)),
            AnyTrue => b(bools(&input)?.iter().any(|v| *v)),
            AllFalse => b(bools(&input)?.iter().all(|v| !*v)),
            AnyFalse => b(bools(&input)?.iter().any(|v| !*v)),
            Count => one(Item::Integer(
                i64::try_from(input.len()).unwrap_or(i64::MAX),
            )),
            Distinct => Ok(distinct(input)),
            IsDistinct => b(distinct(input.iter().cloned()).len() == input.len()),
            Select => {
                let mut out = Items::NONE;
                self.per_item(args, &input, |_, r| {
                    out.extend(r);
                    Ok(true)
                })?;
                Ok(out)
            }
            Repeat => {
                let mut out = Items::NONE;
                while !input.is_empty() {
                    let mut next = Items::NONE;
                    self.per_item(args, &input, |_, r| {
                        for x in r {
                            if !contains(&out, &x) {
                                out.push(x.clone());
                                next.push(x);
                            }
                        }
                        Ok(out.len() <= MAX_REPEAT_ITEMS)
                    })?;
                    if out.len() > MAX_REPEAT_ITEMS {
                        return fail("repeat() produced too many items");
                    }
                    input = next;
                }
                Ok(out)
            }
            First => Ok(input.into_iter().next().into()),
            Last => Ok(input.into_iter().last().into()),
            Tail => Ok(input.into_iter().skip(1).collect()),
            Skip | Take => {
                let n = self.arg_int(args, 0, sc)?.unwrap_or(0);
                let n = usize::try_from(n.max(0)).unwrap_or(usize::MAX);
                let items = input.into_iter();
                Ok(if func == Skip {
                    items.skip(n).collect()
                } else {
                    items.take(n).collect()
                })
            }
            Single => {
                single(&input)?;
                Ok(input)
            }
            Union => Ok(distinct(input.into_iter().chain(self.arg(args, 0, sc)?))),
            Combine => Ok(input.into_iter().chain(self.arg(args, 0, sc)?).collect()),
            Intersect | Exclude => {
                let other = self.arg(args, 0, sc)?;
                let kept = input
                    .into_iter()
                    .filter(|it| contains(&other, it) == (func == Intersect));
                Ok(if func == Intersect {
                    distinct(kept)
                } else {
                    kept.collect()
                })
            }
            SubsetOf | SupersetOf => {
                let other = self.arg(args, 0, sc)?;
                let (small, big) = if func == SubsetOf {
                    (&input, &other)
                } else {
                    (&other, &input)
                };
                b(small.iter().all(|it| contains(big, it)))
            }
            Iif => {
                let cond = to_bool(&self.arg(args, 0, sc)?)?;
                self.arg(args, if cond == Some(true) { 1 } else { 2 }, sc)
            }
            Not => boolean(to_bool(&input)?.map(|v| !v)),
            Children | Descendants => {
                let mut out = Items::NONE;
                let mut frontier = input;
                // Breadth-first without recursion; the depth cap bounds hostile documents.
                for _ in 0..MAX_DESCENDANT_DEPTH {
                    let mut next = Items::NONE;
                    frontier.iter().for_each(|it| children(it, &mut next));
                    if func == Children || next.is_empty() {
                        return Ok(if func == Children { next } else { out });
                    }
                    out.extend(next.iter().cloned());
                    frontier = next;
                }
                fail("descendants(): document nested too deeply")
            }
            HasValue => b(matches!(&*input, [it] if !matches!(it.view(), View::Obj(_)))),
            Trace => Ok(input),
            ToInteger | ToDecimal | ToString | ToBoolean | ToDate | ToDateTime => {
                Ok(single(&input)?.and_then(|it| convert(func, it)).into())
            }
            ConvertsToInteger | ConvertsToDecimal | ConvertsToString | ConvertsToBoolean
            | ConvertsToDate | ConvertsToDateTime => {
                boolean(single(&input)?.map(|it| convert(func, it).is_some()))
            }
            Today => one(Item::Date(Temporal::now(true))),
            Now => one(Item::DateTime(Temporal::now(false))),
            Join => {
                let sep = self.arg_str(args, 0, sc)?.unwrap_or_default();
                let parts = input
                    .iter()
                    .map(|it| it.text().ok_or_else(|| err("join() needs strings")));
                owned(parts.collect::<Res<Vec<_>>>()?.join(&*sep))
            }
            _ => match single_str(&input)? {
                Some(s) => self.string_fn(func, s, args, re, sc),
                None => Ok(Items::NONE),
            },
        }
    }

    fn string_fn(
        &self,
        func: Func,
        s: Cow<'a, str>,
        args: &[Ast],
        re: Option<&Regex>,
        sc: Scope<'_, 'a>,
    ) -> Res<Items<'a>> {
        use Func::*;
        let n_chars = || {
            if s.is_ascii() {
                s.len()
            } else {
                s.chars().count()
            }
        };
        let int = |n: usize| one(Item::Integer(i64::try_from(n).unwrap_or(i64::MAX)));
        match func {
            Length => return int(n_chars()),
            Upper => return owned(s.to_uppercase()),
            Lower => return owned(s.to_lowercase()),
            ToChars => {
                return Ok(s
                    .chars()
                    .map(|c| Item::String(Cow::Owned(c.to_string())))
                    .collect());
            }
            Trim => {
                let from = s.len() - s.trim_start().len();
                return one(Item::String(sub_cow(&s, from, from + s.trim().len())));
            }
            Substring => {
                let (start, len, n) = (
                    self.arg_int(args, 0, sc)?,
                    self.arg_int(args, 1, sc)?,
                    n_chars(),
                );
                let Some(start) = start
                    .and_then(|st| usize::try_from(st).ok())
                    .filter(|st| *st < n)
                else {
                    return Ok(Items::NONE);
                };
                let end = start.saturating_add(
                    len.map_or(n, |l| usize::try_from(l.max(0)).unwrap_or(usize::MAX)),
                );
                return one(Item::String(sub_cow(
                    &s,
                    char_byte(&s, start),
                    char_byte(&s, end),
                )));
            }
            Matches => {
                let compiled;
                let re = match re {
                    Some(re) => re,
                    None => {
                        let Some(p) = self.arg_str(args, 0, sc)? else {
                            return Ok(Items::NONE);
                        };
                        compiled = Regex::new(&p).map_err(|m| err(format!("matches(): {m}")))?;
                        &compiled
                    }
                };
                return boolean(Some(re.is_match(&s)));
            }
            _ => {}
        }
        let Some(x) = self.arg_str(args, 0, sc)? else {
            return Ok(Items::NONE);
        };
        match func {
            StartsWith => boolean(Some(s.starts_with(&*x))),
            EndsWith => boolean(Some(s.ends_with(&*x))),
            Contains => boolean(Some(s.contains(&*x))),
            IndexOf => one(Item::Integer(
                s.find(&*x).map_or(-1, |p| s[..p].chars().count() as i64),
            )),
            Split => Ok(match &s {
                Cow::Borrowed(b) => b
                    .split(&*x)
                    .map(|p| Item::String(Cow::Borrowed(p)))
                    .collect(),
                Cow::Owned(o) => o
                    .split(&*x)
                    .map(|p| Item::String(Cow::Owned(p.to_string())))
                    .collect(),
            }),
            Replace => match self.arg_str(args, 1, sc)? {
                Some(with) => owned(s.replace(&*x, &with)),
                None => Ok(Items::NONE),
            },
            _ => fail(format!("{func:?} is not implemented")),
        }
    }
}

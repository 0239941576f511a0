//! Lexer and precedence-climbing parser from FHIRPath source to the AST that `eval.rs` walks.
//! Everything checkable without data is checked here (function names and arities, literal
//! regexes, environment variables) so that bad expressions fail at start-up, not per resource.

use super::ParseError;
use super::regex::Regex;
use super::temporal::Temporal;

/// Parser recursion (parentheses, arguments, operator climbing) beyond this is rejected.
const MAX_NEST: usize = 64;
/// AST height beyond this is rejected, which bounds evaluator recursion too.
const MAX_DEPTH: u16 = 128;

#[derive(Debug, Clone)]
pub(super) enum Lit {
    Empty,
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Box<str>),
    Static(&'static str),
    Date(Temporal),
    DateTime(Temporal),
    Time(Temporal),
    Qty(f64, Box<str>),
}

#[derive(Debug, Clone)]
pub(super) enum Var {
    This,
    Index,
    Resource,
    Root,
    Context,
    /// `%name` supplied by the caller (see [`super::Env::vars`]).
    External(Box<str>),
}

#[rustfmt::skip]
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Op {
    Mul, Div, IDiv, Mod, Add, Sub, Concat, Union, Lt, Gt, Le, Ge,
    Eq, Ne, Equiv, NotEquiv, In, Contains, And, Or, Xor, Implies,
}

/// Infix operators with their binding power (higher binds tighter), per the FHIRPath table.
#[rustfmt::skip]
const INFIX: &[(&str, Op, u8)] = &[
    ("*", Op::Mul, 10), ("/", Op::Div, 10), ("div", Op::IDiv, 10), ("mod", Op::Mod, 10),
    ("+", Op::Add, 9), ("-", Op::Sub, 9), ("&", Op::Concat, 9), ("|", Op::Union, 7),
    ("<", Op::Lt, 6), (">", Op::Gt, 6), ("<=", Op::Le, 6), (">=", Op::Ge, 6),
    ("=", Op::Eq, 5), ("!=", Op::Ne, 5), ("~", Op::Equiv, 5), ("!~", Op::NotEquiv, 5),
    ("in", Op::In, 4), ("contains", Op::Contains, 4), ("and", Op::And, 3),
    ("or", Op::Or, 2), ("xor", Op::Xor, 2), ("implies", Op::Implies, 1),
];

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum TypeOp {
    Is,
    As,
    OfType,
}

macro_rules! funcs {
    ($($name:literal => $v:ident($min:literal, $max:literal)),* $(,)?) => {
        #[derive(Debug, Clone, Copy, PartialEq)]
        pub(super) enum Func { $($v),* }
        const FUNCS: &[(&str, Func, usize, usize)] = &[$(($name, Func::$v, $min, $max)),*];
    };
}

funcs! {
    "empty" => Empty(0, 0), "exists" => Exists(0, 1), "all" => All(1, 1), "allTrue" => AllTrue(0, 0),
    "anyTrue" => AnyTrue(0, 0), "allFalse" => AllFalse(0, 0), "anyFalse" => AnyFalse(0, 0),
    "count" => Count(0, 0), "distinct" => Distinct(0, 0), "isDistinct" => IsDistinct(0, 0),
    "where" => Where(1, 1), "select" => Select(1, 1), "repeat" => Repeat(1, 1), "first" => First(0, 0),
    "last" => Last(0, 0), "tail" => Tail(0, 0), "skip" => Skip(1, 1), "take" => Take(1, 1),
    "single" => Single(0, 0), "union" => Union(1, 1), "combine" => Combine(1, 1),
    "intersect" => Intersect(1, 1), "exclude" => Exclude(1, 1), "subsetOf" => SubsetOf(1, 1),
    "supersetOf" => SupersetOf(1, 1), "iif" => Iif(2, 3), "not" => Not(0, 0),
    "children" => Children(0, 0), "descendants" => Descendants(0, 0), "hasValue" => HasValue(0, 0),
    "trace" => Trace(1, 2), "matches" => Matches(1, 1), "startsWith" => StartsWith(1, 1),
    "endsWith" => EndsWith(1, 1), "contains" => Contains(1, 1), "indexOf" => IndexOf(1, 1),
    "substring" => Substring(1, 2), "length" => Length(0, 0), "upper" => Upper(0, 0),
    "lower" => Lower(0, 0), "replace" => Replace(2, 2), "toChars" => ToChars(0, 0),
    "trim" => Trim(0, 0), "split" => Split(1, 1), "join" => Join(0, 1),
    "toInteger" => ToInteger(0, 0), "toDecimal" => ToDecimal(0, 0), "toString" => ToString(0, 0),
    "toBoolean" => ToBoolean(0, 0), "toDate" => ToDate(0, 0), "toDateTime" => ToDateTime(0, 0),
    "convertsToInteger" => ConvertsToInteger(0, 0), "convertsToDecimal" => ConvertsToDecimal(0, 0),
    "convertsToString" => ConvertsToString(0, 0), "convertsToBoolean" => ConvertsToBoolean(0, 0),
    "convertsToDate" => ConvertsToDate(0, 0), "convertsToDateTime" => ConvertsToDateTime(0, 0),
    "today" => Today(0, 0), "now" => Now(0, 0),
}

#[derive(Debug, Clone)]
pub(super) struct Ast {
    pub kind: Kind,
    depth: u16,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Lit(Lit),
    Var(Var),
    /// A leading name: a member of `$this`, or a type filter when it names the resource type.
    Ident(Box<str>),
    Member(Box<Ast>, Box<str>),
    Index(Box<Ast>, Box<Ast>),
    Neg(Box<Ast>),
    Bin(Op, Box<Ast>, Box<Ast>),
    /// `is`/`as`/`ofType` with the type name; no receiver means `$this`.
    Type(TypeOp, Option<Box<Ast>>, Box<str>),
    Call {
        recv: Option<Box<Ast>>,
        func: Func,
        args: Vec<Ast>,
        regex: Option<Box<Regex>>,
    },
}

fn mk(kind: Kind, at: usize) -> Result<Ast, ParseError> {
    let d = |a: &Ast| a.depth;
    let below = match &kind {
        Kind::Lit(_) | Kind::Var(_) | Kind::Ident(_) => 0,
        Kind::Member(a, _) | Kind::Neg(a) => a.depth,
        Kind::Index(a, b) | Kind::Bin(_, a, b) => a.depth.max(b.depth),
        Kind::Type(_, r, _) => r.as_deref().map_or(0, d),
        Kind::Call { recv, args, .. } => {
            args.iter().chain(recv.as_deref()).map(d).max().unwrap_or(0)
        }
    };
    if below >= MAX_DEPTH {
        return Err(perr(at, "expression nested too deeply"));
    }
    Ok(Ast {
        kind,
        depth: below + 1,
    })
}

fn perr(offset: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        offset,
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// Backtick-quoted identifier: never a keyword.
    Quoted(String),
    Str(String),
    Int(i64),
    Dec(f64),
    Date(Temporal, bool),
    Time(Temporal),
    Dollar(String),
    Percent(String),
    PercentStr(String),
    Sym(&'static str),
    Eof,
}

#[rustfmt::skip]
const SYMS: &[&str] = &[
    "!=", "!~", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",", "+", "-", "*", "/", "&", "|",
    "=", "~", "<", ">",
];

fn lex(src: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident_end = |mut j: usize| {
        while b
            .get(j)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if src[i..].starts_with("//") {
            i = src[i..].find('\n').map_or(b.len(), |n| i + n);
            continue;
        }
        if src[i..].starts_with("/*") {
            i = src[i + 2..]
                .find("*/")
                .map(|n| i + n + 4)
                .ok_or_else(|| perr(i, "unterminated comment"))?;
            continue;
        }
        let tok = match c {
            b'\'' | b'`' => {
                let (s, end) = string(src, i)?;
                i = end;
                if c == b'`' {
                    Tok::Quoted(s)
                } else {
                    Tok::Str(s)
                }
            }
            b'0'..=b'9' => {
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                    while b.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                    Tok::Dec(
                        src[start..i]
                            .parse()
                            .map_err(|_| perr(start, "bad decimal"))?,
                    )
                } else {
                    Tok::Int(
                        src[start..i]
                            .parse()
                            .map_err(|_| perr(start, "integer literal out of range"))?,
                    )
                }
            }
            b'@' => {
                i += 1;
                // A '.' belongs to the literal only as fractional seconds, not as an invocation.
                let digit_at = |j: usize| b.get(j).is_some_and(u8::is_ascii_digit);
                while b.get(i).is_some_and(|&c| {
                    c.is_ascii_alphanumeric()
                        || b"-:+".contains(&c)
                        || (c == b'.' && digit_at(i + 1))
                }) {
                    i += 1;
                }
                let text = &src[start + 1..i];
                let bad = || perr(start, format!("invalid date/time literal @{text}"));
                if let Some(t) = text.strip_prefix('T') {
                    Tok::Time(Temporal::parse_time(t).ok_or_else(bad)?)
                } else {
                    let (t, has_t) = Temporal::parse_date(text).ok_or_else(bad)?;
                    Tok::Date(t, has_t)
                }
            }
            b'$' | b'%'
                if b.get(i + 1)
                    .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_') =>
            {
                i = ident_end(i + 1);
                let name = src[start + 1..i].to_string();
                if c == b'$' {
                    Tok::Dollar(name)
                } else {
                    Tok::Percent(name)
                }
            }
            b'%' if matches!(b.get(i + 1), Some(b'\'' | b'`')) => {
                let (s, end) = string(src, i + 1)?;
                i = end;
                Tok::PercentStr(s)
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                i = ident_end(i);
                Tok::Ident(src[start..i].to_string())
            }
            _ => {
                let sym = SYMS.iter().find(|s| src[i..].starts_with(**s));
                let sym = sym.ok_or_else(|| {
                    perr(
                        i,
                        format!("unexpected character {:?}", &src[i..].chars().next()),
                    )
                })?;
                i += sym.len();
                Tok::Sym(sym)
            }
        };
        out.push((tok, start));
    }
    out.push((Tok::Eof, b.len()));
    Ok(out)
}

/// A quoted string or identifier starting at `start` (the quote); returns it unescaped and the
/// offset after the closing quote.
fn string(src: &str, start: usize) -> Result<(String, usize), ParseError> {
    let mut it = src[start..].char_indices();
    let quote = it.next().map(|(_, q)| q);
    let mut out = String::new();
    while let Some((off, c)) = it.next() {
        if Some(c) == quote {
            return Ok((out, start + off + 1));
        }
        if c != '\\' {
            out.push(c);
            continue;
        }
        let bad = || perr(start + off, "invalid escape in string");
        out.push(match it.next().ok_or_else(bad)?.1 {
            e @ ('\'' | '"' | '`' | '\\' | '/') => e,
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex: String = (0..4).filter_map(|_| it.next().map(|(_, h)| h)).collect();
                if hex.len() != 4 || !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return Err(bad());
                }
                let code = u32::from_str_radix(&hex, 16).map_err(|_| bad())?;
                char::from_u32(code).ok_or_else(bad)?
            }
            _ => return Err(bad()),
        });
    }
    Err(perr(start, "unterminated string"))
}

struct Parser<'x> {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    nest: usize,
    /// Names the caller will supply as `%name`.
    externals: &'x [&'x str],
}

#[rustfmt::skip]
const CALENDAR_UNITS: &[&str] = &[
    "year", "years", "month", "months", "week", "weeks", "day", "days", "hour", "hours",
    "minute", "minutes", "second", "seconds", "millisecond", "milliseconds",
];

pub(super) fn parse(src: &str, externals: &[&str]) -> Result<Ast, ParseError> {
    let mut p = Parser {
        toks: lex(src)?,
        pos: 0,
        nest: 0,
        externals,
    };
    let ast = p.expr(0)?;
    match p.peek() {
        Tok::Eof => Ok(ast),
        t => Err(perr(
            p.offset(),
            format!("unexpected {t:?} after expression"),
        )),
    }
}

impl Parser<'_> {
    fn peek(&self) -> &Tok {
        self.toks.get(self.pos).map_or(&Tok::Eof, |t| &t.0)
    }

    fn offset(&self) -> usize {
        self.toks
            .get(self.pos)
            .or(self.toks.last())
            .map_or(0, |t| t.1)
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.pos = (self.pos + 1).min(self.toks.len());
        t
    }

    fn eat(&mut self, sym: &str) -> bool {
        let hit = matches!(self.peek(), Tok::Sym(s) if *s == sym);
        self.pos += usize::from(hit);
        hit
    }

    fn expect(&mut self, sym: &str) -> Result<(), ParseError> {
        if self.eat(sym) {
            Ok(())
        } else {
            Err(perr(self.offset(), format!("expected '{sym}'")))
        }
    }

    /// The infix operator at the cursor with its binding power; `None` means `is`/`as`.
    fn infix(&self) -> Option<(Option<Op>, u8)> {
        let word = match self.peek() {
            Tok::Sym(s) => *s,
            Tok::Ident(s) if s == "is" || s == "as" => return Some((None, 8)),
            Tok::Ident(s) => s.as_str(),
            _ => return None,
        };
        INFIX
            .iter()
            .find(|(w, ..)| *w == word)
            .map(|&(_, op, bp)| (Some(op), bp))
    }

    fn expr(&mut self, min_bp: u8) -> Result<Ast, ParseError> {
        self.nest += 1;
        if self.nest > MAX_NEST {
            return Err(perr(self.offset(), "expression nested too deeply"));
        }
        let mut lhs = self.unary()?;
        while let Some((op, bp)) = self.infix().filter(|(_, bp)| *bp >= min_bp) {
            let at = self.offset();
            let word = self.next();
            lhs = match op {
                Some(op) => {
                    let rhs = self.expr(bp + 1)?;
                    mk(Kind::Bin(op, Box::new(lhs), Box::new(rhs)), at)?
                }
                None => {
                    let op = if word == Tok::Ident("is".into()) {
                        TypeOp::Is
                    } else {
                        TypeOp::As
                    };
                    let ty = self.type_name()?;
                    mk(Kind::Type(op, Some(Box::new(lhs)), ty), at)?
                }
            };
        }
        self.nest -= 1;
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Ast, ParseError> {
        let mut negate = Vec::new();
        while let Tok::Sym(s @ ("+" | "-")) = self.peek() {
            if *s == "-" {
                negate.push(self.offset());
            }
            self.pos += 1;
        }
        let mut ast = self.postfix()?;
        for at in negate.into_iter().rev() {
            ast = match ast.kind {
                Kind::Lit(Lit::Int(i)) => match i.checked_neg() {
                    Some(n) => mk(Kind::Lit(Lit::Int(n)), at)?,
                    None => return Err(perr(at, "integer literal out of range")),
                },
                Kind::Lit(Lit::Dec(d)) => mk(Kind::Lit(Lit::Dec(-d)), at)?,
                _ => mk(Kind::Neg(Box::new(ast)), at)?,
            };
        }
        Ok(ast)
    }

    fn postfix(&mut self) -> Result<Ast, ParseError> {
        let mut ast = self.primary()?;
        loop {
            let at = self.offset();
            if self.eat(".") {
                let name = match self.next() {
                    Tok::Ident(n) | Tok::Quoted(n) => n,
                    _ => return Err(perr(at + 1, "expected a name after '.'")),
                };
                ast = if self.eat("(") {
                    self.call(Some(ast), &name, at + 1)?
                } else {
                    mk(Kind::Member(Box::new(ast), name.into()), at)?
                };
            } else if self.eat("[") {
                let index = self.expr(0)?;
                self.expect("]")?;
                ast = mk(Kind::Index(Box::new(ast), Box::new(index)), at)?;
            } else {
                return Ok(ast);
            }
        }
    }

    fn primary(&mut self) -> Result<Ast, ParseError> {
        let at = self.offset();
        let lit = |l| mk(Kind::Lit(l), at);
        match self.next() {
            Tok::Sym("(") => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Sym("{") => {
                self.expect("}")?;
                lit(Lit::Empty)
            }
            Tok::Str(s) => lit(Lit::Str(s.into())),
            Tok::Int(n) => self.maybe_quantity(n as f64, Lit::Int(n), at),
            Tok::Dec(d) => self.maybe_quantity(d, Lit::Dec(d), at),
            Tok::Date(t, true) => lit(Lit::DateTime(t)),
            Tok::Date(t, false) => lit(Lit::Date(t)),
            Tok::Time(t) => lit(Lit::Time(t)),
            Tok::PercentStr(s) => lit(Lit::Str(s.into())),
            Tok::Dollar(v) => mk(
                Kind::Var(match v.as_str() {
                    "this" => Var::This,
                    "index" => Var::Index,
                    _ => return Err(perr(at, format!("unsupported variable ${v}"))),
                }),
                at,
            ),
            Tok::Percent(v) => mk(
                match v.as_str() {
                    "resource" => Kind::Var(Var::Resource),
                    "rootResource" => Kind::Var(Var::Root),
                    "context" => Kind::Var(Var::Context),
                    "ucum" => Kind::Lit(Lit::Static("http://unitsofmeasure.org")),
                    "sct" => Kind::Lit(Lit::Static("http://snomed.info/sct")),
                    "loinc" => Kind::Lit(Lit::Static("http://loinc.org")),
                    name if self.externals.contains(&name) => Kind::Var(Var::External(name.into())),
                    _ => return Err(perr(at, format!("unknown environment variable %{v}"))),
                },
                at,
            ),
            Tok::Ident(n) if n == "true" || n == "false" => lit(Lit::Bool(n == "true")),
            Tok::Ident(n) if self.eat("(") => self.call(None, &n, at),
            Tok::Ident(n) | Tok::Quoted(n) => mk(Kind::Ident(n.into()), at),
            Tok::Eof => Err(perr(at, "unexpected end of expression")),
            t => Err(perr(at, format!("unexpected {t:?}"))),
        }
    }

    fn maybe_quantity(&mut self, value: f64, plain: Lit, at: usize) -> Result<Ast, ParseError> {
        let unit = match self.peek() {
            Tok::Str(u) => u.clone(),
            Tok::Ident(u) if CALENDAR_UNITS.contains(&u.as_str()) => u.clone(),
            _ => return mk(Kind::Lit(plain), at),
        };
        self.pos += 1;
        mk(Kind::Lit(Lit::Qty(value, unit.into())), at)
    }

    /// A type specifier such as `Period`, `FHIR.Period` or `System.String`.
    fn type_name(&mut self) -> Result<Box<str>, ParseError> {
        let at = self.offset();
        let (Tok::Ident(mut name) | Tok::Quoted(mut name)) = self.next() else {
            return Err(perr(at, "expected a type name"));
        };
        if self.eat(".") {
            let (Tok::Ident(inner) | Tok::Quoted(inner)) = self.next() else {
                return Err(perr(self.offset(), "expected a type name after '.'"));
            };
            name = format!("{name}.{inner}");
        }
        Ok(name.into())
    }

    /// A function call whose `(` has been consumed.
    fn call(&mut self, recv: Option<Ast>, name: &str, at: usize) -> Result<Ast, ParseError> {
        let recv = recv.map(Box::new);
        let type_op = match name {
            "is" => Some(TypeOp::Is),
            "as" => Some(TypeOp::As),
            "ofType" => Some(TypeOp::OfType),
            _ => None,
        };
        if let Some(op) = type_op {
            let ty = self.type_name()?;
            self.expect(")")?;
            return mk(Kind::Type(op, recv, ty), at);
        }
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.expr(0)?);
                if self.eat(")") {
                    break;
                }
                self.expect(",")?;
            }
        }
        let &(_, func, min, max) = FUNCS
            .iter()
            .find(|f| f.0 == name)
            .ok_or_else(|| perr(at, format!("unsupported FHIRPath function {name}()")))?;
        if args.len() < min || args.len() > max {
            return Err(perr(at, format!("wrong number of arguments to {name}()")));
        }
        let regex = match (func, args.first().map(|a| &a.kind)) {
            (Func::Matches, Some(Kind::Lit(Lit::Str(p)))) => Some(Box::new(
                Regex::new(p).map_err(|m| perr(at, format!("matches(): {m}")))?,
            )),
            _ => None,
        };
        mk(
            Kind::Call {
                recv,
                func,
                args,
                regex,
            },
            at,
        )
    }
}

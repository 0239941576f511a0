//! A small regular-expression engine for `matches()`: parses a subset of the Java/XML Schema
//! syntax and runs it as a Pike VM, so matching is linear in the input and never recurses.
//!
//! Supported: `^ $ .`, literals and escaped metacharacters, classes `[a-z0-9_]` / `[^...]`,
//! `\d \D \w \W \s \S`, groups `(...)` / `(?:...)` with `|`, and `* + ? {n} {n,} {n,m}`
//! (a trailing lazy `?` is accepted: it cannot change whether a match exists).

const MAX_PROGRAM: usize = 10_000;
const MAX_REPEAT: u32 = 1_000;
const MAX_GROUP_DEPTH: u32 = 32;

#[derive(Debug, Clone)]
struct Class {
    ranges: Vec<(char, char)>,
    negated: bool,
}

impl Class {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != self.negated
    }
}

#[derive(Debug, Clone)]
enum Inst {
    Char(char),
    Any,
    Class(Box<Class>),
    Split(usize, usize),
    Jmp(usize),
    Bol,
    Eol,
    Match,
}

enum Re {
    Inst(Inst),
    Concat(Vec<Re>),
    Alt(Vec<Re>),
    Repeat(Box<Re>, u32, Option<u32>),
}

/// A compiled pattern; matching is a search (partial match) unless the pattern is anchored.
#[derive(Debug, Clone)]
pub(super) struct Regex {
    prog: Vec<Inst>,
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: u32,
}

const DIGIT: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(c);
        self.pos += usize::from(hit);
        hit
    }

    fn alt(&mut self) -> Result<Re, String> {
        let mut branches = vec![self.concat()?];
        while self.eat('|') {
            branches.push(self.concat()?);
        }
        Ok(if branches.len() == 1 {
            branches.swap_remove(0)
        } else {
            Re::Alt(branches)
        })
    }

    fn concat(&mut self) -> Result<Re, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek().filter(|c| !matches!(c, '|' | ')')) {
            self.pos += 1;
            let atom = match c {
                '(' => {
                    self.depth += 1;
                    if self.depth > MAX_GROUP_DEPTH {
                        return Err("regex groups nested too deeply".into());
                    }
                    if self.eat('?') && !self.eat(':') {
                        return Err("only (?:...) group modifiers are supported".into());
                    }
                    let inner = self.alt()?;
                    if !self.eat(')') {
                        return Err("unclosed group in regex".into());
                    }
                    self.depth -= 1;
                    inner
                }
                '[' => Re::Inst(Inst::Class(Box::new(self.class()?))),
                '.' => Re::Inst(Inst::Any),
                '^' => Re::Inst(Inst::Bol),
                '$' => Re::Inst(Inst::Eol),
                '\\' => Re::Inst(self.escape()?),
                '*' | '+' | '?' | '{' => return Err(format!("nothing to repeat before '{c}'")),
                _ => Re::Inst(Inst::Char(c)),
            };
            items.push(self.quantifier(atom)?);
        }
        Ok(Re::Concat(items))
    }

    fn quantifier(&mut self, atom: Re) -> Result<Re, String> {
        let (min, max) = match self.peek() {
            Some('*') => (0, None),
            Some('+') => (1, None),
            Some('?') => (0, Some(1)),
            Some('{') => {
                self.pos += 1;
                let min = self.number()?;
                let max = if self.eat(',') {
                    if self.peek() == Some('}') {
                        None
                    } else {
                        Some(self.number()?)
                    }
                } else {
                    Some(min)
                };
                if !self.eat('}') || max.is_some_and(|m| m < min) {
                    return Err("malformed {n,m} quantifier in regex".into());
                }
                self.pos -= 1;
                (min, max)
            }
            _ => return Ok(atom),
        };
        self.pos += 1;
        self.eat('?');
        if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
            return Err("possessive or stacked quantifiers are not supported".into());
        }
        Ok(Re::Repeat(Box::new(atom), min, max))
    }

    fn number(&mut self) -> Result<u32, String> {
        let start = self.pos;
        let mut n: u32 = 0;
        while let Some(d) = self.peek().and_then(|c| c.to_digit(10)) {
            n = n.saturating_mul(10).saturating_add(d);
            self.pos += 1;
        }
        if self.pos == start || n > MAX_REPEAT {
            return Err(format!("regex repeat count must be 0..={MAX_REPEAT}"));
        }
        Ok(n)
    }

    /// The escape after a backslash: a shorthand class or a literal metacharacter.
    fn escape(&mut self) -> Result<Inst, String> {
        let c = self.peek().ok_or("trailing backslash in regex")?;
        self.pos += 1;
        let class = |r: &[(char, char)], negated| {
            Inst::Class(Box::new(Class {
                ranges: r.to_vec(),
                negated,
            }))
        };
        Ok(match c {
            'd' | 'D' => class(DIGIT, c == 'D'),
            'w' | 'W' => class(WORD, c == 'W'),
            's' | 'S' => class(SPACE, c == 'S'),
            'n' => Inst::Char('\n'),
            'r' => Inst::Char('\r'),
            't' => Inst::Char('\t'),
            c if c.is_ascii_alphanumeric() => {
                return Err(format!("unsupported regex escape \\{c}"));
            }
            c => Inst::Char(c),
        })
    }

    fn class(&mut self) -> Result<Class, String> {
        let negated = self.eat('^');
        let mut ranges = Vec::new();
        let mut first = true;
        loop {
            let c = self.peek().ok_or("unclosed character class in regex")?;
            self.pos += 1;
            if c == ']' && !first {
                return Ok(Class { ranges, negated });
            }
            first = false;
            let lo = if c == '\\' {
                match self.escape()? {
                    Inst::Char(c) => c,
                    Inst::Class(k) if !k.negated => {
                        ranges.extend_from_slice(&k.ranges);
                        continue;
                    }
                    _ => return Err("negated shorthand inside a class is not supported".into()),
                }
            } else {
                c
            };
            let hi = match (self.peek(), self.chars.get(self.pos + 1)) {
                (Some('-'), Some(&h)) if h != ']' && h != '\\' => {
                    self.pos += 2;
                    h
                }
                _ => lo,
            };
            if hi < lo {
                return Err("reversed range in regex character class".into());
            }
            ranges.push((lo, hi));
        }
    }
}

fn emit(re: &Re, prog: &mut Vec<Inst>) -> Result<(), String> {
    if prog.len() > MAX_PROGRAM {
        return Err("regex too large".into());
    }
    match re {
        Re::Inst(i) => prog.push(i.clone()),
        Re::Concat(items) => items.iter().try_for_each(|r| emit(r, prog))?,
        Re::Alt(branches) => {
            let mut exits = Vec::new();
            for (n, b) in branches.iter().enumerate() {
                let split = prog.len();
                let last = n + 1 == branches.len();
                if !last {
                    prog.push(Inst::Split(split + 1, 0));
                }
                emit(b, prog)?;
                if !last {
                    exits.push(prog.len());
                    prog.push(Inst::Jmp(0));
                    let next = prog.len();
                    prog[split] = Inst::Split(split + 1, next);
                }
            }
            let end = prog.len();
            for e in exits {
                prog[e] = Inst::Jmp(end);
            }
        }
        Re::Repeat(r, min, max) => {
            for _ in 0..*min {
                emit(r, prog)?;
            }
            match max {
                None => {
                    let top = prog.len();
                    prog.push(Inst::Split(top + 1, 0));
                    emit(r, prog)?;
                    prog.push(Inst::Jmp(top));
                    let end = prog.len();
                    prog[top] = Inst::Split(top + 1, end);
                }
                Some(max) => {
                    let mut splits = Vec::new();
                    for _ in *min..*max {
                        splits.push(prog.len());
                        prog.push(Inst::Split(prog.len() + 1, 0));
                        emit(r, prog)?;
                    }
                    let end = prog.len();
                    for s in splits {
                        prog[s] = Inst::Split(s + 1, end);
                    }
                }
            }
        }
    }
    Ok(())
}

/// Pike-VM scratch space, one allocation per match: `seen[pc] == generation` marks a pc
/// already visited at this position; `cur`/`next` are thread lists; `stack` drives the closure.
/// Each pc is expanded once per position and pushes at most two successors, so a stack of
/// `2n + 1` suffices.
struct Scratch<'b> {
    seen: &'b mut [usize],
    cur: &'b mut [usize],
    next: &'b mut [usize],
    stack: &'b mut [usize],
    generation: usize,
    cur_len: usize,
    next_len: usize,
}

impl Regex {
    pub(super) fn new(pattern: &str) -> Result<Regex, String> {
        let mut p = Parser {
            chars: pattern.chars().collect(),
            pos: 0,
            depth: 0,
        };
        let re = p.alt()?;
        if p.pos != p.chars.len() {
            return Err("unbalanced ')' in regex".into());
        }
        let mut prog = Vec::new();
        emit(&re, &mut prog)?;
        prog.push(Inst::Match);
        if prog.len() > MAX_PROGRAM {
            return Err("regex too large".into());
        }
        Ok(Regex { prog })
    }

    /// Adds the threads reachable from `pc` without consuming input to `cur`; true when `Match`
    /// is reachable.
    fn closure(&self, t: &mut Scratch, pc: usize, bol: bool, eol: bool) -> bool {
        let mut sp = 1;
        t.stack[0] = pc;
        while sp > 0 {
            sp -= 1;
            let pc = t.stack[sp];
            if t.seen[pc] == t.generation {
                continue;
            }
            t.seen[pc] = t.generation;
            let mut push = |to: usize| {
                t.stack[sp] = to;
                sp += 1;
            };
            match self.prog[pc] {
                Inst::Match => return true,
                Inst::Jmp(to) => push(to),
                Inst::Split(a, b) => {
                    push(b);
                    push(a);
                }
                Inst::Bol if bol => push(pc + 1),
                Inst::Eol if eol => push(pc + 1),
                Inst::Bol | Inst::Eol => {}
                _ => {
                    t.cur[t.cur_len] = pc;
                    t.cur_len += 1;
                }
            }
        }
        false
    }

    pub(super) fn is_match(&self, text: &str) -> bool {
        let n = self.prog.len();
        let mut buf = vec![0usize; 5 * n + 1];
        let (seen, rest) = buf.split_at_mut(n);
        let (cur, rest) = rest.split_at_mut(n);
        let (next, stack) = rest.split_at_mut(n);
        let mut t = Scratch {
            seen,
            cur,
            next,
            stack,
            generation: 0,
            cur_len: 0,
            next_len: 0,
        };
        let anchored = matches!(self.prog.first(), Some(Inst::Bol));
        let mut chars = text.chars();
        let mut next_char = chars.next();
        let mut at_start = true;
        loop {
            t.generation += 1;
            t.cur_len = 0;
            let eol = next_char.is_none();
            for i in 0..std::mem::take(&mut t.next_len) {
                let pc = t.next[i];
                if self.closure(&mut t, pc, at_start, eol) {
                    return true;
                }
            }
            if (at_start || !anchored) && self.closure(&mut t, 0, at_start, eol) {
                return true;
            }
            let Some(c) = next_char else { return false };
            if t.cur_len == 0 && anchored {
                return false;
            }
            for i in 0..t.cur_len {
                let pc = t.cur[i];
                let hit = match &self.prog[pc] {
                    Inst::Char(x) => *x == c,
                    Inst::Any => c != '\n' && c != '\r',
                    Inst::Class(k) => k.matches(c),
                    _ => false,
                };
                if hit {
                    t.next[t.next_len] = pc + 1;
                    t.next_len += 1;
                }
            }
            next_char = chars.next();
            at_start = false;
        }
    }
}

//! MLLP framing and HL7 acknowledgements.
//!
//! [`Framer`] and [`frame`] implement the Minimal Lower Layer Protocol
//! (HL7 v2.5 Appendix C.4): a message travels as `0x0B`, the message bytes,
//! then `0x1C 0x0D`. [`ack`] builds the original-mode acknowledgement
//! (HL7 v2.5 chapter 2, §2.9) with MSH, MSA and the v2.5 ERR segment.
//!
//! Memory held by a [`Framer`] is bounded by `max_frame` plus a 256-byte
//! garbage sample and an oversized frame's 1 KiB first line, whatever the
//! peer sends; a frame's own size never matters.

use super::condition::Condition;
use super::er7::{Delimiters, Field, Location, Message, is_location_segment};
use super::escape::{escape, unescape};
use memchr::memchr2;

const START: u8 = 0x0B;
const END: u8 = 0x1C;
const CR: u8 = 0x0D;
const LF: u8 = 0x0A;
/// Bytes of a garbage run kept for reporting.
const GARBAGE_KEEP: usize = 256;
/// Bytes of an oversized frame's first line kept for its answer.
const HEAD_KEEP: usize = 1024;

/// What [`Framer::push`] recognised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete frame's content (may be empty).
    Message(Vec<u8>),
    /// A frame longer than `max_frame`; `discarded` counts its content
    /// bytes, and `head` keeps its first line (at most 1 KiB: its MSH, for
    /// an answer that names the message).
    TooLarge { discarded: usize, head: Vec<u8> },
    /// Bytes outside any frame: at most the first 256 bytes of a run.
    Garbage(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames.
    Idle,
    /// After a start block.
    Body,
    /// Right after an end block `0x1C`, whose frame is already out: a
    /// `0x0D` here completes the trailer and is dropped.
    End,
}

/// A frame past the limit: counted, and its first line kept.
#[derive(Debug)]
struct Oversized {
    /// Content bytes so far.
    discarded: usize,
    /// The first line, up to its end or [`HEAD_KEEP`] bytes.
    head: Vec<u8>,
    /// `head` is whole: its line ended, or it is [`HEAD_KEEP`] long.
    head_done: bool,
}

impl Oversized {
    /// Takes bytes of the first line from `bytes`, the frame's next.
    fn grow_head(&mut self, bytes: &[u8]) {
        if self.head_done {
            return;
        }
        let room = HEAD_KEEP - self.head.len();
        let line = bytes
            .iter()
            .position(|&b| b == CR || b == LF)
            .unwrap_or(bytes.len());
        self.head.extend_from_slice(&bytes[..line.min(room)]);
        self.head_done = line < bytes.len() || self.head.len() == HEAD_KEEP;
    }
}

/// Incremental MLLP decoder; feed it bytes as they arrive in any split.
///
/// Leniencies, all chosen so that a sloppy peer still gets its message
/// through and a hostile one cannot grow our memory:
/// - The frame ends at its `0x1C`, not at the `0x0D` after it: a sender that
///   leaves the `0x0D` out and waits for its ACK gets one. A byte after the
///   `0x1C` other than `0x0D` is read as if between frames (so `0x1C 0x0B`
///   starts the next frame).
/// - `0x0B` inside a frame abandons it (reported as `Garbage` starting with
///   its `0x0B`, or `TooLarge` if it was oversized) and starts a new frame.
/// - Padding between frames (CR, LF, space, tab, NUL: a newline after
///   `0x1C 0x0D`, a keep-alive byte) is not garbage unless it follows other
///   garbage in the same run. Each `Garbage` is answered, so padding taken
///   for it would put every later ACK on the connection one message off.
/// - A garbage run (bytes before the next `0x0B`) is reported once: when it
///   reaches 256 bytes, or at the `0x0B` that ends it, whichever comes first.
///   Bytes after the first 256 of a run are counted nowhere, only dropped.
///
/// The frames produced depend only on the byte stream, never on how it was
/// split across `push` calls.
#[derive(Debug)]
pub struct Framer {
    max_frame: usize,
    buf: Vec<u8>,
    state: State,
    /// Set once the current frame exceeded max_frame.
    oversized: Option<Oversized>,
    garbage: Vec<u8>,
    /// The current garbage run has been reported; drop its remaining bytes.
    garbage_reported: bool,
}

impl Framer {
    pub fn new(max_frame: usize) -> Framer {
        Framer {
            max_frame,
            buf: Vec::new(),
            state: State::Idle,
            oversized: None,
            garbage: Vec::new(),
            garbage_reported: false,
        }
    }

    /// Feeds bytes as they arrive; returns the frames they complete, in order.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Some((&b, tail)) = rest.split_first() {
            // Inside a frame, the content up to the next block byte is
            // taken at once.
            if self.state == State::Body {
                let run = memchr2(START, END, rest).unwrap_or(rest.len());
                if run > 0 {
                    let (content, after) = rest.split_at(run);
                    self.contents(content);
                    rest = after;
                    continue;
                }
            }
            self.byte(b, &mut out);
            rest = tail;
        }
        out
    }

    /// A frame has started (`0x0B`) and not yet ended.
    pub fn in_frame(&self) -> bool {
        self.state == State::Body
    }

    /// Content bytes held for the incomplete frame (at most `max_frame`).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn byte(&mut self, b: u8, out: &mut Vec<Frame>) {
        match self.state {
            State::Idle => self.idle(b, out),
            State::Body => match b {
                START => {
                    self.abandon(out);
                    self.start();
                }
                END => self.finish(out),
                _ => self.contents(std::slice::from_ref(&b)),
            },
            State::End => {
                self.state = State::Idle;
                if b != CR {
                    self.idle(b, out);
                }
            }
        }
    }

    fn idle(&mut self, b: u8, out: &mut Vec<Frame>) {
        if b == START {
            if !self.garbage.is_empty() {
                out.push(Frame::Garbage(std::mem::take(&mut self.garbage)));
            }
            self.garbage_reported = false;
            self.start();
            return;
        }
        let run_started = self.garbage_reported || !self.garbage.is_empty();
        if self.garbage_reported || (!run_started && matches!(b, CR | LF | b' ' | b'\t' | 0)) {
            return;
        }
        self.garbage.push(b);
        if self.garbage.len() >= GARBAGE_KEEP {
            out.push(Frame::Garbage(std::mem::take(&mut self.garbage)));
            self.garbage_reported = true;
        }
    }

    fn start(&mut self) {
        self.buf.clear();
        self.oversized = None;
        self.state = State::Body;
    }

    /// Content bytes of the frame: kept up to `max_frame`, then only
    /// counted (the frame is refused whole).
    fn contents(&mut self, run: &[u8]) {
        if let Some(over) = self.oversized.as_mut() {
            over.discarded = over.discarded.saturating_add(run.len());
            over.grow_head(run);
            return;
        }
        let needed = self.buf.len().saturating_add(run.len());
        if needed > self.max_frame {
            // Past the limit: nothing more is kept, only counted, but the
            // first line (whatever the split: from what was kept, then from
            // the bytes that follow).
            let mut over = Oversized {
                discarded: needed,
                head: Vec::new(),
                head_done: false,
            };
            over.grow_head(&std::mem::take(&mut self.buf));
            over.grow_head(run);
            self.oversized = Some(over);
            return;
        }
        if needed > self.buf.capacity() {
            // Grow by doubling but never past max_frame, so the allocation
            // (not just the length) stays within the bound.
            let target = self
                .buf
                .len()
                .saturating_mul(2)
                .max(256)
                .max(needed)
                .min(self.max_frame);
            self.buf
                .reserve_exact(target.saturating_sub(self.buf.len()));
        }
        self.buf.extend_from_slice(run);
    }

    /// A start block arrived inside a frame: the old frame is dropped.
    fn abandon(&mut self, out: &mut Vec<Frame>) {
        out.push(match self.oversized.take() {
            Some(Oversized {
                discarded, head, ..
            }) => Frame::TooLarge { discarded, head },
            None => {
                let mut kept = Vec::with_capacity(GARBAGE_KEEP.min(self.buf.len() + 1));
                kept.push(START);
                kept.extend(self.buf.iter().take(GARBAGE_KEEP - 1));
                Frame::Garbage(kept)
            }
        });
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        out.push(match self.oversized.take() {
            Some(Oversized {
                discarded, head, ..
            }) => Frame::TooLarge { discarded, head },
            None => Frame::Message(std::mem::take(&mut self.buf)),
        });
        self.state = State::End;
    }
}

/// Wraps a message for sending: `0x0B`, message, `0x1C 0x0D`.
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 3);
    out.push(START);
    out.extend_from_slice(message);
    out.extend_from_slice(&[END, CR]);
    out
}

/// MSA-1 acknowledgment code (HL7 table 0008, original mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    /// Application accept.
    AA,
    /// Application error.
    AE,
    /// Application reject.
    AR,
}

impl AckCode {
    fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
        }
    }
}

/// One error reported in an ERR segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckError {
    /// Where, in location syntax (`PID-3[2].1`); becomes ERR-2 and the
    /// location parts of ERR-1.
    pub location: Option<String>,
    /// What kind of error (HL7 table 0357); ERR-3 and ERR-1.4.
    pub condition: Condition,
    /// Human-readable text; ERR-8, and MSA-3 with the other errors'.
    pub text: String,
}

/// How many errors' texts MSA-3 gives before "and N more" in the ACK of a
/// v2.5 message, whose every ERR carries its own text: MSA-3 is a display
/// field, and a message with a bad value in every repetition would
/// otherwise make it as long as the message. (Before v2.5, one ERR carries
/// one text, and MSA-3 gives as many as fit in [`MSA_3_MAX_CHARS`].)
pub const MSA_3_REASONS: usize = 5;

/// The length MSA-3 keeps to before "and N more" in the ACK of a v2.3 or
/// v2.4 message, whose MSA-3 gives every reason that fits (at least one).
pub const MSA_3_MAX_CHARS: usize = 1000;

/// Builds an acknowledgement for `message` (HL7 v2.5 §2.9), segments ended
/// by `\r`:
///
/// - MSH: always the recommended delimiters `|^~\&` (any conformant peer
///   reads MSH-1/MSH-2); MSH-3/4 are the original MSH-5/6 and MSH-5/6 the
///   original MSH-3/4, transcoded component by component so a sender using
///   other delimiters still gets a well-formed ACK; MSH-7 `timestamp`;
///   MSH-9 `ACK^<trigger>^ACK`; MSH-10 `control_id`; MSH-11/12 copied.
/// - MSA: MSA-1 `code`, MSA-2 the original MSH-10, MSA-3 the errors' texts
///   joined by `; ` (a v2.5 "backward compatible" field that v2.3/2.4
///   engines still display), the first [`MSA_3_REASONS`] of them (for a
///   v2.3/2.4 message, as many as fit in [`MSA_3_MAX_CHARS`]) and then how
///   many more the ERR segment(s) give.
/// - ERR, v2.5 layout: ERR-2 `SEG^1^field^rep^comp^sub` from the location
///   (empty if the location does not parse), ERR-3 `code^name^HL70357`,
///   ERR-4 `E`, ERR-8 the text. One ERR per error (the v2.5 ACK's
///   `[{ERR}]`), except for a message of v2.3 or v2.4, whose ACK has one
///   ERR (`[ERR]`): that one gives every error in ERR-1, the field those
///   versions define (ELD, `SEG^1^field^code&name&HL70357`, repeated),
///   and the first error in the v2.5 fields, which the NHS's v2.4
///   profile pre-adopts.
///
/// Without a message (unparseable input) the ACK is minimal: MSA-1 is `AR`
/// whatever `code` says (accepting what we could not read would lose it),
/// MSA-2 is empty, MSH-11 `P` and MSH-12 `2.5` (the version of this ERR).
pub fn ack(
    message: Option<&Message>,
    code: AckCode,
    control_id: &str,
    timestamp: &str,
    errors: &[AckError],
) -> String {
    ack_in_mode(message, code, control_id, timestamp, errors, false)
}

/// [`ack`], and with `accept` a message in enhanced mode (MSH-15 or MSH-16
/// valued, HL7 v2.5 §2.9.3) is answered with the accept acknowledgement:
/// `CA` once committed (held in quarantine is committed too, its reasons in
/// ERR), `CE` when the store failed (send again), `CR` where original mode
/// answers `AR`. The gateway has decided everything when it answers, and
/// sends no application acknowledgement after it; so a message asking for
/// no accept acknowledgement (MSH-15 `NE`) but for an application one gets
/// that instead (`AA`/`AE`/`AR`).
pub fn ack_in_mode(
    message: Option<&Message>,
    code: AckCode,
    control_id: &str,
    timestamp: &str,
    errors: &[AckError],
    accept: bool,
) -> String {
    let d = Delimiters::default();
    let msh = message.and_then(|m| m.segment("MSH"));
    // The sender's MSH field `n`, in the ACK's delimiters, onto `out`.
    let copy = |out: &mut String, n: usize| {
        if let (Some(m), Some(s)) = (message, msh) {
            transcode_into(out, s.field(n), m.delimiters(), &d);
        }
    };
    let mut out = String::with_capacity(192);
    out.push_str("MSH|^~\\&|");
    for n in [5, 6, 3, 4] {
        copy(&mut out, n);
        out.push('|');
    }
    out.push_str(&escape(timestamp, &d));
    out.push_str("||");
    match message.and_then(|m| m.get("MSH-9.2")) {
        Some(trigger) => {
            out.push_str("ACK^");
            out.push_str(&escape(&trigger, &d));
            out.push_str("^ACK");
        }
        None => out.push_str("ACK"),
    }
    out.push('|');
    out.push_str(&escape(control_id, &d));
    out.push('|');
    let code = match message {
        Some(_) => {
            copy(&mut out, 11);
            out.push('|');
            copy(&mut out, 12);
            code
        }
        None => {
            out.push_str("P|2.5");
            AckCode::AR
        }
    };
    out.push('\r');
    out.push_str("MSA|");
    // A sender asking for no accept acknowledgement (MSH-15 `NE`) but for
    // an application one gets that: the gateway's answer is final.
    let mode = |f: &str| {
        message
            .and_then(|m| m.get(f))
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let (accept_mode, application_mode) = (mode("MSH-15"), mode("MSH-16"));
    let enhanced = accept
        && (accept_mode.is_some() || application_mode.is_some())
        && !(accept_mode.as_deref() == Some("NE") && application_mode.is_some_and(|m| m != "NE"));
    out.push_str(match (enhanced, code) {
        (false, code) => code.as_str(),
        (true, AckCode::AA | AckCode::AE) => "CA",
        // Not stored: send again.
        (true, AckCode::AR)
            if errors
                .iter()
                .any(|e| e.condition == Condition::InternalError) =>
        {
            "CE"
        }
        (true, AckCode::AR) => "CR",
    });
    out.push('|');
    copy(&mut out, 10);
    if !errors.is_empty() {
        out.push('|');
        // Before v2.5 an ACK has one ERR, whose text is the first error's:
        // MSA-3 is then the only place for the others' reasons, as many as
        // fit in MSA_3_MAX_CHARS.
        let (reasons, budget) = match message {
            Some(m) if before_2_5(m.version().as_deref()) => (errors.len(), MSA_3_MAX_CHARS),
            _ => (MSA_3_REASONS, usize::MAX),
        };
        let start = out.len();
        let mut shown = 0;
        for e in errors.iter().take(reasons) {
            let text = escape(&e.text, &d);
            if shown > 0 && out.len() - start + 2 + text.len() > budget {
                break;
            }
            if shown > 0 {
                out.push_str("; ");
            }
            out.push_str(&text);
            shown += 1;
        }
        if let Some(more) = errors.len().checked_sub(shown).filter(|&n| n > 0) {
            out.push_str(&format!("; and {more} more (ERR)"));
        }
    }
    out.push('\r');
    if errors.is_empty() {
        return out;
    }
    let err = |out: &mut String, e: &AckError, eld: &str| {
        let location = e
            .location
            .as_deref()
            .map(error_location)
            .unwrap_or_default();
        out.push_str(&format!(
            "ERR|{eld}|{location}|{}^{}^HL70357|E||||{}\r",
            e.condition.code(),
            e.condition.name(),
            escape(&e.text, &d)
        ));
    };
    match message {
        // v2.3 and v2.4: one ERR, whose ERR-1 repeats for every error.
        Some(m) if before_2_5(m.version().as_deref()) => {
            let eld: Vec<String> = errors.iter().map(error_code_and_location).collect();
            err(&mut out, &errors[0], &eld.join("~"));
        }
        _ => {
            for e in errors {
                err(&mut out, e, "");
            }
        }
    }
    out
}

/// ERR-1 as v2.3 and v2.4 give it (ELD): segment ^ sequence ^ field ^ the
/// code as a CE in subcomponents.
fn error_code_and_location(e: &AckError) -> String {
    let location = e
        .location
        .as_deref()
        .map(error_location)
        .unwrap_or_default();
    let mut parts = location.split('^');
    let mut out = String::new();
    for _ in 0..3 {
        out.push_str(parts.next().unwrap_or_default());
        out.push('^');
    }
    out.push_str(&format!(
        "{}&{}&HL70357",
        e.condition.code(),
        e.condition.name()
    ));
    out
}

/// Whether MSH-12 `version` names a version before 2.5 (2.3, 2.3.1, 2.4),
/// whose ACK has at most one ERR. None, or one that does not read as a
/// version, is taken as 2.5, the version of this gateway's own ACKs.
fn before_2_5(version: Option<&str>) -> bool {
    let Some((major, rest)) = version.and_then(|v| v.trim().split_once('.')) else {
        return false;
    };
    let minor = rest.split('.').next().unwrap_or_default();
    match (major.parse::<u32>(), minor.parse::<u32>()) {
        (Ok(major), Ok(minor)) => (major, minor) < (2, 5),
        _ => false,
    }
}

/// ERR-2 (ERL): segment id ^ segment sequence ^ field ^ repetition ^
/// component ^ subcomponent. Trailing parts are left out when the location
/// does not name them; a named component implies repetition 1.
fn error_location(location: &str) -> String {
    let Some(loc) = Location::parse(location) else {
        // A segment alone, as a repeated group's is named (`MRG[2]`).
        let (segment, sequence) = match location.split_once('[') {
            Some((segment, rest)) => (segment, rest.strip_suffix(']').unwrap_or_default()),
            None => (location, "1"),
        };
        if is_location_segment(segment)
            && !sequence.is_empty()
            && sequence.bytes().all(|b| b.is_ascii_digit())
        {
            return format!("{segment}^{sequence}");
        }
        return String::new();
    };
    let mut out = format!("{}^1^{}", loc.segment, loc.field);
    if loc.repetition.is_some() || loc.component.is_some() {
        out.push_str(&format!("^{}", loc.repetition.unwrap_or(1)));
    }
    if let Some(c) = loc.component {
        out.push_str(&format!("^{c}"));
        if let Some(s) = loc.subcomponent {
            out.push_str(&format!("^{s}"));
        }
    }
    out
}

/// Re-encodes one field from the message's delimiters into `to`, keeping its
/// repetition/component/subcomponent structure and explicit nulls.
fn transcode_into(out: &mut String, field: Option<Field<'_>>, from: &Delimiters, to: &Delimiters) {
    let Some(field) = field else {
        return;
    };
    // The same delimiters (nearly every sender's `|^~\&`): the sender's
    // own text is already right, escapes and all.
    if from == to {
        out.push_str(field.raw());
        return;
    }
    for (i, rep) in field.repetitions().enumerate() {
        if i > 0 {
            out.push(to.repetition);
        }
        for (j, comp) in rep.components().enumerate() {
            if j > 0 {
                out.push(to.component);
            }
            for (k, sub) in comp.subcomponents().enumerate() {
                if k > 0 {
                    out.extend(to.subcomponent);
                }
                if sub == "\"\"" {
                    out.push_str(sub);
                } else {
                    out.push_str(&escape(&unescape(sub, from), to));
                }
            }
        }
    }
}

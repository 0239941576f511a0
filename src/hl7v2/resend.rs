//! Is a message under a used MSH-10 that message sent again, or another?
//!
//! A repeat is known by its sender and MSH-10, and changes nothing. But a
//! sender's counter can start again (a PAS restored from a backup, a test
//! system pointed at the live feed), and a *different* message under a used
//! MSH-10, answered `AA` as a repeat, would be dropped without anyone
//! knowing. So the message is compared with the one recorded under its
//! MSH-10: the same, it is a repeat; different, it is answered `AE` (ERR-3
//! 205, "duplicate key identifier", HL7 table 0357) and held in quarantine
//! for someone to look at, and a replay of that entry applies it.
//!
//! The same means the same fields, segment by segment, whatever ends the
//! segments (`\r`, `\n`, `\r\n`: a message sent over MLLP and again over
//! HTTP) and with empty trailing fields, repetitions, components and
//! subcomponents as good as absent; MSH-7 aside, which some engines stamp
//! afresh on each send. The text is compared as sent, escapes and all: an
//! engine that encodes a resend otherwise has it held, not dropped.

use super::er7::{Message, Segment};

/// How the reason for a different message under a used MSH-10 begins.
pub const REUSED: &str = "MSH-10 already used by";

/// How many places a difference names.
const SHOWN: usize = 5;

/// Where `later` differs from `earlier` (`EVN-2, PID-3, PID-5`, `OBX[2]-5`,
/// `NK1 (segment added)`): the first few places, in order, or `None` if it
/// is the same message. Segments are compared in step until their ids part.
pub fn difference(earlier: &Message, later: &Message) -> Option<String> {
    let mut places: Vec<String> = Vec::new();
    let mut before = earlier.segments();
    let mut after = later.segments();
    let mut seen: Vec<&str> = Vec::new();
    while places.len() <= SHOWN {
        let (a, b) = match (before.next(), after.next()) {
            (None, None) => break,
            (Some(a), None) => {
                places.push(format!("{} (segment missing)", name(&a, &seen)));
                break;
            }
            (None, Some(b)) => {
                places.push(format!("{} (segment added)", name(&b, &seen)));
                break;
            }
            (Some(a), Some(b)) => (a, b),
        };
        if a.id() != b.id() {
            places.push(format!(
                "segment {}: {} where it had {}",
                b.index() + 1,
                b.id(),
                a.id()
            ));
            break;
        }
        let named = name(&b, &seen);
        for n in 1..=a.field_count().max(b.field_count()) {
            if b.id() == "MSH" && n == 7 {
                continue;
            }
            if text(earlier, &a, n) != text(later, &b, n) {
                places.push(format!("{named}-{n}"));
            }
        }
        seen.push(b.id());
    }
    let more = places.len() > SHOWN;
    places.truncate(SHOWN);
    let shown = places.join(", ");
    match (shown.is_empty(), more) {
        (true, _) => None,
        (false, true) => Some(format!("{shown} and more")),
        (false, false) => Some(shown),
    }
}

/// The reason for a different message under a used MSH-10: `earlier` names
/// the message that used it (`journal entry 12, received …`, `message 2`),
/// `at` where they differ ([`difference`]).
pub fn reused(earlier: &str, at: &str) -> String {
    format!(
        "{REUSED} {earlier}, which differs from this message at {at}: another message, not a repeat"
    )
}

/// Field `n` of `segment` (of `message`) as sent, without trailing empty
/// repetitions, components or subcomponents; `""` if absent.
fn text<'a>(message: &Message, segment: &Segment<'a>, n: usize) -> &'a str {
    let raw = segment.field(n).map_or("", |f| f.raw());
    // MSH-1 and MSH-2 are the delimiters themselves.
    if segment.id() == "MSH" && n <= 2 {
        return raw;
    }
    let d = message.delimiters();
    raw.trim_end_matches(|c| c == d.component || c == d.repetition || Some(c) == d.subcomponent)
}

/// `PID`, or `OBX[2]` for the second OBX (`seen`: the ids before it).
fn name(segment: &Segment<'_>, seen: &[&str]) -> String {
    let id = segment.id();
    match seen.iter().filter(|s| **s == id).count() {
        0 => id.to_string(),
        n => format!("{id}[{}]", n + 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A01: &str = "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202607141030||ADT^A01|RJZ-1|P|2.4\r\
                       EVN|A01|202607141025\r\
                       PID|1||K1^^^RJZ^MR||OKAFOR^Grace\r\
                       PV1|1|I\r";

    fn at(earlier: &str, later: &str) -> Option<String> {
        difference(
            &Message::parse(earlier).unwrap(),
            &Message::parse(later).unwrap(),
        )
    }

    #[test]
    fn a_resend_is_the_same_message() {
        assert_eq!(at(A01, A01), None);
        // Other segment endings, a trailing empty field, component and
        // repetition, a new MSH-7.
        let resent = A01
            .replace('\r', "\r\n")
            .replace("PV1|1|I", "PV1|1|I||")
            .replace("OKAFOR^Grace", "OKAFOR^Grace^^")
            .replace("K1^^^RJZ^MR", "K1^^^RJZ^MR~")
            .replace("202607141030", "202607141102");
        assert_eq!(at(A01, &resent), None);
        // An empty component inside is not trailing.
        assert_eq!(
            at(A01, &A01.replace("OKAFOR^Grace", "OKAFOR^^Grace")).as_deref(),
            Some("PID-5")
        );
    }

    #[test]
    fn another_message_is_located_at_its_first_difference() {
        assert_eq!(
            at(A01, &A01.replace("OKAFOR", "OKAFORE")).as_deref(),
            Some("PID-5")
        );
        // Every place, up to five.
        assert_eq!(
            at(
                A01,
                &A01.replace("K1^^^RJZ^MR||OKAFOR^Grace", "K2^^^RJZ^MR||ADEYEMI^Ruth")
            )
            .as_deref(),
            Some("PID-3, PID-5")
        );
        let other = "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202607141030||ADT^A08|RJZ-1|P|2.5\r\
                     EVN|A08|202607151025\r\
                     PID|2||K2^^^RJZ^MR||OKAFOR^Grace\r";
        assert_eq!(
            at(A01, other).as_deref(),
            Some("MSH-9, MSH-12, EVN-1, EVN-2, PID-1 and more")
        );
        assert_eq!(
            at(A01, &A01.replace("ADT^A01", "ADT^A08")).as_deref(),
            Some("MSH-9")
        );
        assert_eq!(
            at(A01, &A01.replace("PV1|1|I", "PV1|1|I|AMU")).as_deref(),
            Some("PV1-3")
        );
        assert_eq!(
            at(A01, &format!("{A01}NK1|1|OKAFOR^Ben\r")).as_deref(),
            Some("NK1 (segment added)")
        );
        assert_eq!(
            at(&format!("{A01}PV1|2|O\r"), A01).as_deref(),
            Some("PV1[2] (segment missing)")
        );
        assert_eq!(
            at(&format!("{A01}PV1|2|O\r"), &format!("{A01}PV1|2|E\r")).as_deref(),
            Some("PV1[2]-2")
        );
        assert_eq!(
            at(A01, &A01.replace("EVN|A01", "PD1|")).as_deref(),
            Some("segment 2: PD1 where it had EVN")
        );
        // Other encoding characters are another message's text.
        assert_eq!(
            at(A01, &A01.replace("^~\\&", "^~\\&#")).as_deref(),
            Some("MSH-2")
        );
    }
}

//! What the fuzz target (`fuzz/fuzz_targets/er7.rs`) runs on each input:
//! MLLP framing, ER7 parsing, ACK building, ADT mapping, the state
//! transitions and the dry-run mapper, on arbitrary bytes. It must never
//! panic, hang or grow memory without bound. It checks two properties
//! itself: the ACK the gateway would send back parses (and gives the code
//! of every error the mapping finds), and a file sent
//! twice over ends, in the dry run, as it ended once (repeats change
//! nothing).
//!
//! It lives here, not in the target, so that every build compiles it and a
//! test runs it (the fuzz crate builds only with nightly and `cargo fuzz`,
//! outside CI, and broke unnoticed once when these functions changed).

use std::sync::OnceLock;

use super::adt::{self, AdtContext};
use super::{AckCode, AckError, Frame, Framer, Message, ack, dry_run, state};
use crate::config::DEFAULT_HL7_MAX_BYTES;
use crate::gp::read::utf8_or_windows_1252;
use crate::validate::Validator;

/// Runs the HL7 v2 feed's pure stages on `data`.
pub fn exercise(data: &[u8]) {
    // The listener's default frame limit, so frames are cut where it cuts them.
    let mut framer = Framer::new(DEFAULT_HL7_MAX_BYTES);
    for frame in framer.push(data) {
        if let Frame::Message(m) = frame {
            message(&m);
        }
    }
    message(data);
}

fn validator() -> &'static Validator {
    static VALIDATOR: OnceLock<Validator> = OnceLock::new();
    VALIDATOR.get_or_init(|| Validator::embedded().expect("the embedded profiles load"))
}

fn message(bytes: &[u8]) {
    let text = utf8_or_windows_1252(bytes);
    let cx = AdtContext::default();
    if let Ok(msg) = Message::parse(&text) {
        let read = adt::read(&msg, &cx);
        let errors: Vec<AckError> = match &read {
            Ok(_) => Vec::new(),
            Err(adt::AdtError::Invalid(errors)) => super::ingest::ack_errors(errors),
            Err(adt::AdtError::Unsupported {
                location,
                condition,
                reason,
            }) => vec![AckError {
                location: Some(location.clone()),
                condition: *condition,
                text: reason.clone(),
            }],
        };
        acknowledges(&msg, &errors);
        if let Ok(adt) = read {
            let _ = state::patient_after(None, &state::Times::of(None), &adt);
            if let Some(visit) = &adt.visit {
                let mut kept = state::Kept::of(None);
                let _ = state::encounter_after(None, None, &mut kept, &adt, visit, "Patient/x");
            }
        }
    }
    let once = dry_run::map_messages(&text, &cx, validator());
    resent_changes_nothing(&text, &once, &cx);
}

/// The ACK the gateway would send for `msg` refused for `errors` parses,
/// answers it (MSA-2 its MSH-10), and gives every error's code, in order,
/// whatever the message and the errors' texts hold: in an ERR each
/// (ERR-3), or for v2.3/2.4 in one ERR's repeated ERR-1 (ELD, code in its
/// fourth component) whose ERR-3 is the first error's.
fn acknowledges(msg: &Message, errors: &[AckError]) {
    let reply = ack(Some(msg), AckCode::AE, "X", "20260101000000", errors);
    let parsed = match Message::parse(&reply) {
        Ok(parsed) => parsed,
        Err(e) => panic!("ACK does not parse: {e:?}\nACK: {reply:?}"),
    };
    assert_eq!(parsed.get("MSA-2"), msg.control_id(), "{reply:?}");
    let expected: Vec<String> = errors
        .iter()
        .map(|e| e.condition.code().to_string())
        .collect();
    let raw = |segment: &super::Segment<'_>, n: usize| {
        segment
            .field(n)
            .map(|f| f.raw().to_string())
            .unwrap_or_default()
    };
    let first =
        |text: &str, separator: char| text.split(separator).next().unwrap_or_default().to_string();
    let segments: Vec<_> = parsed.segments_named("ERR").collect();
    let err_3: Vec<String> = segments.iter().map(|s| first(&raw(s, 3), '^')).collect();
    let codes = match segments.as_slice() {
        [one] if !raw(one, 1).is_empty() => {
            assert_eq!(
                err_3,
                expected[..1],
                "ERR-3 is the first error's: {reply:?}"
            );
            raw(one, 1)
                .split('~')
                .map(|eld| first(eld.split('^').nth(3).unwrap_or_default(), '&'))
                .collect()
        }
        _ => err_3,
    };
    assert_eq!(codes, expected, "every error's code: {reply:?}");
}

/// The feed's rule for repeats (same MSH-3, MSH-4 and MSH-10 and the same
/// message: answered as before, nothing changed; another message under a
/// used MSH-10 is held each time it comes), checked on the dry run: `text` sent twice
/// over ends as it ended once, each message of the resend answered as it
/// was. Only where the rule covers every message that changes something
/// (one accepted without an MSH-10 could not be told from a new one; the
/// feed refuses those) and the copies join into twice the messages (bytes
/// before the first message, in one copy or where the two join, would join
/// them differently). A last segment without its end is ended (`\r`)
/// before the second copy, as two sends of the file would have it: joined
/// into the second copy's first line it would be another message. Returns
/// whether it checked.
fn resent_changes_nothing(text: &str, once: &dry_run::DryRun, cx: &AdtContext) -> bool {
    use crate::api::ingest::{before_first_message, split_messages};
    let end = if text.ends_with(['\r', '\n']) {
        ""
    } else {
        "\r"
    };
    let twice = format!("{text}{end}{text}");
    if before_first_message(text.as_bytes()).is_some()
        // (Blanks and a framing byte alone are nothing, but the join can
        // make them bytes that are not a message: `\x0b\t` twice over.)
        || before_first_message(twice.as_bytes()).is_some()
        || split_messages(twice.as_bytes()).len() != 2 * split_messages(text.as_bytes()).len()
        || once
            .messages
            .iter()
            .any(|m| m.control_id.is_empty() && m.ack == "AA")
    {
        return false;
    }
    let again = dry_run::map_messages(&twice, cx, validator());
    let n = once.messages.len();
    assert_eq!(again.messages.len(), 2 * n, "{text:?} sent twice");
    // Each message of the resend is answered as it was the first time.
    for (first, resent) in once.messages.iter().zip(&again.messages[n..]) {
        assert_eq!(
            first.ack, resent.ack,
            "{text:?} sent twice: message {} answered {} then {}",
            first.message, first.ack, resent.ack
        );
    }
    if again.bundle != once.bundle {
        panic!(
            "{text:?} sent twice changed the record:\nonce: {}\ntwice: {}",
            once.bundle, again.bundle
        );
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_the_fixtures_framed_cut_and_joined() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hl7v2");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .expect("fixtures/hl7v2")
            .map(|entry| entry.expect("entry").path())
            .filter(|path| path.extension().is_some_and(|e| e == "hl7"))
            .collect();
        paths.sort();
        assert!(paths.len() >= 12, "only {} fixtures found", paths.len());
        // Every fixture end to end too: one file whose messages meet in the
        // dry run's state (several share a patient).
        let mut all = Vec::new();
        for path in &paths {
            let bytes = std::fs::read(path).expect("fixture");
            exercise(&bytes);
            exercise(&super::super::frame(&bytes));
            // Cut short, as a sender's dropped connection leaves it.
            exercise(&bytes[..bytes.len() / 2]);
            all.extend_from_slice(&bytes);
            if !bytes.ends_with(b"\r") && !bytes.ends_with(b"\n") {
                all.push(b'\r');
            }
        }
        exercise(&all);
        let text = String::from_utf8(all).expect("the fixtures are UTF-8");
        let cx = AdtContext::default();
        let once = dry_run::map_messages(&text, &cx, validator());
        assert!(once.messages.len() > paths.len(), "{}", once.messages.len());
        assert!(resent_changes_nothing(&text, &once, &cx), "checked");
    }

    /// Found by the fuzzer (2026-11-25): a framing byte and a blank are
    /// nothing, but joined twice over the second framing byte stood between
    /// blanks as bytes that are not a message. The copies are now joined
    /// with the first one's last line ended, and both are nothing.
    #[test]
    fn copies_join_on_a_line_end_so_nothing_twice_is_nothing() {
        let text = "\u{b}\t";
        let cx = AdtContext::default();
        let once = dry_run::map_messages(text, &cx, validator());
        assert!(once.messages.is_empty(), "{:?}", once.messages);
        assert!(resent_changes_nothing(text, &once, &cx));
        // What the old join made of it is bytes that are not a message.
        let joined = "\u{b}\t\u{b}\t";
        let once = dry_run::map_messages(joined, &cx, validator());
        assert_eq!(once.messages[0].ack, "AR");
        assert!(!resent_changes_nothing(joined, &once, &cx));
        exercise(text.as_bytes());
    }

    #[test]
    fn a_file_sent_twice_ends_as_it_ended_once() {
        let a01 = "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|202611031940||ADT^A01^ADT_A01|X1|P|2.4\r\
                   EVN|A01|202611031940\r\
                   PID|1||K1^^^RJZ^MR~9990000018^^^NHS^NH||PAGE^Margaret||19380305|F\r\
                   PV1|1|I|W1^^^RJZ30||||||||||||||||V1^^^RJZ^VN|||||||||||||||||||||||||202611031935\r";
        let a02 = a01
            .replace("ADT^A01^ADT_A01|X1", "ADT^A02^ADT_A02|X2")
            .replace("EVN|A01|202611031940", "EVN|A02|202611032000")
            .replace("W1^^^RJZ30", "W2^^^RJZ30");
        let text = format!("{a01}{a02}");
        let cx = AdtContext::default();
        let once = dry_run::map_messages(&text, &cx, validator());
        assert!(
            once.messages.iter().all(|m| m.ack == "AA"),
            "{:?}",
            once.messages
        );
        assert!(resent_changes_nothing(&text, &once, &cx), "checked");
        // The second copy's messages are taken as repeats. (Applied again,
        // these two would also leave the record as it was: the Bundle
        // alone does not show the repeats were recognised.)
        let twice = dry_run::map_messages(&format!("{text}{text}"), &cx, validator());
        assert!(
            twice.messages[2..]
                .iter()
                .all(|m| m.notes.iter().any(|n| n.starts_with("a repeat of message"))),
            "{:?}",
            twice.messages
        );
        // A message without MSH-10 is refused, so it changes nothing either.
        let unnumbered = text.replace("|X2|", "||");
        let once = dry_run::map_messages(&unnumbered, &cx, validator());
        assert_eq!(once.messages[1].ack, "AE");
        assert!(resent_changes_nothing(&unnumbered, &once, &cx));
        // One MSH-10 on two messages (found by the fuzzer): an unsupported
        // event, refused and not recorded, then an A01 under its id. Sent
        // again, the first is refused again, as the feed refuses it (the dry
        // run used to take it for a repeat of the A01 and answer AA).
        let reused = format!("{}{a01}", a01.replace("ADT^A01^", "ADT^Z99^"));
        let acks = |run: &dry_run::DryRun| run.messages.iter().map(|m| m.ack).collect::<Vec<_>>();
        let once = dry_run::map_messages(&reused, &cx, validator());
        assert_eq!(acks(&once), ["AR", "AA"]);
        assert!(resent_changes_nothing(&reused, &once, &cx));
        let twice = dry_run::map_messages(&format!("{reused}{reused}"), &cx, validator());
        assert_eq!(acks(&twice), ["AR", "AA", "AR", "AA"]);
        // Another message under an MSH-10 taken: held (AE), and held again
        // when sent again, while the first stays a repeat.
        let taken = format!("{a01}{}", a02.replace("|X2|", "|X1|"));
        let once = dry_run::map_messages(&taken, &cx, validator());
        assert_eq!(acks(&once), ["AA", "AE"]);
        assert!(resent_changes_nothing(&taken, &once, &cx));
        let twice = dry_run::map_messages(&format!("{taken}{taken}"), &cx, validator());
        assert_eq!(acks(&twice), ["AA", "AE", "AA", "AE"]);
        // Bytes before the first message would join the copies
        // differently: not checked.
        let junk = format!("junk\r{text}");
        let once = dry_run::map_messages(&junk, &cx, validator());
        assert!(!resent_changes_nothing(&junk, &once, &cx), "{junk:?}");
        // A last segment without its end is ended before the second copy,
        // also when that copy starts with a batch header (found by the
        // fuzzer: joined, the header's fields became the last segment's).
        for text in [
            text.trim_end().to_string(),
            format!("FHS|||\r{}", text.trim_end()),
        ] {
            let once = dry_run::map_messages(&text, &cx, validator());
            assert!(resent_changes_nothing(&text, &once, &cx), "{text:?}");
        }
    }
}

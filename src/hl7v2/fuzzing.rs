//! What the fuzz target (`fuzz/fuzz_targets/er7.rs`) runs on each input:
//! MLLP framing, ER7 parsing, ACK building, ADT mapping, the state
//! transitions and the dry-run mapper, on arbitrary bytes. It must never
//! panic, hang or grow memory without bound; the one check it makes itself
//! is that the ACK the gateway would send back parses.
//!
//! It lives here, not in the target, so that every build compiles it and a
//! test runs it (the fuzz crate builds only with nightly and `cargo fuzz`,
//! outside CI, and broke unnoticed once when these functions changed).

use std::sync::OnceLock;

use super::adt::{self, AdtContext};
use super::{AckCode, Frame, Framer, Message, ack, dry_run, state};
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
        let reply = ack(Some(&msg), AckCode::AE, "X", "20260101000000", None);
        if let Err(e) = Message::parse(&reply) {
            panic!("ACK does not parse: {e:?}\nACK: {reply:?}");
        }
        if let Ok(adt) = adt::read(&msg, &cx) {
            let _ = state::patient_after(None, &state::Times::of(None), &adt);
            if let Some(visit) = &adt.visit {
                let mut cancels = state::Cancels::of(None);
                let _ = state::encounter_after(None, None, &mut cancels, &adt, visit, "Patient/x");
            }
        }
    }
    let _ = dry_run::map_messages(&text, &cx, validator());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_on_the_fixtures_framed_and_cut() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hl7v2");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("fixtures/hl7v2") {
            let path = entry.expect("entry").path();
            if path.extension().is_none_or(|e| e != "hl7") {
                continue;
            }
            let bytes = std::fs::read(&path).expect("fixture");
            exercise(&bytes);
            exercise(&super::super::frame(&bytes));
            // Cut short, as a sender's dropped connection leaves it.
            exercise(&bytes[..bytes.len() / 2]);
            seen += 1;
        }
        assert!(seen >= 12, "only {seen} fixtures found");
    }
}

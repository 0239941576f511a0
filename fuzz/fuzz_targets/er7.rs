//! HL7 v2 feed: MLLP framing, ER7 parsing, ACK building, ADT mapping,
//! state transitions and the dry-run mapper, on arbitrary bytes.
//!
//! Must never panic, hang or grow memory without bound.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pathway_gateway::gp::read::utf8_or_windows_1252;
use pathway_gateway::hl7v2::adt::{self, AdtContext};
use pathway_gateway::hl7v2::{AckCode, Frame, Framer, Message, ack, dry_run, state};
use pathway_gateway::validate::Validator;

static VALIDATOR: OnceLock<Validator> = OnceLock::new();

fn validator() -> &'static Validator {
    VALIDATOR.get_or_init(|| Validator::embedded().unwrap())
}

fuzz_target!(|data: &[u8]| {
    // 1. MLLP framing: every complete frame's content, then the raw bytes.
    let mut framer = Framer::new(1 << 20);
    for frame in framer.push(data) {
        if let Frame::Message(m) = frame {
            message(&m);
        }
    }
    message(data);
});

fn message(bytes: &[u8]) {
    // 2. Text and ER7.
    let text = utf8_or_windows_1252(bytes);
    let cx = AdtContext::default();
    if let Ok(msg) = Message::parse(&text) {
        // 3. The ACK we would send back must itself be a parseable message.
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
    // 4. The dry run over the whole text (it splits messages itself).
    let _ = dry_run::map_messages(&text, &cx, validator());
}

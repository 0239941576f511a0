//! HL7 v2 feed: MLLP framing, ER7 parsing, ACK building, ADT mapping,
//! state transitions and the dry-run mapper, on arbitrary bytes
//! (`pathway_gateway::hl7v2::fuzzing`, which the crate's own tests also run).
//!
//! Must never panic, hang or grow memory without bound.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pathway_gateway::hl7v2::fuzzing::exercise(data));

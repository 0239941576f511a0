//! HL7 v2 feed: MLLP framing, ER7 parsing, ACK building, ADT mapping,
//! state transitions and the dry-run mapper, on arbitrary bytes
//! (`pathway_gateway::hl7v2::fuzzing`, which the crate's own tests also run).
//!
//! Must never panic, hang or grow memory without bound; panics itself if the
//! ACK built for a message does not parse, or if the input sent twice over
//! changes the dry run's record (repeats must change nothing).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pathway_gateway::hl7v2::fuzzing::exercise(data));

//! HL7 v2 messaging for the gateway's inbound ADT feed: ER7 ("pipe and hat")
//! parsing, escape sequences, MLLP framing and acknowledgements.
//!
//! - `er7`: [`Message`] and its views ([`Segment`], [`Field`], [`Rep`],
//!   [`Component`]), [`Delimiters`], [`ParseError`] (HL7 v2.5 chapter 2,
//!   §2.5 message framework, §2.6 message construction rules).
//! - `escape`: [`escape`]/[`unescape`] (HL7 v2.5 §2.7).
//! - `mllp`: [`Framer`], [`frame`], [`ack`] (HL7 v2.5 Appendix C.4 MLLP;
//!   §2.9 acknowledgements; MSA and ERR segments).
//! - `condition`: [`Condition`], HL7 table 0357, the code each error's ERR
//!   carries.
//!
//! Versions 2.3 to 2.5 are read the same way (MSH-12 is exposed); what
//! differs is the ACK's ERR layout (`mllp`), and the ADT mapping refuses
//! versions it is not written to (`adt::VERSIONS`). Nothing in this module
//! allocates per byte of input more than a constant, recurses, or rescans
//! input, so hostile input is linear.

pub mod adt;
pub mod client;
pub mod condition;
pub mod datatypes;
pub mod dry_run;
mod er7;
mod escape;
pub mod fuzzing;
pub mod ingest;
pub mod listener;
mod metrics;
mod mllp;
pub mod resend;
pub mod state;

pub use condition::Condition;
pub use er7::{Component, Delimiters, Field, Message, ParseError, Rep, Segment};
pub use escape::{escape, unescape};
pub use mllp::{
    AckCode, AckError, Frame, Framer, MSA_3_MAX_CHARS, MSA_3_REASONS, ack, ack_in_mode, frame,
};

#[cfg(test)]
mod tests;

//! What the ADT feed has answered since start, for `/metrics` (Prometheus
//! text format 0.0.4): messages by transport and acknowledgement code, the
//! errors reported by their HL7 table 0357 code, and how long the answers
//! took. Lock-free: every message on every connection updates them.

use super::condition::Condition;
use super::mllp::AckCode;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the answer-time buckets, in seconds: a durable answer
/// takes milliseconds (the sync of its commit), a slow disk tens of them.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
const TRANSPORTS: [&str; 2] = ["mllp", "http"];
const CODES: [&str; 3] = ["AA", "AE", "AR"];

#[derive(Default)]
pub struct FeedMetrics {
    /// By transport, then code.
    answered: [[AtomicU64; 3]; 2],
    /// By transport: a count per bucket (not cumulative), the sum in
    /// microseconds.
    buckets: [[AtomicU64; BUCKETS.len()]; 2],
    sum_us: [AtomicU64; 2],
    /// Errors reported, by [`Condition::index`].
    errors: [AtomicU64; Condition::ALL.len()],
    /// MLLP connections open now, and accepted since start.
    open: AtomicI64,
    accepted: AtomicU64,
}

/// Which of [`TRANSPORTS`]: MLLP or not.
pub fn transport(mllp: bool) -> usize {
    usize::from(!mllp)
}

impl FeedMetrics {
    /// An answer of `code` over `transport`, `took` after the input came.
    pub fn answered(&self, transport: usize, code: AckCode, took: Duration) {
        let code = match code {
            AckCode::AA => 0,
            AckCode::AE => 1,
            AckCode::AR => 2,
        };
        self.answered[transport][code].fetch_add(1, Ordering::Relaxed);
        let seconds = took.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.buckets[transport][i].fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_us[transport].fetch_add(micros, Ordering::Relaxed);
    }

    /// An error reported in an answer.
    pub fn error(&self, condition: Condition) {
        self.errors[condition.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// An MLLP connection opened (`1`) or closed (`-1`).
    pub fn connections(&self, change: i64) {
        self.open.fetch_add(change, Ordering::Relaxed);
        if change > 0 {
            self.accepted.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP pathway_mllp_connections MLLP connections open now.\n\
             # TYPE pathway_mllp_connections gauge\n\
             pathway_mllp_connections {}\n\
             # HELP pathway_mllp_connections_total MLLP connections accepted since start.\n\
             # TYPE pathway_mllp_connections_total counter\n\
             pathway_mllp_connections_total {}",
            self.open.load(Ordering::Relaxed),
            self.accepted.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP pathway_hl7v2_messages_total HL7 v2 messages (and unreadable input) answered, by transport and acknowledgement code.\n\
             # TYPE pathway_hl7v2_messages_total counter\n",
        );
        for (transport, counts) in TRANSPORTS.iter().zip(&self.answered) {
            for (code, count) in CODES.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "pathway_hl7v2_messages_total{{transport=\"{transport}\",ack=\"{code}\"}} {}",
                    count.load(Ordering::Relaxed)
                );
            }
        }
        // Every code, those not met yet at 0, so that an alert on one
        // (206 or 207: the gateway's own trouble, not the sender's data)
        // has a series from the start.
        out.push_str(
            "# HELP pathway_hl7v2_errors_total Errors reported in HL7 v2 acknowledgements, by their HL7 table 0357 code (ERR-3).\n\
             # TYPE pathway_hl7v2_errors_total counter\n",
        );
        for (condition, count) in Condition::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "pathway_hl7v2_errors_total{{code=\"{}\"}} {}",
                condition.code(),
                count.load(Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP pathway_hl7v2_ack_seconds From a message read to its acknowledgement ready (durable when AA).\n\
             # TYPE pathway_hl7v2_ack_seconds histogram\n",
        );
        for (t, transport) in TRANSPORTS.iter().enumerate() {
            let name = "pathway_hl7v2_ack_seconds";
            let labels = format!("transport=\"{transport}\"");
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(&self.buckets[t]) {
                cumulative += count.load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            // Every answer, those over the last bound too.
            let total: u64 = self.answered[t]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
            let sum = self.sum_us[t].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_every_answer() {
        let m = FeedMetrics::default();
        let mllp = transport(true);
        m.answered(mllp, AckCode::AA, Duration::from_micros(800));
        m.answered(mllp, AckCode::AA, Duration::from_millis(4));
        m.answered(mllp, AckCode::AR, Duration::from_secs(30));
        m.answered(transport(false), AckCode::AE, Duration::from_millis(2));
        m.connections(1);
        m.connections(1);
        m.connections(-1);
        m.error(Condition::TableValueNotFound);
        m.error(Condition::TableValueNotFound);
        m.error(Condition::InternalError);
        let mut out = String::new();
        m.render(&mut out);
        for line in [
            "pathway_hl7v2_messages_total{transport=\"mllp\",ack=\"AA\"} 2",
            "pathway_hl7v2_messages_total{transport=\"mllp\",ack=\"AR\"} 1",
            "pathway_hl7v2_messages_total{transport=\"http\",ack=\"AE\"} 1",
            "pathway_hl7v2_ack_seconds_bucket{transport=\"mllp\",le=\"0.001\"} 1",
            "pathway_hl7v2_ack_seconds_bucket{transport=\"mllp\",le=\"0.0025\"} 1",
            "pathway_hl7v2_ack_seconds_bucket{transport=\"mllp\",le=\"0.005\"} 2",
            "pathway_hl7v2_ack_seconds_bucket{transport=\"mllp\",le=\"10\"} 2",
            "pathway_hl7v2_ack_seconds_bucket{transport=\"mllp\",le=\"+Inf\"} 3",
            "pathway_hl7v2_ack_seconds_sum{transport=\"mllp\"} 30.0048",
            "pathway_hl7v2_ack_seconds_count{transport=\"mllp\"} 3",
            "pathway_hl7v2_ack_seconds_bucket{transport=\"http\",le=\"0.0025\"} 1",
            "pathway_hl7v2_ack_seconds_count{transport=\"http\"} 1",
            "pathway_hl7v2_errors_total{code=\"103\"} 2",
            "pathway_hl7v2_errors_total{code=\"207\"} 1",
            "pathway_hl7v2_errors_total{code=\"101\"} 0",
            "pathway_mllp_connections 1",
            "pathway_mllp_connections_total 2",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} in:\n{out}");
        }
    }
}

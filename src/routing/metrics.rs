//! Routing metrics in the Prometheus text format (version 0.0.4): queue
//! depth, attempts, latency and dead letters per destination, and what the
//! router did.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0,
];

#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    sum_ms: i64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS.len()],
            sum_ms: 0,
            count: 0,
        }
    }
}

impl Histogram {
    pub fn observe_ms(&mut self, ms: i64) {
        let ms = ms.max(0);
        let seconds = ms as f64 / 1000.0;
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i] += 1;
        }
        self.sum_ms += ms;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            self.sum_ms as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// What one destination's deliveries have done since start.
#[derive(Debug, Clone, Default)]
pub struct DestinationCounters {
    pub attempts_delivered: u64,
    pub attempts_failed: u64,
    pub attempts_refused: u64,
    pub dead_letters: u64,
    /// From commit to the first attempt.
    pub first_attempt_delay: Histogram,
    /// From commit to delivered.
    pub delivered_latency: Histogram,
}

/// Open deliveries of one destination now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Due or in backoff.
    pub pending: usize,
    /// Held back: behind an earlier delivery of the patient, or closed.
    pub waiting: usize,
    pub in_flight: usize,
    pub dead: usize,
}

/// The router's counters.
#[derive(Debug, Default)]
pub struct RouterCounters {
    pub versions_routed: AtomicU64,
    pub deliveries_created: AtomicU64,
    pub referrals_triggered: AtomicU64,
    pub rule_errors: AtomicU64,
}

pub fn render(
    out: &mut String,
    router: &RouterCounters,
    destinations: &[(String, QueueDepth, DestinationCounters)],
) {
    let counter = |out: &mut String, name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        out,
        "pathway_routing_versions_total",
        "Resource versions the router has looked at.",
        router.versions_routed.load(Ordering::Relaxed),
    );
    counter(
        out,
        "pathway_routing_deliveries_created_total",
        "Deliveries routing rules created.",
        router.deliveries_created.load(Ordering::Relaxed),
    );
    counter(
        out,
        "pathway_routing_referrals_triggered_total",
        "Pathway referrals triggers created.",
        router.referrals_triggered.load(Ordering::Relaxed),
    );
    counter(
        out,
        "pathway_routing_rule_errors_total",
        "Rule or trigger evaluations that failed (treated as no match).",
        router.rule_errors.load(Ordering::Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP pathway_delivery_queue_depth Open deliveries per destination and state.\n# TYPE pathway_delivery_queue_depth gauge"
    );
    for (name, depth, _) in destinations {
        let name = escape(name);
        for (state, value) in [
            ("pending", depth.pending),
            ("waiting", depth.waiting),
            ("in_flight", depth.in_flight),
            ("dead", depth.dead),
        ] {
            let _ = writeln!(
                out,
                "pathway_delivery_queue_depth{{destination=\"{name}\",state=\"{state}\"}} {value}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP pathway_delivery_attempts_total Delivery attempts per destination and result.\n# TYPE pathway_delivery_attempts_total counter"
    );
    for (name, _, c) in destinations {
        let name = escape(name);
        for (result, value) in [
            ("delivered", c.attempts_delivered),
            ("failed", c.attempts_failed),
            ("refused", c.attempts_refused),
        ] {
            let _ = writeln!(
                out,
                "pathway_delivery_attempts_total{{destination=\"{name}\",result=\"{result}\"}} {value}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP pathway_delivery_dead_letters_total Deliveries that went dead.\n# TYPE pathway_delivery_dead_letters_total counter"
    );
    for (name, _, c) in destinations {
        let _ = writeln!(
            out,
            "pathway_delivery_dead_letters_total{{destination=\"{}\"}} {}",
            escape(name),
            c.dead_letters
        );
    }
    let _ = writeln!(
        out,
        "# HELP pathway_delivery_first_attempt_delay_seconds From commit to the first delivery attempt.\n# TYPE pathway_delivery_first_attempt_delay_seconds histogram"
    );
    for (name, _, c) in destinations {
        let labels = format!("destination=\"{}\"", escape(name));
        c.first_attempt_delay
            .render(out, "pathway_delivery_first_attempt_delay_seconds", &labels);
    }
    let _ = writeln!(
        out,
        "# HELP pathway_delivery_latency_seconds From commit to delivered.\n# TYPE pathway_delivery_latency_seconds histogram"
    );
    for (name, _, c) in destinations {
        let labels = format!("destination=\"{}\"", escape(name));
        c.delivered_latency
            .render(out, "pathway_delivery_latency_seconds", &labels);
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let mut h = Histogram::default();
        h.observe_ms(3);
        h.observe_ms(40);
        h.observe_ms(7_200_000);
        let mut out = String::new();
        h.render(&mut out, "x", "d=\"a\"");
        assert!(out.contains("x_bucket{d=\"a\",le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{d=\"a\",le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{d=\"a\",le=\"3600\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{d=\"a\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_sum{d=\"a\"} 7200.043\n"), "{out}");
        assert!(out.contains("x_count{d=\"a\"} 3\n"), "{out}");
    }
}

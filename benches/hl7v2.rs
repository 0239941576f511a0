//! The HL7 v2 ADT feed, end to end and in parts.
//!
//! - In process, per message: reading the bytes (UTF-8 check and a split
//!   into segments and fields, the least any reader must do), ER7 parsing,
//!   and parse + map (message → Patient and Encounter JSON, as applied to an
//!   empty record), with the ratio of each to reading.
//! - End to end: the real `pathway-gateway` binary on a fresh store; 16 MLLP
//!   connections each send ADT messages one at a time (the ACK awaited
//!   before the next, as engines do), every message journaled, mapped,
//!   validated and stored before its ACK. The stream per visit is A04 (new
//!   patient and encounter), A08 (update), A03 (discharge). Reports
//!   messages/s, ACK latency percentiles and the gateway's peak RSS.
//! - The machine, before and after the end-to-end run: a dependent load over
//!   64 MiB (memory latency) and a round trip between two threads over a
//!   socket pair (wake-up latency), the two costs that the slow spells of
//!   this shared VM were seen to inflate while a compute loop was not; so
//!   that each run's throughput can be read beside the machine it ran on.
//!
//! `cargo bench --bench hl7v2 [-- --messages 1500]` (per connection)

/// The gateway binary's allocator, so that in-process figures match it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod support;

use pathway_gateway::hl7v2::Message;
use pathway_gateway::hl7v2::adt::{AdtContext, read};
use pathway_gateway::hl7v2::client::MllpClient;
use pathway_gateway::hl7v2::state::{Kept, Times, encounter_after, patient_after};
use std::hint::black_box;
use std::time::{Duration, Instant};
use support::{cpu_seconds, nhs_number, rss_kib, spawn_gateway_mllp, thread_cpu_seconds};

const CONNECTIONS: usize = 16;

/// A segment with its fields at their HL7 numbers.
fn segment(id: &str, fields: &[(usize, &str)]) -> String {
    let last = fields.iter().map(|(n, _)| *n).max().unwrap_or(0);
    let mut out = id.to_string();
    for n in 1..=last {
        out.push('|');
        if let Some((_, value)) = fields.iter().find(|(k, _)| *k == n) {
            out.push_str(value);
        }
    }
    out.push('\r');
    out
}

/// One message of visit `v`: 0 = A04 (ED arrival), 1 = A08, 2 = A03.
fn message(v: usize, step: usize) -> String {
    let (event, when, end, disposition) = match step {
        0 => ("A04", "202611031940", "", ""),
        1 => ("A08", "202611031955", "", ""),
        _ => ("A03", "202611032245", "202611032240", "19"),
    };
    let ids = format!("K{v}^^^RJZ^MR~{}^^^NHS^NH", nhs_number(v));
    let visit = format!("E{v}^^^RJZ^VN");
    let mut m = format!(
        "MSH|^~\\&|PAS|RJZ|PATHWAY|ONEBROMLEY|{when}||ADT^{event}^ADT_A01|B{v}-{step}|P|2.4|||AL|NE|GBR\r"
    );
    m.push_str(&segment("EVN", &[(1, event), (2, when)]));
    m.push_str(&segment(
        "PID",
        &[
            (1, "1"),
            (3, &ids),
            (5, "PAGE^Margaret^Ann^^MRS^^L"),
            (7, "19380305"),
            (8, "F"),
            (11, "12 Station Road^Flat 2^Bromley^Kent^BR1 3PT^GBR^H"),
            (13, "01689 123456^PRN^PH"),
            (32, "NSTS01"),
        ],
    ));
    m.push_str(&segment(
        "PD1",
        &[
            (3, "BROMLEY COMMON PRACTICE^^G84001"),
            (4, "G1234567^SMITH^JOHN^^^DR"),
        ],
    ));
    m.push_str(&segment(
        "PV1",
        &[
            (1, "1"),
            (2, "E"),
            (3, "ED^^MAJORS 4^RJZ30"),
            (4, "A"),
            (14, "19"),
            (19, &visit),
            (36, disposition),
            (44, "202611031935"),
            (45, end),
        ],
    ));
    m
}

/// The least a reader must do with the bytes: check UTF-8, split segments
/// and fields.
fn read_bytes(bytes: &[u8]) -> usize {
    let text = std::str::from_utf8(bytes).unwrap_or_default();
    text.split('\r').map(|s| s.split('|').count()).sum()
}

fn per_message(label: &str, messages: &[String], f: impl Fn(&str) -> usize) -> f64 {
    let rounds = 20;
    let started = Instant::now();
    let mut sink = 0;
    for _ in 0..rounds {
        for m in messages {
            sink += f(black_box(m));
        }
    }
    black_box(sink);
    let ns = started.elapsed().as_nanos() as f64 / (rounds * messages.len()) as f64;
    println!("{label}: {:.2} µs/message", ns / 1000.0);
    ns
}

/// Nanoseconds per load of a chain of dependent loads through 64 MiB, one
/// per cache line in a random single cycle (Sattolo's shuffle), so that
/// neither the caches nor the prefetcher hide memory's latency.
fn memory_latency_ns() -> f64 {
    const LINES: usize = (64 << 20) / 64;
    const STEPS: usize = 4_000_000;
    let mut next: Vec<usize> = (0..LINES).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for i in (1..LINES).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let j = (state % i as u64) as usize;
        next.swap(i, j);
    }
    // One `usize` per 64-byte line: line `k` holds the line after it.
    let mut lines = vec![0_usize; LINES * 8];
    for k in 0..LINES {
        lines[k * 8] = next[k] * 8;
    }
    drop(next);
    let mut at = 0;
    for _ in 0..LINES {
        at = lines[at];
    }
    let started = Instant::now();
    for _ in 0..STEPS {
        at = black_box(lines[at]);
    }
    let ns = started.elapsed().as_nanos() as f64 / STEPS as f64;
    black_box(at);
    ns
}

/// Microseconds per round trip of one byte between two threads over a Unix
/// socket pair: two wake-ups of a blocked thread each round.
fn wake_up_round_trip_us() -> f64 {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    const ROUNDS: usize = 20_000;
    let (mut here, mut there) = UnixStream::pair().expect("socket pair");
    let echo = std::thread::spawn(move || {
        let mut byte = [0_u8; 1];
        while there.read_exact(&mut byte).is_ok() {
            if there.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut byte = [0_u8; 1];
    let started = Instant::now();
    for _ in 0..ROUNDS {
        here.write_all(&byte).expect("ping");
        here.read_exact(&mut byte).expect("pong");
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64;
    drop(here);
    let _ = echo.join();
    us
}

fn machine(when: &str) {
    println!(
        "machine {when}: dependent load over 64 MiB {:.0} ns, thread round trip {:.1} µs",
        memory_latency_ns(),
        wake_up_round_trip_us()
    );
}

fn in_process() {
    let messages: Vec<String> = (0..3000).map(|i| message(i / 3, i % 3)).collect();
    let bytes = messages.iter().map(String::len).sum::<usize>() / messages.len();
    println!(
        "in process, {} messages of {bytes} bytes on average",
        messages.len()
    );
    let cx = AdtContext::default();
    for m in &messages[..3] {
        let parsed = Message::parse(m).expect("bench message parses");
        if let Err(err) = read(&parsed, &cx) {
            panic!("bench message does not map: {err:?}\n{m}");
        }
    }
    let read_ns = per_message("read (UTF-8 + split)", &messages, |m| {
        read_bytes(m.as_bytes())
    });
    let parse_ns = per_message("ER7 parse", &messages, |m| {
        Message::parse(m).map_or(0, |m| m.segments().count())
    });
    let map_ns = per_message("parse + map", &messages, |m| {
        let Ok(message) = Message::parse(m) else {
            return 0;
        };
        let Ok(adt) = read(&message, &cx) else {
            return 0;
        };
        let (patient, _) = patient_after(None, &Times::default(), &adt);
        let encounter = adt
            .visit
            .as_ref()
            .map(|v| encounter_after(None, None, &mut Kept::default(), &adt, v, "Patient/x"));
        patient.as_object().map_or(0, |o| o.len()) + usize::from(encounter.is_some())
    });
    println!(
        "ratio to reading: parse {:.1}x, parse + map {:.1}x",
        parse_ns / read_ns,
        map_ns / read_ns
    );
}

fn main() {
    let mut per_connection = 1500;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--messages" {
            per_connection = args.next().and_then(|v| v.parse().ok()).unwrap_or(1500);
        }
    }
    in_process();
    machine("before");

    let dir = tempfile::tempdir().expect("temp dir");
    let (mut gateway, _base, mllp) = spawn_gateway_mllp(&dir.path().join("data"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pid = gateway.id();
    let (elapsed, mut latencies, refused, cpu) = runtime.block_on(async {
        // Warm up on other visits, then measure.
        stream(&mllp, 20_000_000, 60).await;
        let cpu_before = cpu_seconds(pid);
        let writer_before = thread_cpu_seconds(pid, "store-writer");
        let client_before = cpu_seconds(std::process::id());
        let started = Instant::now();
        let (latencies, refused) = stream(&mllp, 0, per_connection).await;
        let cpu = (
            cpu_seconds(pid) - cpu_before,
            thread_cpu_seconds(pid, "store-writer") - writer_before,
            cpu_seconds(std::process::id()) - client_before,
        );
        (started.elapsed(), latencies, refused, cpu)
    });
    let (cpu, writer_cpu, client_cpu) = cpu;
    let (hwm, rss) = rss_kib(gateway.id());
    let _ = gateway.kill();
    let _ = gateway.wait();
    latencies.sort_unstable();
    let total = latencies.len();
    let pct = |p: f64| {
        latencies
            .get(((total as f64 * p) as usize).min(total.saturating_sub(1)))
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "end to end over MLLP, {CONNECTIONS} connections: {total} messages in {:.2} s = {:.0} messages/s; \
         ACK p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {refused} not AA; \
         gateway CPU {:.0} µs/message ({:.0}% of 2 cores), of which the store writer {:.0} µs; \
         the client {:.0} µs/message; RSS {:.1} MiB (peak {:.1} MiB)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        pct(0.999),
        pct(1.0),
        cpu * 1e6 / total as f64,
        cpu / elapsed.as_secs_f64() * 50.0,
        writer_cpu * 1e6 / total as f64,
        client_cpu * 1e6 / total as f64,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
    );
    machine("after");
}

/// 16 connections, each sending `per_connection` messages one at a time
/// (visits numbered from `first`); the ACK latencies and how many were not AA.
async fn stream(mllp: &str, first: usize, per_connection: usize) -> (Vec<Duration>, usize) {
    let mut tasks = Vec::new();
    for conn in 0..CONNECTIONS {
        let mllp = mllp.to_string();
        tasks.push(tokio::spawn(async move {
            let mut client = MllpClient::connect(mllp.as_str(), Duration::from_secs(30))
                .await
                .expect("MLLP connect");
            let mut latencies = Vec::with_capacity(per_connection);
            let mut refused = 0;
            for i in 0..per_connection {
                let visit = first + conn * 1_000_000 + i / 3;
                let m = message(visit, i % 3);
                let sent = Instant::now();
                let ack = client.send(m.as_bytes()).await.expect("ACK");
                latencies.push(sent.elapsed());
                if !ack.windows(7).any(|w| w == b"MSA|AA|") {
                    refused += 1;
                }
            }
            (latencies, refused)
        }));
    }
    let mut all = Vec::new();
    let mut refused = 0;
    for task in tasks {
        let (latencies, r) = task.await.expect("connection task");
        all.extend(latencies);
        refused += r;
    }
    (all, refused)
}

//! What the benches that drive the real binary share: starting it on a
//! fresh store, and the NHS numbers they load it with.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `pathway-gateway serve` on a free loopback port with its store in
/// `data`; returns the process and its base URL.
pub fn spawn_gateway(data: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pathway-gateway"))
        .arg("serve")
        .env("PATHWAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_HL7V2__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_STORE__PATH", data)
        .env("PATHWAY_LOG__FORMAT", "json")
        .env("PATHWAY_LOG__LEVEL", "pathway_gateway::server=info,warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("gateway binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = loop {
        let line = lines.next().expect("gateway log").expect("log line");
        let log: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let Some(addr) = log["fields"]["addr"].as_str() {
            break addr.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}"))
}

/// The seeded patient `i`'s NHS number: stem 900000000 + 2i, or the next
/// stem when that one's Modulus 11 check value is 10 (two stems in a row
/// cannot both be: their sums differ by 2). `wrk/search.lua` computes the same.
pub fn nhs_number(i: usize) -> String {
    let stem = 900_000_000 + 2 * i as u64;
    for candidate in [stem, stem + 1] {
        let digits = format!("{candidate:09}");
        let sum: u64 = digits
            .bytes()
            .enumerate()
            .map(|(k, b)| u64::from(b - b'0') * (10 - k as u64))
            .sum();
        let check = (11 - sum % 11) % 11;
        if check < 10 {
            return format!("{digits}{check}");
        }
    }
    unreachable!("one of two consecutive stems has a valid check digit")
}

//! What the benches that drive the real binary share: starting it on a
//! fresh store, and the NHS numbers they load it with.

// Each bench uses only part of this module.
#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts `pathway-gateway serve` on a free loopback port with its store in
/// `data`; returns the process and its base URL.
pub fn spawn_gateway(data: &Path) -> (Child, String) {
    let (child, base, _) = spawn_gateway_mllp(data);
    (child, base)
}

/// As [`spawn_gateway`], also returning the MLLP listener's address.
pub fn spawn_gateway_mllp(data: &Path) -> (Child, String, String) {
    spawn_gateway_with(data, None)
}

/// As [`spawn_gateway_mllp`], with a configuration file. The binary is the
/// one cargo built with the bench, or `BENCH_GATEWAY_BIN` when set (to run
/// the same bench against another build: `benches/alternate.sh`; not
/// `PATHWAY_`-prefixed, as the gateway reads those as its configuration and
/// refuses names it does not know).
pub fn spawn_gateway_with(data: &Path, config: Option<&Path>) -> (Child, String, String) {
    let binary = std::env::var_os("BENCH_GATEWAY_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_pathway-gateway").into());
    let mut command = Command::new(binary);
    command.arg("serve");
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let mut child = command
        .env("PATHWAY_HTTP__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_HL7V2__LISTEN", "127.0.0.1:0")
        .env("PATHWAY_STORE__PATH", data)
        .env("PATHWAY_LOG__FORMAT", "json")
        .env("PATHWAY_LOG__LEVEL", "pathway_gateway::server=info,warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("gateway binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (addr, mllp) = loop {
        let line = lines.next().expect("gateway log").expect("log line");
        let log: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if let Some(addr) = log["fields"]["addr"].as_str() {
            let mllp = log["fields"]["mllp"].as_str().unwrap_or_default();
            break (addr.to_string(), mllp.to_string());
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{addr}"), mllp)
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

/// (VmHWM, VmRSS) of a process, in KiB.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of the process's threads named `name` (e.g. `store-writer`).
pub fn thread_cpu_seconds(pid: u32, name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| stat_cpu(&t.path().join("stat").to_string_lossy()))
        .sum()
}

fn stat_cpu(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

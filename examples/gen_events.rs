//! Writes sample audit events as server log lines to standard output.
//!
//! `cargo run --example gen_events -- COUNT [SEED]`: COUNT events, one every 10 ms
//! ending now, with an ordinary log line after every tenth event.

#[path = "../tests/common/gen.rs"]
mod gen;

use std::io::Write;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let mut g = gen::Gen::new(seed);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for i in 0..count {
        let ms = now - (count - i) * 10;
        writeln!(out, "{}", gen::server_line(&mut g, ms).line).expect("stdout");
        if i % 10 == 9 {
            writeln!(out, "{}", gen::noise_line(&mut g, ms)).expect("stdout");
        }
    }
}

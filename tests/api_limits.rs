//! Connection limits of the API and admin ports over real TCP against the real binary:
//! a request head sent byte by byte and an idle connection (new or kept alive) are
//! closed, and with a low descriptor limit 120 idle connections to the API leave the
//! admin port's /healthz answering (the API's connection cap holds the rest in the
//! listen backlog).

mod api_common;
mod common;

use api_common::*;
use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// How long a test waits for the relay to close a connection before calling it open.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

fn with_admin(h: &Harness, admin: &[&str]) {
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n{}\n",
        admin.join("\n")
    ));
    h.write_config(&text);
}

/// Reads until the peer closes the connection; false if it is still open after
/// [`CLOSE_WITHIN`].
fn closed_by_peer(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(CLOSE_WITHIN)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false
            }
            Err(e) => panic!("reading: {e}"),
        }
    }
}

/// One response read off a kept-alive connection (its status), leaving it open.
fn read_response(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "connection closed mid-head");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    head[9..12].parse().unwrap()
}

#[test]
fn slow_heads_and_idle_connections_are_closed_on_both_ports() {
    let (h, _) = api_harness_with(
        &[],
        &["header_read_timeout = \"1s\"", "idle_timeout = \"2s\""],
    );
    with_admin(
        &h,
        &["header_read_timeout = \"1s\"", "idle_timeout = \"2s\""],
    );
    let relay = h.start();
    let api = api_addr(&relay);
    let admin = admin_addr(&relay);
    let api_path = format!("/v1/organizations/{ORG_A}/audit-logs");
    for (port, addr, path) in [
        ("api", &api, api_path.as_str()),
        ("admin", &admin, "/healthz"),
    ] {
        // A head trickled a byte every 100 ms: closed by the header-read timeout, though
        // bytes keep arriving.
        let mut s = TcpStream::connect(addr).unwrap();
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nX-Padding: {}",
            "p".repeat(200)
        );
        let started = Instant::now();
        let mut cut = false;
        for b in head.bytes() {
            if s.write_all(&[b]).is_err() {
                cut = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if started.elapsed() > CLOSE_WITHIN {
                break;
            }
        }
        assert!(
            cut || closed_by_peer(&mut s),
            "{port}: a trickled head is still open"
        );
        // A connection that sends nothing.
        let mut s = TcpStream::connect(addr).unwrap();
        assert!(
            closed_by_peer(&mut s),
            "{port}: an idle new connection is open"
        );
        // A kept-alive connection after its response.
        let mut s = TcpStream::connect(addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let status = read_response(&mut s);
        assert!(status == 200 || status == 401, "{port}: {status}");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(read_response(&mut s), status, "{port}: keep-alive works");
        assert!(
            closed_by_peer(&mut s),
            "{port}: an idle kept-alive connection is open"
        );
    }
    assert_eq!(http_get(&admin, "/healthz").0, 200);
    relay.terminate();
}

fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn idle_connections_to_the_api_leave_healthz_answering() {
    let (h, _) = api_harness_with(&[], &["max_connections = 64", "idle_timeout = \"5m\""]);
    with_admin(&h, &[]);
    let relay = h.start();
    let api = api_addr(&relay);
    let admin = admin_addr(&relay);
    assert_eq!(http_get(&admin, "/healthz").0, 200);
    // A low descriptor limit, as in a tight pod: room for the API's 64 connections and
    // some spare, not for 120.
    let base = open_descriptors(relay.pid());
    let limit = base + 64 + 24;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", relay.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {out:?}");
    let idle: Vec<TcpStream> = (0..120)
        .map(|_| TcpStream::connect(&api).expect("connect (the backlog takes it)"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        open_descriptors(relay.pid()) <= limit,
        "the relay stays within its descriptors"
    );
    for _ in 0..5 {
        assert_eq!(http_get(&admin, "/healthz").0, 200, "admin answers");
    }
    // A request beyond the cap waits in the backlog, and is served once idle ones go.
    let mut waiting = TcpStream::connect(&api).unwrap();
    write!(
        waiting,
        "GET /v1/organizations/{ORG_A}/audit-logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    )
    .unwrap();
    drop(idle);
    assert_eq!(read_response(&mut waiting), 200);
    assert_eq!(http_get(&admin, "/healthz").0, 200);
    relay.terminate();
}

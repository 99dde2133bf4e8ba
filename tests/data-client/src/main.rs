//! A container workload for kedge's data tests: publishes N messages to the
//! agent's data endpoint with the address and credentials the agent
//! injected (`KEDGE_DATA_URL`, `KEDGE_DATA_USERNAME`, `KEDGE_DATA_PASSWORD`),
//! MQTT 3.1.1 with QoS 2 and a persistent session, one message in flight,
//! as a careful IoT client does: exactly once across crashes of the agent
//! and of itself.
//!
//! `data-client N TOPIC DIR` publishes `{"n":i,"unit":"plaintext-marker"}`
//! for i in 0..N on TOPIC. Message i travels with packet id `i % 65535 + 1`,
//! and `DIR/state` holds where it is (`next released`, written by a rename
//! before each step it commits to): after a restart it sends the message in
//! flight again (the agent recognises the packet id it committed with the
//! message and stores it once), or its PUBREL again once it had sent one
//! (the agent has released the id then, and a PUBLISH would be new).
//! `DIR/allowed`, when present, caps how far it may go for now (the test's
//! gate); it polls it. Connection failures (the agent killed, restarting)
//! are retried every 100 ms. Exits 0 when all are published.
//!
//! Dependency-free: a static binary for the test's local image.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const CLIENT_ID: &str = "data-client";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(n), Some(topic), Some(dir)) = (
        args.get(1).and_then(|n| n.parse::<u64>().ok()),
        args.get(2),
        args.get(3),
    ) else {
        eprintln!("usage: data-client N TOPIC DIR");
        return ExitCode::from(64);
    };
    let env = |name: &str| match std::env::var(name) {
        Ok(v) => v,
        Err(_) => {
            eprintln!("{name} is not set: no data route names this pod");
            std::process::exit(64);
        }
    };
    let address = env("KEDGE_DATA_URL")
        .trim_start_matches("mqtt://")
        .to_string();
    let login = (env("KEDGE_DATA_USERNAME"), env("KEDGE_DATA_PASSWORD"));
    let mut state = State::read(Path::new(dir));
    println!(
        "publishing from {} ({}) of {n} on {topic} to {address}",
        state.next,
        if state.released { "released" } else { "new" }
    );
    let mut connection: Option<TcpStream> = None;
    let mut failures = 0u64;
    while state.next < n {
        if !state.released && state.allowed().is_some_and(|allowed| state.next >= allowed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let stream = match connection.take() {
            Some(s) => s,
            None => match connect(&address, &login) {
                Ok(s) => s,
                Err(e) => {
                    if failures % 50 == 0 {
                        eprintln!("cannot connect to {address}: {e}; retrying");
                    }
                    failures += 1;
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        match step(stream, &mut state, topic) {
            Ok(stream) => {
                connection = Some(stream);
                if state.next % 1000 == 0 {
                    println!("published {}", state.next);
                }
            }
            Err(e) => {
                eprintln!("message {}: {e}; reconnecting", state.next);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    println!("published {n} of {n} on {topic}");
    ExitCode::SUCCESS
}

/// Where the client is, kept in `DIR/state`.
struct State {
    dir: PathBuf,
    /// The message in flight (or the next one).
    next: u64,
    /// Whether its PUBREL was sent: the agent released its packet id.
    released: bool,
}

impl State {
    fn read(dir: &Path) -> State {
        let text = std::fs::read_to_string(dir.join("state")).unwrap_or_default();
        let mut words = text.split_whitespace();
        State {
            dir: dir.to_path_buf(),
            next: words.next().and_then(|n| n.parse().ok()).unwrap_or(0),
            released: words.next() == Some("released"),
        }
    }

    fn write(&mut self, next: u64, released: bool) -> std::io::Result<()> {
        let tmp = self.dir.join("state.tmp");
        let text = format!("{next} {}", if released { "released" } else { "new" });
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.dir.join("state"))?;
        (self.next, self.released) = (next, released);
        Ok(())
    }

    fn allowed(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("allowed"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}

fn packet_id(n: u64) -> u16 {
    (n % 65_535) as u16 + 1
}

/// One message through QoS 2 on `stream`: PUBLISH → PUBREC, then PUBREL →
/// PUBCOMP (or only the latter when its PUBREL went out before).
fn step(mut stream: TcpStream, state: &mut State, topic: &str) -> std::io::Result<TcpStream> {
    let id = packet_id(state.next);
    if !state.released {
        let payload = format!("{{\"n\":{},\"unit\":\"plaintext-marker\"}}", state.next);
        let mut body = Vec::new();
        string(&mut body, topic);
        body.extend_from_slice(&id.to_be_bytes());
        body.extend_from_slice(payload.as_bytes());
        // QoS 2 (0x04); DUP (0x08) is for the broker's information only.
        stream.write_all(&packet(0x34, &body))?;
        expect(&mut stream, 0x50, id, "PUBREC")?;
        state.write(state.next, true)?;
    }
    stream.write_all(&packet(0x62, &id.to_be_bytes()))?;
    expect(&mut stream, 0x70, id, "PUBCOMP")?;
    state.write(state.next + 1, false)?;
    Ok(stream)
}

/// CONNECT with a persistent session (clean session 0) and the login.
fn connect(address: &str, (username, password): &(String, String)) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_nodelay(true)?;
    let mut body = Vec::new();
    string(&mut body, "MQTT");
    body.push(4); // MQTT 3.1.1
    body.push(0x80 | 0x40); // username, password; clean session 0
    body.extend_from_slice(&60u16.to_be_bytes()); // keep alive
    string(&mut body, CLIENT_ID);
    string(&mut body, username);
    string(&mut body, password);
    stream.write_all(&packet(0x10, &body))?;
    let (kind, body) = read_packet(&mut stream)?;
    if kind != 0x20 || body.len() != 2 || body[1] != 0 {
        return Err(std::io::Error::other(format!(
            "refused: CONNACK {kind:#x} {body:?}"
        )));
    }
    Ok(stream)
}

/// Reads a 2-byte packet of `kind` for packet id `id`.
fn expect(stream: &mut TcpStream, kind: u8, id: u16, name: &str) -> std::io::Result<()> {
    let (got, body) = read_packet(stream)?;
    if got & 0xf0 != kind || body != id.to_be_bytes() {
        return Err(std::io::Error::other(format!(
            "expected {name} for {id}, got {got:#x} {body:?}"
        )));
    }
    Ok(())
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn read_packet(stream: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    let kind = byte[0];
    let (mut len, mut shift) = (0usize, 0);
    loop {
        stream.read_exact(&mut byte)?;
        len |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
        if shift > 21 {
            return Err(std::io::Error::other("malformed remaining length"));
        }
    }
    let mut body = vec![0; len];
    stream.read_exact(&mut body)?;
    Ok((kind, body))
}

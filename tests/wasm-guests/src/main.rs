//! Test guest for kedge's integration tests: one WASI binary (built for
//! wasm32-wasip1 as a core module and wasm32-wasip2 as a component) whose first
//! argument picks a behaviour (hello, exit, trap, abort, alloc, spin, ticker, env,
//! write, read, crash-after, and for the component publish, publish-once,
//! publish-batch-once). See
//! `usage()` for the list.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!(
        "usage: guest hello [text..] | exit N | trap | abort | alloc MIB | spin | ticker N MS | env \
         | write FILE TEXT | read FILE | crash-after MS | publish N TOPIC DIR \
         | publish-once N TOPIC DIR | publish-batch-once N BATCH TOPIC DIR \
         | publish-0.1 TOPIC (wasm32-wasip2)"
    );
    ExitCode::from(64)
}

/// Parses argument `i` as a number, or exits with a usage error.
fn num<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    match args.get(i).map(|s| s.parse::<T>()) {
        Some(Ok(n)) => n,
        _ => {
            eprintln!(
                "guest: argument {i} must be a number, got {:?}",
                args.get(i)
            );
            std::process::exit(64);
        }
    }
}

fn flush() {
    let _ = std::io::stdout().flush();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let Some(cmd) = args.get(1) else {
        return usage();
    };
    match cmd.as_str() {
        "hello" => {
            if args.len() > 2 {
                println!("{}", args[2..].join(" "));
            } else {
                println!("hello from kedge guest");
            }
            eprintln!("guest stderr line");
            ExitCode::SUCCESS
        }
        "exit" => {
            let code: i32 = num(&args, 2);
            println!("exiting with {code}");
            flush();
            std::process::exit(code);
        }
        "trap" => {
            println!("about to trap");
            flush();
            trap()
        }
        "abort" => {
            println!("about to abort");
            flush();
            std::process::abort()
        }
        "alloc" => {
            let mib: usize = num(&args, 2);
            let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(mib);
            for i in 0..mib {
                let mut block = vec![0u8; 1 << 20];
                // Touch every 4 KiB page (and write non-zero so it is really used).
                for page in block.chunks_mut(4096) {
                    page[0] = 1;
                }
                blocks.push(std::hint::black_box(block));
                println!("allocated {} MiB", i + 1);
                flush();
            }
            println!("alloc done: {} MiB", std::hint::black_box(&blocks).len());
            ExitCode::SUCCESS
        }
        "spin" => {
            println!("spinning");
            flush();
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "ticker" => {
            let n: u64 = num(&args, 2);
            let ms: u64 = num(&args, 3);
            let mut i: u64 = 1;
            while n == 0 || i <= n {
                println!("tick {i}");
                flush();
                if n == 0 || i < n {
                    std::thread::sleep(Duration::from_millis(ms));
                }
                i += 1;
            }
            ExitCode::SUCCESS
        }
        "env" => {
            let mut vars: Vec<(String, String)> = std::env::vars().collect();
            vars.sort();
            for (k, v) in vars {
                println!("{k}={v}");
            }
            for (i, a) in args.iter().enumerate() {
                println!("arg[{i}]={a}");
            }
            match std::env::current_dir() {
                Ok(dir) => println!("cwd={}", dir.display()),
                Err(e) => println!("cwd error: {e}"),
            }
            ExitCode::SUCCESS
        }
        "write" => {
            let (Some(file), Some(text)) = (args.get(2), args.get(3)) else {
                return usage();
            };
            match std::fs::write(file, text) {
                Ok(()) => {
                    println!("wrote {file}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("write {file}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        "read" => {
            let Some(file) = args.get(2) else {
                return usage();
            };
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("read {file}: {e}");
                    ExitCode::from(2)
                }
            }
        }
        "crash-after" => {
            let ms: u64 = num(&args, 2);
            println!("crashing in {ms} ms");
            flush();
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("crashing now");
            ExitCode::from(1)
        }
        "publish" | "publish-once" => {
            let n: u64 = num(&args, 2);
            let (Some(topic), Some(dir)) = (args.get(3), args.get(4)) else {
                return usage();
            };
            publish(n, topic, std::path::Path::new(dir), cmd == "publish-once")
        }
        "publish-0.1" => publish_v0_1(args.get(2).map_or("", String::as_str)),
        "publish-batch-once" => {
            let (n, batch): (u64, u64) = (num(&args, 2), num(&args, 3));
            let (Some(topic), Some(dir)) = (args.get(4), args.get(5)) else {
                return usage();
            };
            publish_batches(n, batch.max(1), topic, std::path::Path::new(dir))
        }
        _ => usage(),
    }
}

/// Publishes `{"n":i,"unit":"plaintext-marker"}` for i in 0..n on `topic`
/// through the agent's data path (`kedge:data/publish`), one at a time,
/// resuming where an earlier run stopped: `DIR/next` holds how many were
/// acknowledged (written after each `ok`, by a rename), and `DIR/allowed`,
/// when present, how far it may go for now (re-read while it waits).
/// `once`: with `publish-once`, message i's sequence i, so the message in
/// flight when the agent died is not stored twice when sent again.
///
/// Exits 0 when all are published; 3 on a refusal that sending again does
/// not cure (it prints the error), retrying the others (`unavailable`,
/// `storage`) every 100 ms.
#[cfg(target_env = "p2")]
fn publish(n: u64, topic: &str, dir: &std::path::Path, once: bool) -> ExitCode {
    use data::PublishError;
    send_all((n, 1), (topic, ""), dir, |i, _| {
        let payload = reading(i);
        let published = if once {
            data::publish_once(i, topic, payload.as_bytes())
        } else {
            data::publish(topic, payload.as_bytes())
        };
        match published {
            Ok(()) => Sent::Ok,
            Err(e @ (PublishError::Unavailable(_) | PublishError::Storage(_))) => {
                Sent::Retry(format!("publish {i}: {e:?}"))
            }
            Err(e) => Sent::Refused(format!("publish {i}: {e:?}")),
        }
    })
}

/// `publish`'s messages in batches of `batch` (`publish-batch-once`): the
/// batch from message i to i + batch (fixed boundaries, so a batch sent
/// again after a crash is the same batch) with sequence i, all or nothing;
/// `DIR/next` is written after each `ok`. `DIR/allowed` gates the start of
/// a batch (a batch that starts below it is sent whole).
#[cfg(target_env = "p2")]
fn publish_batches(n: u64, batch: u64, topic: &str, dir: &std::path::Path) -> ExitCode {
    use data::{Message, PublishError};
    let how = format!(" in batches of {batch}");
    send_all((n, batch), (topic, &how), dir, |i, end| {
        let messages: Vec<Message> = (i..end)
            .map(|k| Message {
                topic: topic.to_string(),
                payload: reading(k).into_bytes(),
            })
            .collect();
        match data::publish_batch_once(i, &messages) {
            Ok(()) => Sent::Ok,
            Err(e)
                if matches!(
                    e.error,
                    PublishError::Unavailable(_) | PublishError::Storage(_)
                ) =>
            {
                Sent::Retry(format!("publish batch {i}: {e:?}"))
            }
            Err(e) => Sent::Refused(format!(
                "publish batch {i}: message {}: {:?}",
                e.index, e.error
            )),
        }
    })
}

/// Message i of `publish` and `publish_batches`.
#[cfg(target_env = "p2")]
fn reading(i: u64) -> String {
    format!("{{\"n\":{i},\"unit\":\"plaintext-marker\"}}")
}

/// What one send of `send_all` came to.
#[cfg(target_env = "p2")]
enum Sent {
    Ok,
    /// Refused for now (`unavailable`, `storage`): sent again.
    Retry(String),
    /// Refused for good.
    Refused(String),
}

/// Sends messages 0..n on `topic` (`how` says how, when it starts) with
/// `send(i, end)`, `step` at a time (fixed boundaries), resuming from
/// `DIR/next`, starting a step only below `DIR/allowed`, writing
/// `DIR/next` after each `Sent::Ok` and sending again every 100 ms after a
/// `Sent::Retry`. Exits 0 when all are sent, 3 on a `Sent::Refused`
/// (printed), 2 when `DIR/next` cannot be written.
#[cfg(target_env = "p2")]
fn send_all(
    (n, step): (u64, u64),
    (topic, how): (&str, &str),
    dir: &std::path::Path,
    mut send: impl FnMut(u64, u64) -> Sent,
) -> ExitCode {
    let read = |name: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(name))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    };
    let mut i = read("next").unwrap_or(0);
    println!("publishing from {i} of {n} on {topic}{how}");
    flush();
    let mut retrying = false;
    while i < n {
        if read("allowed").is_some_and(|allowed| i >= allowed) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let end = (i + step).min(n);
        match send(i, end) {
            Sent::Ok => {
                retrying = false;
                let before = i;
                i = end;
                let tmp = dir.join("next.tmp");
                if let Err(e) = std::fs::write(&tmp, i.to_string())
                    .and_then(|()| std::fs::rename(&tmp, dir.join("next")))
                {
                    eprintln!("cannot record progress in {}: {e}", dir.display());
                    return ExitCode::from(2);
                }
                if i / 1000 > before / 1000 {
                    println!("published {i}");
                    flush();
                }
            }
            Sent::Retry(why) => {
                if !retrying {
                    eprintln!("{why}; retrying");
                    retrying = true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            Sent::Refused(why) => {
                eprintln!("{why}");
                return ExitCode::from(3);
            }
        }
    }
    println!("published {n} of {n} on {topic}");
    ExitCode::SUCCESS
}

/// One message on `topic` through version 0.1.0 of the interface (what a
/// guest built before 0.2.0 imports): exits 0 on `ok`, 3 on a refusal.
#[cfg(target_env = "p2")]
fn publish_v0_1(topic: &str) -> ExitCode {
    match data_v0_1::publish(topic, b"{\"n\":0,\"via\":\"0.1.0\"}") {
        Ok(()) => {
            println!("published through 0.1.0");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("publish through 0.1.0: {e:?}");
            ExitCode::from(3)
        }
    }
}

#[cfg(not(target_env = "p2"))]
fn publish_v0_1(_: &str) -> ExitCode {
    eprintln!("publish-0.1 needs the wasm32-wasip2 component (kedge:data/publish@0.1.0)");
    ExitCode::from(64)
}

#[cfg(not(target_env = "p2"))]
fn publish_batches(_: u64, _: u64, _: &str, _: &std::path::Path) -> ExitCode {
    eprintln!("publish-batch-once needs the wasm32-wasip2 component (kedge:data/publish)");
    ExitCode::from(64)
}

#[cfg(not(target_env = "p2"))]
fn publish(_: u64, _: &str, _: &std::path::Path, _: bool) -> ExitCode {
    eprintln!("publish needs the wasm32-wasip2 component (kedge:data/publish)");
    ExitCode::from(64)
}

/// The agent's data path (`src/data/wit/publish.wit`).
#[cfg(target_env = "p2")]
mod data {
    wit_bindgen::generate!({
        path: "../../src/data/wit",
        world: "publisher",
    });
    pub use kedge::data::publish::{
        Message, PublishError, publish, publish_batch_once, publish_once,
    };
}

/// Version 0.1.0 of the interface (`src/data/wit-0.1.0`), which the agent
/// still links for guests built against it.
#[cfg(target_env = "p2")]
mod data_v0_1 {
    wit_bindgen::generate!({
        path: "../../src/data/wit-0.1.0",
        world: "publisher",
    });
    pub use kedge::data::publish::publish;
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    std::process::abort()
}

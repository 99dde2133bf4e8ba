//! Test guest for kedge's integration tests: one WASI binary (built for
//! wasm32-wasip1 as a core module and wasm32-wasip2 as a component) whose first
//! argument picks a behaviour (hello, exit, trap, abort, alloc, spin, ticker, env,
//! write, read, crash-after). See `usage()` for the list.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

fn usage() -> ExitCode {
    eprintln!(
        "usage: guest hello [text..] | exit N | trap | abort | alloc MIB | spin | ticker N MS | env \
         | write FILE TEXT | read FILE | crash-after MS"
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
        _ => usage(),
    }
}

#[cfg(target_arch = "wasm32")]
fn trap() -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(not(target_arch = "wasm32"))]
fn trap() -> ! {
    std::process::abort()
}

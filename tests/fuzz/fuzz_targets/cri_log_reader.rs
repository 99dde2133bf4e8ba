//! `runtime::logs`: CRI-format log lines as a container runtime (containerd,
//! or anything with access to the log directory) writes them, read the way
//! `kedge logs` and the kubelet API serve them.
//!
//! Input: an 8-byte header of options, then the raw bytes of the log files,
//! cut into up to three files (two rotated ones and the live one) at the
//! bytes 0xFE 0xFE.
//!
//! Checks, beyond "never panics", on `render` (what `read_log` and
//! `read_from` return):
//! - the output is whole lines (empty or ends with `\n`) unless cut by
//!   `limitBytes`, never longer than `limitBytes`, with at most `tailLines`
//!   lines;
//! - `tailLines` keeps the last lines of the full output, `limitBytes` its
//!   first bytes, and without timestamps the output is the records' content;
//! - with files (in a directory under /dev/shm when there is one: memory,
//!   not the disk): `read_log` returns what `render` makes of the rotated
//!   files and the live one in order, and `read_from` what it makes of the
//!   whole records after an offset;
//! - writing through `LogFile` (both streams, small rotation limits) and
//!   reading back gives a suffix of what was written.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use kedge::runtime::logs::{self, LogFile, ReadOptions, Rotation};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("kedge-fuzz-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (h, raw) = data.split_at(8);
    let opts = ReadOptions {
        tail_lines: (h[0] & 1 != 0).then_some(u64::from(h[1])),
        timestamps: h[0] & 2 != 0,
        since: (h[0] & 4 != 0).then(|| {
            // Around the timestamps of the seeds (2026) and before the epoch.
            let secs = u64::from(u32::from_le_bytes([h[2], h[3], h[4], h[5]]));
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs.saturating_mul(2))
        }),
        limit_bytes: (h[0] & 8 != 0).then_some(u64::from(u16::from_le_bytes([h[6], h[7]]))),
    };
    let files: Vec<&[u8]> = split_files(raw);

    let whole: Vec<u8> = files.concat();
    let out = logs::render(&whole, &opts);
    check_render(&whole, &opts, &out);

    if h[0] & 16 != 0 {
        read_files(&files, &opts, h[1]);
    }
    if h[0] & 32 != 0 {
        write_and_read(raw, h[1], h[6]);
    }
});

fn split_files(raw: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    let mut rest = raw;
    while files.len() < 2 {
        match rest.windows(2).position(|w| w == [0xfe, 0xfe]) {
            Some(at) => {
                files.push(&rest[..at]);
                rest = &rest[at + 2..];
            }
            None => break,
        }
    }
    files.push(rest);
    files
}

fn count_lines(b: &[u8]) -> usize {
    b.iter().filter(|c| **c == b'\n').count()
}

fn check_render(raw: &[u8], opts: &ReadOptions, out: &[u8]) {
    let full_opts = ReadOptions {
        tail_lines: None,
        limit_bytes: None,
        ..opts.clone()
    };
    let full = logs::render(raw, &full_opts);
    assert!(
        full.is_empty() || full.ends_with(b"\n"),
        "a line without its end"
    );

    // tailLines: the last n lines of the full output.
    let mut tailed = full.clone();
    if let Some(n) = opts.tail_lines {
        let lines = count_lines(&full);
        let skip = lines.saturating_sub(n as usize);
        let start = if skip == 0 {
            0
        } else {
            full.iter()
                .enumerate()
                .filter(|(_, c)| **c == b'\n')
                .nth(skip - 1)
                .map(|(i, _)| i + 1)
                .unwrap_or(full.len())
        };
        tailed = full[start..].to_vec();
        assert!(count_lines(&tailed) <= n as usize);
    }
    // limitBytes: the first bytes of that.
    let mut expected = tailed;
    if let Some(l) = opts.limit_bytes {
        expected.truncate(l as usize);
        assert!(out.len() as u64 <= l);
    }
    assert_eq!(out, &expected[..], "options do not compose as documented");

    if !opts.timestamps && opts.since.is_none() {
        // Without timestamps the output is the records' content, lines
        // joined where a record was partial.
        let content: usize = raw
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(logs::parse_record)
            .map(|r| r.content.len())
            .sum();
        assert!(full.len() <= content + count_lines(&full));
    }
}

/// `read_log` (rotated files, then the live one) and `read_from` against
/// `render` of the same bytes.
fn read_files(files: &[&[u8]], opts: &ReadOptions, offset_seed: u8) {
    let dir = scratch();
    let live = dir.join("0.log");
    let max_files = files.len() as u32;
    // Rotated files: the oldest has the highest number.
    for n in 1..4u32 {
        let _ = std::fs::remove_file(dir.join(format!("0.log.{n}")));
    }
    for (i, f) in files[..files.len() - 1].iter().enumerate() {
        let n = files.len() - 1 - i;
        std::fs::write(dir.join(format!("0.log.{n}")), f).expect("write rotated");
    }
    let last = files[files.len() - 1];
    std::fs::write(&live, last).expect("write live");

    let (out, live_len) = logs::read_log(&live, max_files, opts).expect("read_log");
    assert_eq!(live_len, last.len() as u64);
    assert_eq!(
        out,
        logs::render(&files.concat(), opts),
        "read_log differs from render"
    );

    let offset = (u64::from(offset_seed) * 7) % (last.len() as u64 + 8);
    let (new, next) = logs::read_from(&live, offset, opts.timestamps).expect("read_from");
    let from = if offset > last.len() as u64 {
        0
    } else {
        offset as usize
    };
    let tail = &last[from..];
    let whole = tail.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
    assert_eq!(next, (from + whole) as u64);
    let follow_opts = ReadOptions {
        timestamps: opts.timestamps,
        ..Default::default()
    };
    assert_eq!(new, logs::render(&tail[..whole], &follow_opts));
}

/// What a container writes (through `LogFile`, rotated) reads back as a
/// suffix of it: rotation only ever drops the oldest records; with nothing
/// rotated away, exactly what was written (each line ended).
fn write_and_read(raw: &[u8], size_seed: u8, files_seed: u8) {
    let dir = scratch().join("w");
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("0.log");
    let rotation = Rotation {
        max_file_bytes: 64 + u64::from(size_seed) * 16,
        max_files: u32::from(files_seed % 4) + 1,
    };
    let mut f = LogFile::create(path.clone(), rotation).expect("create");
    // Written in the pieces between 0xFE bytes, as a process's writes come.
    for piece in raw.split(|b| *b == 0xfe) {
        f.write_stream(0, piece).expect("write");
    }
    f.flush_partial().expect("flush");
    let written: Vec<u8> = raw.iter().copied().filter(|b| *b != 0xfe).collect();
    drop(f);
    let mut want = written;
    if !want.is_empty() && !want.ends_with(b"\n") {
        want.push(b'\n');
    }
    let (out, _) =
        logs::read_log(&path, rotation.max_files, &ReadOptions::default()).expect("read");
    assert!(
        want.ends_with(&out),
        "read back is not a suffix of what was written"
    );
    let rotated = dir.join("0.log.1").exists() || rotation.max_files == 1;
    if !rotated {
        assert_eq!(out, want, "nothing rotated, yet not everything read back");
    }
}

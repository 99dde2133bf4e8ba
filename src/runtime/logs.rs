//! Container log files in the kubelet's CRI format, written and read here
//! for every runtime:
//!
//! ```text
//! 2026-11-21T08:00:00.123456789Z stdout F a whole line
//! 2026-11-21T08:00:00.223456789Z stderr P part of a long line…
//! ```
//!
//! Files live at `{pod_dir}/logs/{container}/{restart_count}.log`; when one
//! grows past the size cap it is rotated to `.log.1`, `.log.2`, … and only
//! `max_files` files are kept.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

/// A line longer than this is split into partial (`P`) records.
const MAX_LINE: usize = 16 * 1024;

pub fn container_log_dir(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("logs").join(container)
}

pub fn container_log_path(pod_dir: &Path, container: &str, restart_count: u32) -> PathBuf {
    container_log_dir(pod_dir, container).join(format!("{restart_count}.log"))
}

#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_file_bytes: u64,
    pub max_files: u32,
}

/// The log file of one container run, shared by its stdout and stderr.
pub struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
    /// Bytes of an unfinished line, per stream (0 = stdout, 1 = stderr).
    partial: [Vec<u8>; 2],
}

impl LogFile {
    pub fn create(path: PathBuf, rotation: Rotation) -> io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile {
            path,
            file,
            size,
            rotation,
            partial: [Vec::new(), Vec::new()],
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        let keep = self.rotation.max_files.max(1);
        let rotated = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        if keep == 1 {
            self.file.set_len(0)?;
        } else {
            let _ = std::fs::remove_file(rotated(keep - 1));
            for n in (1..keep - 1).rev() {
                let _ = std::fs::rename(rotated(n), rotated(n + 1));
            }
            std::fs::rename(&self.path, rotated(1))?;
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
        }
        self.size = 0;
        Ok(())
    }

    fn record(&mut self, stream: usize, tag: char, content: &[u8]) -> io::Result<()> {
        let ts = humantime::format_rfc3339_nanos(SystemTime::now());
        let name = if stream == 0 { "stdout" } else { "stderr" };
        let mut line = Vec::with_capacity(content.len() + 48);
        write!(line, "{ts} {name} {tag} ")?;
        line.extend_from_slice(content);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.rotation.max_file_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// Appends output of one stream; complete lines become `F` records.
    pub fn write_stream(&mut self, stream: usize, mut data: &[u8]) -> io::Result<()> {
        while let Some(pos) = data.iter().position(|b| *b == b'\n') {
            let mut line = std::mem::take(&mut self.partial[stream]);
            line.extend_from_slice(&data[..pos]);
            self.record(stream, 'F', &line)?;
            data = &data[pos + 1..];
        }
        self.partial[stream].extend_from_slice(data);
        while self.partial[stream].len() >= MAX_LINE {
            let rest = self.partial[stream].split_off(MAX_LINE);
            let chunk = std::mem::replace(&mut self.partial[stream], rest);
            self.record(stream, 'P', &chunk)?;
        }
        Ok(())
    }

    /// Writes out unfinished lines (when the container ends).
    pub fn flush_partial(&mut self) -> io::Result<()> {
        for stream in 0..2 {
            let line = std::mem::take(&mut self.partial[stream]);
            if !line.is_empty() {
                self.record(stream, 'F', &line)?;
            }
        }
        Ok(())
    }
}

/// One stream (stdout or stderr) of a shared log file, as an `AsyncWrite`.
/// Writes are small appends to a local file, done in place.
#[derive(Clone)]
pub struct LogStream {
    pub file: Arc<Mutex<LogFile>>,
    pub stream: usize,
}

impl tokio::io::AsyncWrite for LogStream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut file = self
            .file
            .lock()
            .map_err(|_| io::Error::other("log file lock poisoned"))?;
        file.write_stream(self.stream, buf)?;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// What to read (the kubelet's `/containerLogs` options).
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub tail_lines: Option<u64>,
    pub timestamps: bool,
    pub since: Option<SystemTime>,
    pub limit_bytes: Option<u64>,
}

/// One parsed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub timestamp: String,
    pub stream: String,
    pub partial: bool,
    pub content: Vec<u8>,
}

pub fn parse_record(line: &[u8]) -> Option<Record> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let stream = String::from_utf8(parts.next()?.to_vec()).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default().to_vec();
    Some(Record {
        timestamp,
        stream,
        partial: tag == b"P",
        content,
    })
}

/// Turns CRI records into what the user sees, applying the options.
pub fn render(raw: &[u8], opts: &ReadOptions) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut pending_ts: Option<String> = None;
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(rec) = parse_record(line) else {
            continue;
        };
        if let Some(since) = opts.since {
            let keep = humantime::parse_rfc3339(&rec.timestamp)
                .map(|t| t >= since)
                .unwrap_or(true);
            if !keep {
                continue;
            }
        }
        let ts = pending_ts
            .get_or_insert_with(|| rec.timestamp.clone())
            .clone();
        pending.extend_from_slice(&rec.content);
        if !rec.partial {
            let mut out = Vec::new();
            if opts.timestamps {
                out.extend_from_slice(ts.as_bytes());
                out.push(b' ');
            }
            out.append(&mut pending);
            out.push(b'\n');
            lines.push(out);
            pending_ts = None;
        }
    }
    if let Some(n) = opts.tail_lines {
        let skip = lines.len().saturating_sub(n as usize);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat();
    if let Some(limit) = opts.limit_bytes {
        out.truncate(limit as usize);
    }
    out
}

/// Reads a container's log: rotated files first, then the live one.
/// Returns the rendered bytes and the live file's length (to follow from).
pub fn read_log(path: &Path, max_files: u32, opts: &ReadOptions) -> io::Result<(Vec<u8>, u64)> {
    let mut raw = Vec::new();
    for n in (1..max_files.max(1)).rev() {
        let rotated = PathBuf::from(format!("{}.{n}", path.display()));
        if let Ok(mut f) = File::open(&rotated) {
            f.read_to_end(&mut raw)?;
        }
    }
    let mut f = File::open(path)?;
    let start = raw.len();
    f.read_to_end(&mut raw)?;
    let live_len = (raw.len() - start) as u64;
    Ok((render(&raw, opts), live_len))
}

/// Reads what was appended to the live file since `offset`; returns the
/// rendered new lines and the new offset. Only whole records are consumed.
pub fn read_from(path: &Path, offset: u64, timestamps: bool) -> io::Result<(Vec<u8>, u64)> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // The file was rotated under us: start over on the new one.
    let offset = if len < offset { 0 } else { offset };
    f.seek(SeekFrom::Start(offset))?;
    let mut raw = Vec::new();
    f.read_to_end(&mut raw)?;
    let whole = raw
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|p| p + 1)
        .unwrap_or(0);
    raw.truncate(whole);
    let opts = ReadOptions {
        timestamps,
        ..Default::default()
    };
    Ok((render(&raw, &opts), offset + whole as u64))
}

/// The newest log file of a container (highest restart number); with
/// `previous`, the one before it.
pub fn pick_log(pod_dir: &Path, container: &str, previous: bool) -> Option<PathBuf> {
    let dir = container_log_dir(pod_dir, container);
    let mut runs: Vec<u32> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".log")?
                .parse::<u32>()
                .ok()
        })
        .collect();
    runs.sort_unstable();
    let run = if previous {
        *runs.iter().rev().nth(1)?
    } else {
        *runs.last()?
    };
    Some(container_log_path(pod_dir, container, run))
}

/// How long a follower waits between looks at a growing file.
pub const FOLLOW_POLL: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    fn rot(bytes: u64, files: u32) -> Rotation {
        Rotation {
            max_file_bytes: bytes,
            max_files: files,
        }
    }

    #[test]
    fn lines_partials_and_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c/0.log");
        let mut f = LogFile::create(path.clone(), rot(1 << 20, 2)).expect("create");
        f.write_stream(0, b"hello\nwor").expect("write");
        f.write_stream(1, b"oops\n").expect("write");
        f.write_stream(0, b"ld\n").expect("write");
        f.write_stream(0, b"tail without newline").expect("write");
        f.flush_partial().expect("flush");
        let raw = std::fs::read(&path).expect("read");
        let recs: Vec<Record> = raw
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .filter_map(parse_record)
            .collect();
        let view: Vec<(&str, bool, &[u8])> = recs
            .iter()
            .map(|r| (r.stream.as_str(), r.partial, r.content.as_slice()))
            .collect();
        assert_eq!(
            view,
            vec![
                ("stdout", false, &b"hello"[..]),
                ("stderr", false, &b"oops"[..]),
                ("stdout", false, &b"world"[..]),
                ("stdout", false, &b"tail without newline"[..]),
            ]
        );
        assert!(humantime::parse_rfc3339(&recs[0].timestamp).is_ok());
        let (out, _) = read_log(&path, 2, &ReadOptions::default()).expect("read");
        assert_eq!(out, b"hello\noops\nworld\ntail without newline\n");
        let (out, _) = read_log(
            &path,
            2,
            &ReadOptions {
                tail_lines: Some(2),
                ..Default::default()
            },
        )
        .expect("read");
        assert_eq!(out, b"world\ntail without newline\n");
        let (out, _) = read_log(
            &path,
            2,
            &ReadOptions {
                limit_bytes: Some(3),
                ..Default::default()
            },
        )
        .expect("read");
        assert_eq!(out, b"hel");
        let (out, _) = read_log(
            &path,
            2,
            &ReadOptions {
                timestamps: true,
                tail_lines: Some(1),
                ..Default::default()
            },
        )
        .expect("read");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.ends_with("Z tail without newline\n"), "{text}");
    }

    #[test]
    fn long_lines_are_split_and_joined_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut f = LogFile::create(path.clone(), rot(1 << 20, 1)).expect("create");
        let long = vec![b'x'; MAX_LINE * 2 + 5];
        f.write_stream(0, &long).expect("write");
        f.write_stream(0, b"\n").expect("write");
        let raw = std::fs::read(&path).expect("read");
        assert_eq!(raw.iter().filter(|b| **b == b'\n').count(), 3);
        let (out, _) = read_log(&path, 1, &ReadOptions::default()).expect("read");
        assert_eq!(out.len(), long.len() + 1);
    }

    #[test]
    fn rotation_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut f = LogFile::create(path.clone(), rot(200, 3)).expect("create");
        for i in 0..40 {
            f.write_stream(0, format!("line {i:03}\n").as_bytes())
                .expect("write");
        }
        assert!(std::fs::metadata(&path).expect("live").len() <= 200);
        assert!(dir.path().join("0.log.1").exists());
        assert!(dir.path().join("0.log.2").exists());
        assert!(!dir.path().join("0.log.3").exists());
        let (out, _) = read_log(&path, 3, &ReadOptions::default()).expect("read");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text.ends_with("line 039\n"));
        assert!(!text.contains("line 000"), "oldest lines were rotated away");
        // Lines that remain are in order.
        let nums: Vec<u32> = text.lines().map(|l| l[5..].parse().expect("num")).collect();
        assert!(nums.windows(2).all(|w| w[0] + 1 == w[1]));
    }

    #[test]
    fn follow_reads_only_new_whole_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("0.log");
        let mut f = LogFile::create(path.clone(), rot(1 << 20, 1)).expect("create");
        f.write_stream(0, b"a\n").expect("write");
        let (_, offset) = read_log(&path, 1, &ReadOptions::default()).expect("read");
        f.write_stream(0, b"b\nc\n").expect("write");
        let (out, offset2) = read_from(&path, offset, false).expect("follow");
        assert_eq!(out, b"b\nc\n");
        let (out, offset3) = read_from(&path, offset2, false).expect("follow");
        assert!(out.is_empty());
        assert_eq!(offset2, offset3);
    }

    #[test]
    fn picks_current_and_previous_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [0, 1, 2] {
            LogFile::create(container_log_path(dir.path(), "c", n), rot(100, 1)).expect("create");
        }
        assert_eq!(
            pick_log(dir.path(), "c", false),
            Some(container_log_path(dir.path(), "c", 2))
        );
        assert_eq!(
            pick_log(dir.path(), "c", true),
            Some(container_log_path(dir.path(), "c", 1))
        );
        assert_eq!(pick_log(dir.path(), "nope", false), None);
    }
}

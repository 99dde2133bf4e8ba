//! SPDY/3.1 framing, the protocol the apiserver speaks to a kubelet after
//! upgrading an `/exec`, `/attach` or `/portForward` request (Kubernetes'
//! `httpstream/spdy`, on moby/spdystream). No maintained Rust crate speaks
//! SPDY any more, so the framing is here: a [`Codec`] (tokio-util) that
//! turns bytes into [`Frame`]s and back, with the connection's two zlib
//! streams of header blocks (compressed with the protocol's dictionary,
//! flushed at the end of every block). The zlib itself is flate2's.
//!
//! Bounds (the peer is the apiserver, authenticated by its client
//! certificate, but a frame is still never trusted): a control frame of at
//! most [`MAX_CONTROL_FRAME`] bytes, a data frame of at most
//! [`MAX_DATA_FRAME`], a header block of at most [`MAX_HEADER_BYTES`] once
//! inflated and [`MAX_HEADERS`] pairs.
//!
//! Flow control: spdystream neither sends nor honours WINDOW_UPDATE frames,
//! so neither does this side; TCP's window is the back-pressure, as it is
//! between the apiserver and a kubelet.

use std::sync::LazyLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio_util::codec::{Decoder, Encoder};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// The HTTP `Upgrade` token.
pub const UPGRADE_TOKEN: &str = "SPDY/3.1";
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// The largest control frame read (header blocks are small).
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// The largest data frame read (spdystream's writers copy 32 KiB at a time).
pub const MAX_DATA_FRAME: usize = 1024 * 1024;
/// The largest data frame written: what spdystream's readers take in one go.
pub const WRITE_CHUNK: usize = 32 * 1024;
/// A header block's size once inflated.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Name/value pairs in one header block.
pub const MAX_HEADERS: usize = 128;
/// Entries of one SETTINGS frame.
const MAX_SETTINGS: usize = 64;

/// RST_STREAM and GOAWAY status codes (SPDY/3.1 §2.6.3, §2.6.6).
pub mod status {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    /// GOAWAY: a normal end of the session.
    pub const GOAWAY_OK: u32 = 0;
}

const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// Name/value pairs of a header block, in the order sent. Names are
/// lowercase (SPDY/3 requires it); several values of one name are joined
/// with NUL bytes, as on the wire.
pub type Headers = Vec<(String, String)>;

/// `protocol` if the client offers it (`X-Stream-Protocol-Version`: one
/// header value each, or comma-separated), as the kubelet's `Handshake`
/// negotiates.
pub fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    protocol: &'static str,
) -> Option<&'static str> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == protocol)
        .then_some(protocol)
}

/// The first value of `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    /// (flags, id, value) per entry.
    Settings {
        flags: u8,
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame of a type this side does not know: the spec says to
    /// ignore it.
    Unknown {
        kind: u16,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY: {what} frame of {len} bytes, over the {max} bytes this side reads")]
    FrameTooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("SPDY: unsupported version {0} (this side speaks 3)")]
    Version(u16),
    #[error("SPDY: malformed {kind} frame: {detail}")]
    Malformed { kind: &'static str, detail: String },
    #[error("SPDY: header block: {0}")]
    HeaderBlock(String),
    #[error("SPDY: data frame of {0} bytes, over the protocol's 16 MiB")]
    DataTooLarge(usize),
    #[error("SPDY: connection: {0}")]
    Io(#[from] std::io::Error),
}

/// SPDY/3's zlib dictionary for header blocks (draft-mbelshe-httpbis-spdy-00
/// §2.6.10.1): these words, each after its 4-byte length, then a tail.
pub fn dictionary() -> &'static [u8] {
    static DICT: LazyLock<Vec<u8>> = LazyLock::new(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    });
    &DICT
}

/// One connection's framing: the inflate state of the peer's header blocks
/// and the deflate state of ours. Frames must go through one codec in the
/// order they are on the wire.
pub struct Codec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        let mut deflate = Compress::new(Compression::default(), true);
        // Right after the stream's start, as zlib requires; the dictionary
        // is a constant, so this cannot fail.
        let _ = deflate.set_dictionary(dictionary());
        Codec {
            inflate: Decompress::new(true),
            deflate,
        }
    }

    /// Inflates one header block (the rest of a control frame).
    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let err = |e: &dyn std::fmt::Display| SpdyError::HeaderBlock(e.to_string());
        let mut out = Vec::with_capacity((input.len() * 4).clamp(256, MAX_HEADER_BYTES));
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.len().max(256));
            }
            let (in_before, out_before) = (self.inflate.total_in(), out.len());
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            input = &input[(self.inflate.total_in() - in_before) as usize..];
            if out.len() > MAX_HEADER_BYTES {
                return Err(SpdyError::HeaderBlock(format!(
                    "over {MAX_HEADER_BYTES} bytes once inflated"
                )));
            }
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::HeaderBlock("the zlib stream ended".into()));
                }
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if input.is_empty() && out.len() == out_before {
                        return Ok(out);
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(|e| err(&e))?;
                }
                Err(e) => return Err(err(&e)),
            }
        }
    }

    /// Deflates one header block, flushed so that it ends in this frame.
    fn deflate(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), SpdyError> {
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(256));
            }
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            input = &input[(self.deflate.total_in() - before) as usize..];
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }

    fn read_headers(&mut self, kind: &'static str, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate(block)?;
        parse_header_block(&raw).map_err(|detail| SpdyError::Malformed { kind, detail })
    }

    fn write_headers(&mut self, headers: &Headers, out: &mut Vec<u8>) -> Result<(), SpdyError> {
        let raw = header_block(headers);
        self.deflate(&raw, out)
    }
}

/// The uncompressed header block: the pair count, then each name and value
/// after its length (4 bytes, big-endian).
pub fn header_block(headers: &Headers) -> Vec<u8> {
    let mut raw = Vec::new();
    raw.put_u32(headers.len() as u32);
    for (n, v) in headers {
        raw.put_u32(n.len() as u32);
        raw.put_slice(n.as_bytes());
        raw.put_u32(v.len() as u32);
        raw.put_slice(v.as_bytes());
    }
    raw
}

/// Parses an uncompressed header block; names are lowercased.
pub fn parse_header_block(mut raw: &[u8]) -> Result<Headers, String> {
    let take_u32 = |raw: &mut &[u8]| -> Result<u32, String> {
        if raw.len() < 4 {
            return Err("truncated".into());
        }
        Ok(raw.get_u32())
    };
    let count = take_u32(&mut raw)? as usize;
    if count > MAX_HEADERS {
        return Err(format!("{count} headers, over {MAX_HEADERS}"));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let string = |raw: &mut &[u8]| -> Result<String, String> {
            let len = take_u32(raw)? as usize;
            if raw.len() < len {
                return Err("truncated".into());
            }
            let s = std::str::from_utf8(&raw[..len])
                .map_err(|_| "a header that is not UTF-8".to_string())?
                .to_string();
            raw.advance(len);
            Ok(s)
        };
        let name = string(&mut raw)?;
        if name.is_empty() {
            return Err("an empty header name".into());
        }
        let value = string(&mut raw)?;
        headers.push((name.to_ascii_lowercase(), value));
    }
    if !raw.is_empty() {
        return Err(format!("{} bytes after the last header", raw.len()));
    }
    Ok(headers)
}

fn stream_id(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & STREAM_ID_MASK
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Decoder for Codec {
    type Item = Frame;
    type Error = SpdyError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if src.len() < 8 {
            return Ok(None);
        }
        let control = src[0] & 0x80 != 0;
        let len = usize::from(src[5]) << 16 | usize::from(src[6]) << 8 | usize::from(src[7]);
        let (what, max) = if control {
            ("control", MAX_CONTROL_FRAME)
        } else {
            ("data", MAX_DATA_FRAME)
        };
        if len > max {
            return Err(SpdyError::FrameTooLarge { what, len, max });
        }
        if src.len() < 8 + len {
            src.reserve(8 + len - src.len());
            return Ok(None);
        }
        let head = src.split_to(8);
        let body = src.split_to(len).freeze();
        let flags = head[4];
        if !control {
            return Ok(Some(Frame::Data {
                stream_id: stream_id(&head[0..4]),
                flags,
                data: body,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let malformed = |kind: &'static str, detail: &str| SpdyError::Malformed {
            kind,
            detail: detail.to_string(),
        };
        let need = |kind: &'static str, n: usize, exact: bool| {
            if body.len() < n || (exact && body.len() != n) {
                Err(malformed(kind, &format!("{} bytes", body.len())))
            } else {
                Ok(())
            }
        };
        let frame = match kind {
            1 => {
                need("SYN_STREAM", 10, false)?;
                let stream_id = stream_id(&body[0..4]);
                if stream_id == 0 {
                    return Err(malformed("SYN_STREAM", "stream id 0"));
                }
                Frame::SynStream {
                    stream_id,
                    associated_to: self::stream_id(&body[4..8]),
                    priority: body[8] >> 5,
                    flags,
                    headers: self.read_headers("SYN_STREAM", &body[10..])?,
                }
            }
            2 => {
                need("SYN_REPLY", 4, false)?;
                Frame::SynReply {
                    stream_id: stream_id(&body[0..4]),
                    flags,
                    headers: self.read_headers("SYN_REPLY", &body[4..])?,
                }
            }
            3 => {
                need("RST_STREAM", 8, true)?;
                Frame::RstStream {
                    stream_id: stream_id(&body[0..4]),
                    status: be32(&body[4..8]),
                }
            }
            4 => {
                need("SETTINGS", 4, false)?;
                let n = be32(&body[0..4]) as usize;
                if n > MAX_SETTINGS || body.len() != 4 + 8 * n {
                    return Err(malformed("SETTINGS", &format!("{n} entries")));
                }
                let entries = body[4..]
                    .chunks_exact(8)
                    .map(|e| (e[0], be32(&e[0..4]) & 0x00ff_ffff, be32(&e[4..8])))
                    .collect();
                Frame::Settings { flags, entries }
            }
            6 => {
                need("PING", 4, true)?;
                Frame::Ping { id: be32(&body) }
            }
            7 => {
                // SPDY/3 added the status; spdystream always sends it.
                need("GOAWAY", 8, true)?;
                Frame::GoAway {
                    last_good_stream_id: stream_id(&body[0..4]),
                    status: be32(&body[4..8]),
                }
            }
            8 => {
                need("HEADERS", 4, false)?;
                Frame::Headers {
                    stream_id: stream_id(&body[0..4]),
                    flags,
                    headers: self.read_headers("HEADERS", &body[4..])?,
                }
            }
            9 => {
                need("WINDOW_UPDATE", 8, true)?;
                Frame::WindowUpdate {
                    stream_id: stream_id(&body[0..4]),
                    delta: be32(&body[4..8]) & STREAM_ID_MASK,
                }
            }
            other => Frame::Unknown { kind: other },
        };
        Ok(Some(frame))
    }
}

impl Encoder<Frame> for Codec {
    type Error = SpdyError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), SpdyError> {
        let mut body = Vec::new();
        let (kind, flags) = match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > 0x00ff_ffff {
                    return Err(SpdyError::DataTooLarge(data.len()));
                }
                dst.reserve(8 + data.len());
                dst.put_u32(stream_id & STREAM_ID_MASK);
                dst.put_u8(flags);
                dst.put_uint(data.len() as u64, 3);
                dst.put_slice(&data);
                return Ok(());
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                body.put_u32(stream_id & STREAM_ID_MASK);
                body.put_u32(associated_to & STREAM_ID_MASK);
                body.put_u8(priority << 5);
                body.put_u8(0);
                self.write_headers(&headers, &mut body)?;
                (1, flags)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                body.put_u32(stream_id & STREAM_ID_MASK);
                self.write_headers(&headers, &mut body)?;
                (2, flags)
            }
            Frame::RstStream { stream_id, status } => {
                body.put_u32(stream_id & STREAM_ID_MASK);
                body.put_u32(status);
                (3, 0)
            }
            Frame::Settings { flags, entries } => {
                body.put_u32(entries.len() as u32);
                for (f, id, value) in entries {
                    body.put_u32(u32::from(f) << 24 | (id & 0x00ff_ffff));
                    body.put_u32(value);
                }
                (4, flags)
            }
            Frame::Ping { id } => {
                body.put_u32(id);
                (6, 0)
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                body.put_u32(last_good_stream_id & STREAM_ID_MASK);
                body.put_u32(status);
                (7, 0)
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                body.put_u32(stream_id & STREAM_ID_MASK);
                self.write_headers(&headers, &mut body)?;
                (8, flags)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                body.put_u32(stream_id & STREAM_ID_MASK);
                body.put_u32(delta & STREAM_ID_MASK);
                (9, 0)
            }
            Frame::Unknown { kind } => (kind, 0),
        };
        dst.reserve(8 + body.len());
        dst.put_u16(0x8000 | VERSION);
        dst.put_u16(kind);
        dst.put_u8(flags);
        dst.put_uint(body.len() as u64, 3);
        dst.put_slice(&body);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: Vec<Frame>) -> Vec<Frame> {
        let (mut writer, mut reader) = (Codec::new(), Codec::new());
        let mut buf = BytesMut::new();
        for f in frames {
            writer.encode(f, &mut buf).expect("encode");
        }
        let mut out = Vec::new();
        while let Some(f) = reader.decode(&mut buf).expect("decode") {
            out.push(f);
        }
        assert!(buf.is_empty(), "{} bytes left", buf.len());
        out
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn protocols_are_negotiated_from_any_header_form() {
        let v4 = "v4.channel.k8s.io";
        let offered = ["v5.channel.k8s.io", v4, "v3.channel.k8s.io"];
        assert_eq!(negotiate(offered, v4), Some(v4));
        assert_eq!(
            negotiate(["v5.channel.k8s.io, v4.channel.k8s.io"], v4),
            Some(v4)
        );
        assert_eq!(negotiate(["channel.k8s.io", "v3.channel.k8s.io"], v4), None);
        assert_eq!(negotiate([], v4), None);
        assert_eq!(
            negotiate(["portforward.k8s.io"], "portforward.k8s.io"),
            Some("portforward.k8s.io")
        );
    }

    #[test]
    fn the_dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // Its Adler-32, the id a zlib stream that uses it names.
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in d {
            a = (a + u32::from(byte)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(b << 16 | a, 0xe3c6_a7c2);
    }

    #[test]
    fn every_frame_kind_survives_a_round_trip_through_two_codecs() {
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                flags: 0,
                headers: hdrs(&[("streamtype", "error")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: hdrs(&[("streamtype", "stdout"), ("x-a", "1\u{0}2")]),
            },
            Frame::SynReply {
                stream_id: 1,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 3,
                flags: 0,
                headers: hdrs(&[("streamtype", "stdout")]),
            },
            Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream {
                stream_id: 3,
                status: status::CANCEL,
            },
            Frame::Settings {
                flags: 0,
                entries: vec![(0, 7, 65536)],
            },
            Frame::Ping { id: 2 },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 4096,
            },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: status::GOAWAY_OK,
            },
        ];
        assert_eq!(roundtrip(frames.clone()), frames);
    }

    /// Frames as another zlib writes them (Python's, with the dictionary,
    /// as Go's spdystream does: the fuzz seed).
    #[test]
    fn a_client_s_streams_compressed_by_another_zlib_are_read() {
        let bytes = include_bytes!("../../tests/fuzz/seeds/spdy_frames/exec-v4-client-streams");
        let mut buf = BytesMut::from(&bytes[..]);
        let mut r = Codec::new();
        let mut kinds = Vec::new();
        while let Some(f) = r.decode(&mut buf).expect("decode") {
            kinds.push(match f {
                Frame::SynStream {
                    stream_id, headers, ..
                } => format!(
                    "{stream_id}:{}",
                    header(&headers, "streamtype").unwrap_or("")
                ),
                Frame::Ping { id } => format!("ping {id}"),
                Frame::Data {
                    stream_id, flags, ..
                } => format!("data {stream_id} {flags}"),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(
            kinds,
            ["1:error", "3:stdout", "5:stderr", "ping 1", "data 3 1"]
        );
    }

    #[test]
    fn header_blocks_share_one_zlib_stream_per_direction() {
        // The same headers again compress to fewer bytes: the second block
        // refers back into the first, so a reader must inflate in order.
        let mut c = Codec::new();
        let h = hdrs(&[("streamtype", "stdout"), ("port", "8080")]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        c.write_headers(&h, &mut a).expect("first");
        c.write_headers(&h, &mut b).expect("second");
        assert!(b.len() < a.len(), "{} vs {}", b.len(), a.len());
        let mut r = Codec::new();
        assert_eq!(r.read_headers("HEADERS", &a).expect("first"), h);
        assert_eq!(r.read_headers("HEADERS", &b).expect("second"), h);
        // Out of order, the second block does not read as those headers.
        let mut fresh = Codec::new();
        assert_ne!(fresh.read_headers("HEADERS", &b).ok(), Some(h));
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_end() {
        let mut w = Codec::new();
        let mut whole = BytesMut::new();
        w.encode(
            Frame::Data {
                stream_id: 5,
                flags: 0,
                data: Bytes::from(vec![7u8; 1000]),
            },
            &mut whole,
        )
        .expect("encode");
        let mut r = Codec::new();
        let mut buf = BytesMut::from(&whole[..500]);
        assert!(r.decode(&mut buf).expect("partial").is_none());
        buf.extend_from_slice(&whole[500..]);
        assert!(matches!(
            r.decode(&mut buf).expect("whole"),
            Some(Frame::Data { stream_id: 5, ref data, .. }) if data.len() == 1000
        ));
    }

    #[test]
    fn oversized_and_malformed_frames_are_errors() {
        let mut r = Codec::new();
        // A data frame announcing 2 MiB.
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0x20, 0, 0][..]);
        assert!(matches!(
            r.decode(&mut buf),
            Err(SpdyError::FrameTooLarge { what: "data", .. })
        ));
        // SPDY/2.
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(r.decode(&mut buf), Err(SpdyError::Version(2))));
        // A PING of 3 bytes.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 6, 0, 0, 0, 3, 0, 0, 1][..]);
        assert!(matches!(
            r.decode(&mut buf),
            Err(SpdyError::Malformed { .. })
        ));
        // A header block that is not zlib.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(matches!(r.decode(&mut buf), Err(SpdyError::HeaderBlock(_))));
    }

    #[test]
    fn header_blocks_are_bounded_and_checked() {
        let mut too_many = Vec::new();
        too_many.put_u32(MAX_HEADERS as u32 + 1);
        assert!(parse_header_block(&too_many).is_err());
        let mut truncated = Vec::new();
        truncated.put_u32(1);
        truncated.put_u32(10);
        truncated.put_slice(b"abc");
        assert!(parse_header_block(&truncated).is_err());
        let raw = header_block(&hdrs(&[("StreamType", "error")]));
        assert_eq!(
            parse_header_block(&raw).expect("parse"),
            hdrs(&[("streamtype", "error")])
        );
        let h = hdrs(&[("streamtype", "stdout\u{0}stderr")]);
        assert_eq!(header(&h, "StreamType"), Some("stdout"));
        // A block that inflates past the bound.
        let mut c = Codec::new();
        let big = hdrs(&[("x", &"a".repeat(MAX_HEADER_BYTES))]);
        let mut block = Vec::new();
        c.write_headers(&big, &mut block).expect("deflate");
        assert!(matches!(
            Codec::new().read_headers("HEADERS", &block),
            Err(SpdyError::HeaderBlock(_))
        ));
    }
}

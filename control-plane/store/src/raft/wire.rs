//! The replica-to-replica wire: length-prefixed frames over one TCP connection per peer, many
//! requests in flight on it at once, replies matched by request id.
//!
//! Why not gRPC: a raft batch costs a handful of peer round trips (appends to each follower, a
//! forwarded batch), and on our 2-core machine each one through tonic took several task
//! hand-offs (a tower buffer task and the HTTP/2 connection task on the caller, a stream task
//! on the server) plus HPACK and flow-control frames. Here one writer task per connection sends
//! every queued frame in one write, and one reader task completes the replies.
//!
//! Frame: `len: u32` (bytes after this field), `id: u64`, `kind: u8`, then the bincode body, all
//! big-endian. A request's kind is its [`Method`]; a reply's kind is [`REPLY_OK`] (body: the
//! handler's bincode reply) or [`REPLY_ERR`] (body: a UTF-8 message, e.g. an undecodable
//! request).

use std::io;

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

use super::network::Method;

/// Largest frame accepted or sent (entries are batches of writes up to 1.5 MiB each).
pub const MAX_FRAME_BYTES: usize = 256 << 20;
/// `id` and `kind` after the length field.
const HEADER_BYTES: usize = 9;

pub const REPLY_OK: u8 = 0;
pub const REPLY_ERR: u8 = 1;

impl Method {
    pub fn code(self) -> u8 {
        match self {
            Self::AppendEntries => 1,
            Self::Vote => 2,
            Self::InstallSnapshot => 3,
            Self::Forward => 4,
            Self::ReadIndex => 5,
            Self::Admin => 6,
        }
    }

    pub fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => Self::AppendEntries,
            2 => Self::Vote,
            3 => Self::InstallSnapshot,
            4 => Self::Forward,
            5 => Self::ReadIndex,
            6 => Self::Admin,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub id: u64,
    pub kind: u8,
    pub body: Vec<u8>,
}

/// Encodes a frame whose body is `body` serialized with bincode (no intermediate copy).
pub fn encode_frame<T: Serialize + ?Sized>(id: u64, kind: u8, body: &T) -> io::Result<Vec<u8>> {
    let mut buf = header(id, kind, 64);
    bincode::serialize_into(&mut buf, body).map_err(io::Error::other)?;
    finish(buf)
}

/// Encodes a frame with raw body bytes.
pub fn encode_raw(id: u64, kind: u8, body: &[u8]) -> io::Result<Vec<u8>> {
    let mut buf = header(id, kind, body.len());
    buf.extend_from_slice(body);
    finish(buf)
}

/// A frame's length placeholder, id and kind, with room for `body` more bytes.
fn header(id: u64, kind: u8, body: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4 + HEADER_BYTES + body);
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&id.to_be_bytes());
    buf.push(kind);
    buf
}

fn finish(mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let len = buf.len() - 4;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("peer message of {len} bytes is over the {MAX_FRAME_BYTES}-byte limit"),
        ));
    }
    let len = u32::try_from(len).expect("MAX_FRAME_BYTES fits in u32");
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf)
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(HEADER_BYTES..=MAX_FRAME_BYTES).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("peer frame of {len} bytes (want {HEADER_BYTES}..={MAX_FRAME_BYTES})"),
        ));
    }
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header).await?;
    let mut body = vec![0u8; len - HEADER_BYTES];
    r.read_exact(&mut body).await?;
    let id = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
    Ok(Some(Frame { id, kind: header[8], body }))
}

/// Writes queued frames until the queue closes, several per write when they queue up;
/// `written` gets each frame's length once it is handed to the socket.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    w: W,
    written: impl Fn(usize),
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(64 << 10, w);
    while let Some(first) = frames.recv().await {
        w.write_all(&first).await?;
        written(first.len());
        while let Ok(more) = frames.try_recv() {
            w.write_all(&more).await?;
            written(more.len());
        }
        w.flush().await?;
    }
    Ok(())
}

/// How long sent data may stay unacknowledged before the kernel drops the connection: a peer
/// whose host died or went behind a partition is noticed, and its queued frames freed, within
/// this time (the HTTP/2 transport had pings for that).
const UNACKED_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Socket options of every peer connection, both ends.
pub fn configure(stream: &tokio::net::TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    socket2::SockRef::from(stream).set_tcp_user_timeout(Some(UNACKED_TIMEOUT))
}

/// `host:port` of a peer URL (`http://host:port`, with or without the scheme).
pub fn peer_addr(url: &str) -> Result<&str, String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let addr = rest.split('/').next().unwrap_or_default();
    if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
        return Err(format!("bad peer url {url:?}: want http://HOST:PORT"));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused() {
        let a = encode_frame(7, Method::Forward.code(), &("x", 3u32)).unwrap();
        let b = encode_raw(8, REPLY_ERR, b"nope").unwrap();
        let mut input: &[u8] = &[a.clone(), b].concat();
        let f = read_frame(&mut input).await.unwrap().unwrap();
        assert_eq!((f.id, Method::from_code(f.kind).map(Method::code)), (7, Some(4)));
        assert_eq!(bincode::deserialize::<(String, u32)>(&f.body).unwrap(), ("x".into(), 3));
        let f = read_frame(&mut input).await.unwrap().unwrap();
        assert_eq!((f.id, f.kind, f.body.as_slice()), (8, REPLY_ERR, b"nope".as_slice()));
        assert!(read_frame(&mut input).await.unwrap().is_none(), "clean end of stream");

        let mut huge: &[u8] = &u32::MAX.to_be_bytes();
        assert_eq!(read_frame(&mut huge).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut short: &[u8] = &[0, 0, 0, 3, 1, 2, 3];
        assert_eq!(read_frame(&mut short).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
        let mut cut: &[u8] = &a[..a.len() - 1];
        assert_eq!(read_frame(&mut cut).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn peer_sockets_drop_unacknowledged_connections() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        configure(&s).unwrap();
        let sock = socket2::SockRef::from(&s);
        assert_eq!(sock.tcp_user_timeout().unwrap(), Some(UNACKED_TIMEOUT));
        assert!(sock.tcp_nodelay().unwrap());
    }

    #[test]
    fn peer_urls() {
        assert_eq!(peer_addr("http://127.0.0.1:2380"), Ok("127.0.0.1:2380"));
        assert_eq!(peer_addr("http://m1.local:2380/"), Ok("m1.local:2380"));
        assert_eq!(peer_addr("10.0.0.1:7"), Ok("10.0.0.1:7"));
        assert!(peer_addr("http://127.0.0.1").is_err());
        assert!(peer_addr("http://:80").is_err());
        assert!(peer_addr("http://h:port").is_err());
    }
}

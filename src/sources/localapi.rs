//! A client for tailscaled's LocalAPI: HTTP/1.1 over its unix socket
//! (docs/protocols.md §3), with hyper doing the framing and chunked decoding.
//!
//! Used by the IPN bus source. (The simulator's CLI has its own client.)

use crate::ipn::Notify;
use crate::machine::BusMessage;
use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use smol::net::unix::UnixStream;
use smol_hyper::rt::FuturesIo;
use std::fmt;
use std::path::{Path, PathBuf};

/// The Host header tailscaled's LocalAPI expects.
pub const HOST: &str = "local-tailscaled.sock";
/// The capability version sent in `Tailscale-Cap` (the seed's tailscale).
pub const CAPABILITY_VERSION: u32 = 85;
/// The longest bus line accepted: netmaps of large tailnets run to
/// megabytes, but a line without end is a broken stream.
pub const MAX_LINE: usize = 64 << 20;

/// What can go wrong talking to the LocalAPI.
#[derive(Debug)]
pub enum LocalApiError {
    /// The socket could not be reached.
    Connect(std::io::Error),
    /// HTTP framing failed or the connection dropped.
    Http(hyper::Error),
    /// tailscaled answered with a status other than 200.
    Status {
        /// The HTTP status code.
        code: u16,
        /// The body, usually `{"error":"..."}`.
        body: String,
    },
    /// A bus line was not a Notify.
    Decode(serde_json::Error),
    /// A bus line grew past [`MAX_LINE`].
    LineTooLong,
}

impl fmt::Display for LocalApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalApiError::Connect(e) => write!(f, "connecting to tailscaled: {e}"),
            LocalApiError::Http(e) => write!(f, "talking to tailscaled: {e}"),
            LocalApiError::Status { code, body } => {
                write!(f, "tailscaled answered {code}: {}", body.trim())
            }
            LocalApiError::Decode(e) => write!(f, "decoding a message from tailscaled: {e}"),
            LocalApiError::LineTooLong => {
                write!(f, "a message from tailscaled exceeded {MAX_LINE} bytes")
            }
        }
    }
}

impl std::error::Error for LocalApiError {}

/// A LocalAPI client bound to one socket path. Each call opens its own
/// connection, as tailscale's Go client does for streaming calls.
#[derive(Clone, Debug)]
pub struct LocalClient {
    socket: PathBuf,
}

impl LocalClient {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        LocalClient {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(hyper::Response<Incoming>, smol::Task<()>), LocalApiError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(LocalApiError::Connect)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
            .await
            .map_err(LocalApiError::Http)?;
        let conn = smol::spawn(async move {
            // The connection ends with the response or when dropped; its
            // error, if any, surfaces through the response body.
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, HOST)
            .header("Tailscale-Cap", CAPABILITY_VERSION.to_string());
        if !body.is_empty() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .expect("a request built from a valid method, path and headers");
        let resp = sender
            .send_request(req)
            .await
            .map_err(LocalApiError::Http)?;
        Ok((resp, conn))
    }

    /// Opens `GET /localapi/v0/watch-ipn-bus?mask=N`.
    pub async fn watch_ipn_bus(&self, mask: u32) -> Result<BusStream, LocalApiError> {
        let path = format!("/localapi/v0/watch-ipn-bus?mask={mask}");
        let (resp, conn) = self.send(Method::GET, &path, Vec::new()).await?;
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(LocalApiError::Status {
                code: status.as_u16(),
                body,
            });
        }
        Ok(BusStream {
            body: resp.into_body(),
            lines: Lines::default(),
            _conn: conn,
        })
    }
}

/// An open IPN bus watch: one JSON `Notify` per line of the decoded body,
/// whatever the chunk boundaries.
pub struct BusStream {
    body: Incoming,
    lines: Lines,
    _conn: smol::Task<()>,
}

/// Bytes split into lines as they arrive. Each byte is looked at once: a
/// search for the end of a line resumes where the last one stopped, so a
/// line of n bytes in k frames costs O(n), not O(n·k). A line is handed
/// out without copying it: the buffer becomes the line, and what followed
/// its newline (usually nothing) moves to a fresh buffer, so the memory of
/// a multi-megabyte netmap goes with the line instead of staying here.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// `buf[..scanned]` holds no newline.
    scanned: usize,
    /// Bytes looked at for a newline, in all (for the tests).
    pub examined: u64,
}

impl Lines {
    /// Appends what arrived.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The bytes not yet returned as lines.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// The next whole line, without its newline.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let rest_len = self.buf.len() - self.scanned;
        match memchr::memchr(b'\n', &self.buf[self.scanned..]) {
            Some(i) => {
                self.examined += i as u64 + 1;
                let end = self.scanned + i;
                let rest = self.buf[end + 1..].to_vec();
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.truncate(end);
                self.scanned = 0;
                Some(line)
            }
            None => {
                self.examined += rest_len as u64;
                self.scanned = self.buf.len();
                None
            }
        }
    }
}

impl BusStream {
    /// The next message; `Ok(None)` when tailscaled closed the stream.
    pub async fn next(&mut self) -> Result<Option<Notify>, LocalApiError> {
        match self.next_line().await? {
            None => Ok(None),
            Some(line) => serde_json::from_slice(&line)
                .map(Some)
                .map_err(LocalApiError::Decode),
        }
    }

    /// The next message reduced to what the core reads, keeping only the
    /// peers matching `fqdn` (`BusMessage::decode`); `Ok(None)` when
    /// tailscaled closed the stream.
    pub async fn next_message(
        &mut self,
        fqdn: Option<&str>,
    ) -> Result<Option<BusMessage>, LocalApiError> {
        match self.next_line().await? {
            None => Ok(None),
            Some(line) => BusMessage::decode(&line, fqdn)
                .map(Some)
                .map_err(LocalApiError::Decode),
        }
    }

    /// The next line that is not blank.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, LocalApiError> {
        loop {
            if let Some(line) = self.lines.next_line() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(LocalApiError::Http(e)),
                Some(Ok(frame)) => {
                    if let Ok(mut data) = frame.into_data() {
                        while data.has_remaining() {
                            let chunk = data.chunk();
                            self.lines.push(chunk);
                            let n = chunk.len();
                            data.advance(n);
                        }
                        if self.lines.pending() > MAX_LINE {
                            return Err(LocalApiError::LineTooLong);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod lines_tests {
    use super::Lines;

    #[test]
    fn a_long_line_in_small_frames_is_looked_at_once() {
        // An 8 MiB netmap line arriving in 4 KiB frames: before, every frame
        // rescanned the whole buffer (about 8 GiB looked at).
        let line = vec![b'x'; 8 << 20];
        let mut l = Lines::default();
        for chunk in line.chunks(4096) {
            l.push(chunk);
            assert!(l.next_line().is_none());
        }
        l.push(b"\n{\"next\":1}\n");
        assert_eq!(l.next_line().unwrap().len(), 8 << 20);
        assert_eq!(l.next_line().unwrap(), b"{\"next\":1}");
        assert!(l.next_line().is_none());
        let total = (8u64 << 20) + 13;
        assert!(
            l.examined <= total,
            "{} bytes looked at for {total}",
            l.examined
        );
    }

    #[test]
    fn lines_split_across_frames_and_several_in_one() {
        let mut l = Lines::default();
        l.push(b"ab");
        assert!(l.next_line().is_none());
        l.push(b"c\nde\nf");
        assert_eq!(l.next_line().unwrap(), b"abc");
        assert_eq!(l.next_line().unwrap(), b"de");
        assert!(l.next_line().is_none());
        l.push(b"\n");
        assert_eq!(l.next_line().unwrap(), b"f");
        assert_eq!(l.pending(), 0);
    }

    #[test]
    fn a_handed_out_line_takes_its_memory_with_it() {
        let mut l = Lines::default();
        l.push(&vec![b'x'; 1 << 20]);
        assert!(l.next_line().is_none());
        l.push(b"\nnext");
        let line = l.next_line().unwrap();
        assert_eq!(line.len(), 1 << 20);
        // What is left is the start of the next line, in a buffer of its
        // own: the megabyte went out with the line.
        assert_eq!(l.pending(), 4);
        assert!(l.buf.capacity() < 1 << 10, "{}", l.buf.capacity());
        l.push(b"\n");
        assert_eq!(l.next_line().unwrap(), b"next");
    }
}

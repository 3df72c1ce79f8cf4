//! The simulated CLI's LocalAPI client: one request over the daemon's unix
//! socket, the whole answer read. (containerboot's own client only watches
//! the IPN bus; it has no use for this.)

use bytes::Bytes;
use containerboot::sources::localapi::{CAPABILITY_VERSION, HOST, LocalApiError};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use smol::net::unix::UnixStream;
use smol_hyper::rt::FuturesIo;
use std::path::Path;

/// Sends one request to the daemon on `socket` and reads the whole answer.
/// A status other than 200 is an error carrying the body.
pub(crate) async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<Bytes, LocalApiError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(LocalApiError::Connect)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(FuturesIo::new(stream))
        .await
        .map_err(LocalApiError::Http)?;
    let _conn = smol::spawn(async move {
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
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(LocalApiError::Http)?
        .to_bytes();
    if status != StatusCode::OK {
        return Err(LocalApiError::Status {
            code: status.as_u16(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(body)
}

//! A small HTTP/1 GET client over hyper's own client connection: forwarding
//! a query to the instance that owns it, and the tests and load generator.

use std::time::Duration;

use anyhow::Context as _;
use axum::body::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;

/// An answer: status, headers (lowercase names) and body.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> crate::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!("the answer (status {}) is not JSON: {}", self.status, String::from_utf8_lossy(&self.body))
        })
    }
}

/// `GET url` with `headers`, on a connection of its own, within `timeout`.
pub async fn get(url: &str, headers: &[(&str, &str)], timeout: Duration) -> crate::Result<Answer> {
    tokio::time::timeout(timeout, get_unbounded(url, headers))
        .await
        .with_context(|| format!("GET {url}: no answer within {timeout:?}"))?
}

async fn get_unbounded(url: &str, headers: &[(&str, &str)]) -> crate::Result<Answer> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    anyhow::ensure!(uri.scheme_str() == Some("http"), "{url}: only http:// URLs are supported");
    let authority = uri.authority().with_context(|| format!("{url}: no host"))?.clone();
    let address = format!("{}:{}", authority.host(), authority.port_u16().unwrap_or(80));
    let stream = tokio::net::TcpStream::connect(&address).await.with_context(|| format!("connecting to {address}"))?;
    stream.set_nodelay(true)?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .with_context(|| format!("HTTP handshake with {address}"))?;
    tokio::spawn(async move {
        // Ends when the answer has been read and the request dropped.
        let _ = connection.await;
    });
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let mut request = hyper::Request::get(path).header(hyper::header::HOST, authority.as_str());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender.send_request(request.body(Empty::new())?).await.with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
        .collect();
    let body = response.into_body().collect().await.with_context(|| format!("reading the answer of {url}"))?;
    Ok(Answer { status, headers, body: body.to_bytes().to_vec() })
}

/// [`get`] from synchronous code (tests, tools), on a runtime of its own.
pub fn get_blocking(url: &str, headers: &[(&str, &str)]) -> crate::Result<Answer> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(get(url, headers, Duration::from_secs(30)))
}

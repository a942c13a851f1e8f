//! One keep-alive HTTP/1.1 connection, driven by hyper's client, that
//! times each request from its first byte sent to its last byte read.

use anyhow::Context;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::time::Instant;

pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: String,
}

impl Connection {
    /// Connects to `base` (`http://HOST:PORT`).
    pub async fn open(base: &str) -> anyhow::Result<Connection> {
        let host = base.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let stream = tokio::net::TcpStream::connect(&host).await.with_context(|| format!("connecting to {host}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { sender, host })
    }

    /// Sends `method path` with an empty body and reads the whole answer,
    /// which must be a success; the microseconds it took.
    pub async fn time(&mut self, method: &str, path: &str, authorization: Option<&str>) -> anyhow::Result<f64> {
        let mut request = hyper::Request::builder().method(method).uri(path).header("host", &self.host);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let request = request.body(Empty::new())?;
        let started = Instant::now();
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await.with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        response.into_body().collect().await?;
        let took = started.elapsed().as_secs_f64() * 1e6;
        anyhow::ensure!(status.is_success(), "{method} {path} answered {status}");
        Ok(took)
    }
}

//! A loopback HTTP server that plays the documented shapes of the provider APIs, and helpers
//! shared by the adapter tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aios_core::{CredentialHandle, CredentialVault, InMemoryVault, Secret};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The key every test stores in its vault; no error or `Debug` output may contain it.
pub const KEY: &str = "sk-test-7f3a9c1e-TOPSECRET";

/// The handle of [`KEY`].
pub fn handle() -> CredentialHandle {
    CredentialHandle::new("provider/key")
}

/// A vault holding [`KEY`] under [`handle`].
pub async fn vault() -> Arc<dyn CredentialVault> {
    let v = InMemoryVault::new();
    v.put(handle(), Secret::new(KEY)).await.unwrap();
    Arc::new(v)
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A whole body with a status and headers.
    Body {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// A `text/event-stream` body sent in these chunks; `cut` drops the connection after them
    /// instead of ending the body properly.
    Sse { chunks: Vec<String>, cut: bool },
    /// A 200 whose body stops after `prefix` with the connection dropped.
    Cut { prefix: String },
    /// `reply` after `delay`.
    Slow { delay: Duration, reply: Box<Reply> },
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Self {
        Reply::Body {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }

    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Reply::Body {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.into(), value.into()));
                Reply::Body {
                    status,
                    headers,
                    body,
                }
            }
            other => other,
        }
    }

    pub fn raw(status: u16, body: &str) -> Self {
        Reply::Body {
            status,
            headers: vec![],
            body: body.into(),
        }
    }

    /// Server-sent events `data: <json>` for each value, then `tail` (raw text).
    pub fn sse_data(values: &[Value], tail: &str) -> Self {
        let mut chunks: Vec<String> = values.iter().map(|v| format!("data: {v}\n\n")).collect();
        if !tail.is_empty() {
            chunks.push(tail.into());
        }
        Reply::Sse { chunks, cut: false }
    }

    /// Server-sent events `event: <type>\ndata: <json>` (the Anthropic shape).
    pub fn sse_events(values: &[Value]) -> Self {
        let chunks = values
            .iter()
            .map(|v| format!("event: {}\ndata: {v}\n\n", v["type"].as_str().unwrap_or("")))
            .collect();
        Reply::Sse { chunks, cut: false }
    }
}

type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;
type Body = BoxBody<Bytes, std::io::Error>;

/// A server on 127.0.0.1 (a free port), answering every request with its handler and
/// recording every request.
pub struct TestServer {
    pub url: String,
    requests: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let recorded = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let handler = handler.clone();
                        let recorded = recorded.clone();
                        async move { Ok::<_, Infallible>(serve(req, handler, recorded).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}"),
            requests,
            task,
        }
    }

    /// A server answering every request with `reply`.
    pub async fn always(reply: Reply) -> Self {
        Self::start(move |_| reply.clone()).await
    }

    /// The API root (`http://127.0.0.1:port/v1`).
    pub fn base(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().last().cloned().expect("a request")
    }
}

async fn serve(
    req: hyper::Request<hyper::body::Incoming>,
    handler: Handler,
    recorded: Arc<Mutex<Vec<Recorded>>>,
) -> hyper::Response<Body> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let request = Recorded {
        method,
        path,
        headers,
        body,
    };
    recorded.lock().unwrap().push(request.clone());
    let mut reply = handler(&request);
    while let Reply::Slow {
        delay,
        reply: inner,
    } = reply
    {
        tokio::time::sleep(delay).await;
        reply = *inner;
    }
    match reply {
        Reply::Body {
            status,
            headers,
            body,
        } => {
            let mut b = hyper::Response::builder().status(status);
            for (n, v) in headers {
                b = b.header(n, v);
            }
            b.body(full(body)).unwrap()
        }
        Reply::Sse { chunks, cut } => hyper::Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(chunked(chunks, cut))
            .unwrap(),
        Reply::Cut { prefix } => hyper::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(chunked(vec![prefix], true))
            .unwrap(),
        Reply::Slow { .. } => unreachable!(),
    }
}

fn full(text: String) -> Body {
    http_body_util::Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

fn chunked(chunks: Vec<String>, cut: bool) -> Body {
    let mut frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
        .into_iter()
        .map(|c| Ok(Frame::data(Bytes::from(c))))
        .collect();
    if cut {
        frames.push(Err(std::io::Error::other("connection dropped")));
    }
    let stream = futures::stream::iter(frames).then(|f| async move {
        // let each chunk go out on its own
        tokio::task::yield_now().await;
        f
    });
    BodyExt::boxed(StreamBody::new(stream))
}

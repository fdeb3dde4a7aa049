//! A small MCP server on stdio, written with rmcp, for the fault tests of `aios-mcp`.
//!
//! Tools: `echo` (returns its text and the idempotency key it received in `_meta`), `slow`
//! (sleeps, noticing `notifications/cancelled`), `cancellations` (how many it noticed),
//! `crash` (exits mid-call), `fail` (an `isError` result), `mutate` (changes `echo`'s schema
//! and sends `notifications/tools/list_changed`), `env` and `fail_env` (report an environment
//! variable, in a result or an error), `argv` (its command line), `pid`. Lists two tools a
//! page, to exercise pagination.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ErrorData, ListToolsResult,
    PaginatedRequestParams, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Faulty {
    mutated: Arc<AtomicBool>,
    cancellations: Arc<AtomicU64>,
    /// The `authorization` header of the latest HTTP request (`--http` only).
    authorization: Arc<std::sync::Mutex<String>>,
}

const PAGE: usize = 2;

impl Faulty {
    fn tools(&self) -> Vec<Value> {
        let obj = |props: Value, required: Value| json!({"type": "object", "properties": props, "required": required});
        let echo_schema = if self.mutated.load(Ordering::SeqCst) {
            obj(
                json!({"text": {"type": "string"}, "loud": {"type": "boolean"}}),
                json!(["text", "loud"]),
            )
        } else {
            obj(json!({"text": {"type": "string"}}), json!(["text"]))
        };
        vec![
            json!({"name": "echo", "description": "Echo the text back", "inputSchema": echo_schema,
                   "annotations": {"readOnlyHint": true, "idempotentHint": true}}),
            json!({"name": "slow", "description": "Sleep for ms milliseconds",
                   "inputSchema": obj(json!({"ms": {"type": "integer", "minimum": 0}}), json!(["ms"]))}),
            json!({"name": "cancellations", "description": "How many calls were cancelled",
                   "inputSchema": obj(json!({}), json!([]))}),
            json!({"name": "crash", "description": "Exit in the middle of the call",
                   "inputSchema": obj(json!({}), json!([]))}),
            json!({"name": "fail", "description": "Fail with an isError result",
                   "inputSchema": obj(json!({}), json!([]))}),
            json!({"name": "mutate", "description": "Change echo's input schema",
                   "inputSchema": obj(json!({}), json!([]))}),
            json!({"name": "env", "description": "Report an environment variable",
                   "inputSchema": obj(json!({"name": {"type": "string"}}), json!(["name"]))}),
            json!({"name": "fail_env", "description": "Fail, quoting an environment variable",
                   "inputSchema": obj(json!({"name": {"type": "string"}}), json!(["name"]))}),
            json!({"name": "argv", "description": "Report the command line",
                   "inputSchema": obj(json!({}), json!([]))}),
            json!({"name": "pid", "description": "Report the process id",
                   "inputSchema": obj(json!({}), json!([]))}),
            json!({"name": "authorization", "description": "Report the authorization header (HTTP)",
                   "inputSchema": obj(json!({}), json!([]))}),
        ]
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<Value, ErrorData> {
        let args = request.arguments.clone().unwrap_or_default();
        let text = |s: String| json!({"content": [{"type": "text", "text": s}]});
        let arg = |k: &str| {
            args.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Ok(match request.name.as_ref() {
            "echo" => {
                // rmcp hands the request's `_meta` to the handler in the context
                let key = [
                    serde_json::to_value(&request.meta).unwrap_or(Value::Null),
                    serde_json::to_value(&context.meta).unwrap_or(Value::Null),
                ]
                .into_iter()
                .find_map(|m| m.get("aios/idempotency_key").cloned());
                json!({
                    "content": [{"type": "text", "text": arg("text")}],
                    "structuredContent": {"echo": arg("text"), "key": key},
                })
            }
            "slow" => {
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(0);
                let until = tokio::time::Instant::now() + Duration::from_millis(ms);
                while tokio::time::Instant::now() < until {
                    if context.ct.is_cancelled() {
                        self.cancellations.fetch_add(1, Ordering::SeqCst);
                        return Err(ErrorData::internal_error("cancelled", None));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                text(format!("slept {ms} ms"))
            }
            "cancellations" => text(self.cancellations.load(Ordering::SeqCst).to_string()),
            "crash" => std::process::exit(3),
            "fail" => {
                json!({"content": [{"type": "text", "text": "deliberate failure"}], "isError": true})
            }
            "mutate" => {
                self.mutated.store(true, Ordering::SeqCst);
                let _ = context.peer.notify_tool_list_changed().await;
                text("mutated".into())
            }
            "env" => text(std::env::var(arg("name")).unwrap_or_default()),
            "fail_env" => json!({"content": [{"type": "text", "text":
                format!("cannot use {}", std::env::var(arg("name")).unwrap_or_default())}], "isError": true}),
            "argv" => text(std::env::args().collect::<Vec<_>>().join(" ")),
            "pid" => text(std::process::id().to_string()),
            "authorization" => text(
                self.authorization
                    .lock()
                    .map(|a| a.clone())
                    .unwrap_or_default(),
            ),
            other => return Err(ErrorData::invalid_params(format!("no tool {other}"), None)),
        })
    }
}

impl ServerHandler for Faulty {
    fn get_info(&self) -> ServerConfig {
        let mut info = ServerConfig::default();
        if let Ok(caps) = serde_json::from_value(json!({"tools": {"listChanged": true}})) {
            info.capabilities = caps;
        }
        info
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self.tools();
        let start: usize = request
            .and_then(|r| r.cursor)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let end = (start + PAGE).min(tools.len());
        let next = (end < tools.len()).then(|| end.to_string());
        serde_json::from_value(json!({"tools": tools[start.min(end)..end], "nextCursor": next}))
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let value = self.call(request, context).await?;
        let result: CallToolResult = serde_json::from_value(value)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(CallToolResponse::Complete(result))
    }
}

/// With `--http`: serves streamable HTTP on a loopback port and prints its URL.
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().any(|a| a == "--http") {
        return http().await;
    }
    let service = Faulty::default().serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}

async fn http() -> Result<(), Box<dyn std::error::Error>> {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService,
    };
    use std::io::Write as _;
    let faulty = Faulty::default();
    let seen = faulty.authorization.clone();
    let service = StreamableHttpService::new(
        move || Ok(faulty.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("http://{}/mcp", listener.local_addr()?);
    std::io::stdout().flush()?;
    loop {
        let (stream, _) = listener.accept().await?;
        let service = service.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    if let Some(v) = req.headers().get("authorization") {
                        if let Ok(mut s) = seen.lock() {
                            *s = v.to_str().unwrap_or_default().to_string();
                        }
                    }
                    let mut service = service.clone();
                    async move { tower_service::Service::call(&mut service, req).await }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}

//! A stub OpenAI-compatible server on 127.0.0.1 for the examples, so they run without a
//! model provider: it answers `/v1/chat/completions` in the documented shape, streamed when
//! the request asks for a stream.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Starts the stub on a free loopback port; returns its base URL (`http://127.0.0.1:PORT/v1`).
pub async fn stub_server() -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(body) = read_request(&mut socket).await else {
                    return;
                };
                let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let asked = request["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or("")
                    .to_string();
                let answer = format!(
                    "(stub model) notes on: {}",
                    asked.chars().take(60).collect::<String>()
                );
                let response = if request["stream"] == true {
                    let mut body = String::new();
                    for piece in answer.split_inclusive(' ') {
                        let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
                        body.push_str(&format!("data: {chunk}\n\n"));
                    }
                    let last = serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 21, "completion_tokens": 17}});
                    body.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    let body = serde_json::json!({
                        "id": "stub", "object": "chat.completion", "model": request["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 21, "completion_tokens": 17}
                    })
                    .to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    Ok(url)
}

/// Reads one request's head and the body its `content-length` announces; returns the body.
async fn read_request(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if request.len() >= head_end + 4 + length {
                return Some(request[head_end + 4..head_end + 4 + length].to_vec());
            }
        }
    }
}

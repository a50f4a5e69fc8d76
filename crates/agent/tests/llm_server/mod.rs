//! A recorded OpenAI-compatible chat completions server on loopback: it answers each request
//! with the next scripted answer (a recorded SSE stream sent in small, uneven pieces of a
//! chunked body; a stream cut mid-way; an error status; silence) and records the requests.

#![allow(dead_code)]

use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/llm/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub enum Answer {
    /// 200 with this SSE body, sent whole.
    Stream(Vec<u8>),
    /// 200 with this body, then the connection is dropped without ending the chunked body.
    Cut(Vec<u8>),
    /// A non-success status with a JSON body.
    Status(u16, Vec<u8>),
    /// Read the request, then say nothing.
    Hang,
    /// 200 with this SSE body, pausing after its first `.1` bytes for `.2`: a model that
    /// thinks between sentences.
    Paused(Vec<u8>, usize, Duration),
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Server {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

pub async fn serve(answers: Vec<Answer>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            let seen = seen.clone();
            let answers = answers.clone();
            tokio::spawn(async move {
                if let Some(req) = read_request(sock).await {
                    let (req, sock) = req;
                    seen.lock().unwrap().push(req);
                    let answer = answers.lock().unwrap().pop_front();
                    answer_with(sock, answer).await;
                }
            });
        }
    });
    Server {
        base_url: format!("http://{addr}/v1"),
        requests,
    }
}

async fn read_request(mut sock: TcpStream) -> Option<(Request, TcpStream)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
    Some((
        Request {
            method,
            path,
            headers,
            body,
        },
        sock,
    ))
}

/// Uneven piece sizes, so SSE events and UTF-8 sequences straddle reads.
const PIECES: [usize; 6] = [1, 17, 3, 64, 9, 250];

async fn chunked(sock: &mut TcpStream, body: &[u8]) {
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = PIECES[i % PIECES.len()].min(rest.len());
        let (piece, tail) = rest.split_at(n);
        let mut frame = format!("{n:x}\r\n").into_bytes();
        frame.extend_from_slice(piece);
        frame.extend_from_slice(b"\r\n");
        if sock.write_all(&frame).await.is_err() {
            return;
        }
        let _ = sock.flush().await;
        rest = tail;
        i += 1;
        if i % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

async fn answer_with(mut sock: TcpStream, answer: Option<Answer>) {
    let sse_head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n\
                    Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n\
                    openai-processing-ms: 231\r\nx-request-id: req_7c1f0e2b9a\r\nConnection: close\r\n\r\n";
    match answer {
        Some(Answer::Stream(body)) => {
            let _ = sock.write_all(sse_head.as_bytes()).await;
            chunked(&mut sock, &body).await;
            let _ = sock.write_all(b"0\r\n\r\n").await;
            let _ = sock.shutdown().await;
        }
        Some(Answer::Paused(body, at, pause)) => {
            let _ = sock.write_all(sse_head.as_bytes()).await;
            chunked(&mut sock, &body[..at]).await;
            tokio::time::sleep(pause).await;
            chunked(&mut sock, &body[at..]).await;
            let _ = sock.write_all(b"0\r\n\r\n").await;
            let _ = sock.shutdown().await;
        }
        Some(Answer::Cut(body)) => {
            let _ = sock.write_all(sse_head.as_bytes()).await;
            chunked(&mut sock, &body).await;
            // Dropped here: no terminating chunk, as when a proxy or the server dies.
        }
        Some(Answer::Status(code, body)) => {
            let head = format!(
                "HTTP/1.1 {code} Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
            let _ = sock.shutdown().await;
        }
        Some(Answer::Hang) => {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        None => {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 503 No More\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
        }
    }
}

//! A real browser against `ratelimit serve`: headless Chromium (Debian's
//! `chromium`) loads a page that opens WebSockets, and reports what its
//! scripts saw. What a web page can read of a refusal is what this checks.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::Server;
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Debian's Chromium, installed on first use where it is missing (as root,
/// with apt-get: what CI runs as); anything else fails the test loudly.
fn chromium() -> &'static str {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    let installed = INSTALLED.get_or_init(|| {
        if Path::new(CHROMIUM).exists() {
            return Ok(());
        }
        let output = Command::new("sh")
            .args([
                "-c",
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium",
            ])
            .output()
            .map_err(|e| format!("cannot run apt-get: {e}"))?;
        if output.status.success() && Path::new(CHROMIUM).exists() {
            Ok(())
        } else {
            Err(format!(
                "apt-get install chromium failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    });
    if let Err(why) = installed {
        panic!(
            "the browser tests need Debian's chromium at {CHROMIUM} and could not install it \
             ({why}); install it with `apt-get install chromium` as root"
        );
    }
    CHROMIUM
}

/// The page: opens one WebSocket (a listener the limit lets in), then a
/// second (refused), and posts what each socket saw to `/result`.
fn page(ws_url: &str) -> String {
    let script = r#"
const log = [];
const report = () => fetch('/result', {method: 'POST', body: JSON.stringify(log)});
const watch = (n, socket, last) => {
  socket.onopen = () => { log.push({socket: n, event: 'open'}); if (!last) next(); };
  socket.onmessage = (e) => log.push({socket: n, event: 'message', data: e.data});
  socket.onerror = () => log.push({socket: n, event: 'error'});
  socket.onclose = (e) => {
    log.push({socket: n, event: 'close', code: e.code, reason: e.reason});
    if (last || log.every((entry) => entry.event !== 'open')) report();
  };
};
const next = () => watch(2, new WebSocket(URL), true);
watch(1, new WebSocket(URL), false);
"#;
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"></head><body><script>\nconst URL = {};\n{script}</script></body></html>",
        json!(ws_url)
    )
}

/// Serves `html` at `/page.html` and hands the body of the first
/// `POST /result` to the returned channel.
fn page_server(html: String) -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, results) = mpsc::channel();
    let sender = Mutex::new(Some(sender));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let (status, content) = if request_line.starts_with("GET /page.html") {
                ("200 OK", html.clone())
            } else if request_line.starts_with("POST /result") {
                if let Some(sender) = sender.lock().unwrap().take() {
                    let _ = sender.send(String::from_utf8_lossy(&body).into_owned());
                }
                ("204 No Content", String::new())
            } else {
                ("404 Not Found", String::new())
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
                content.len()
            );
        }
    });
    (port, results)
}

/// What the page's sockets saw, loaded in headless Chromium against
/// `server`.
fn browse(server: &Server) -> Vec<Value> {
    let (port, results) = page_server(page(&format!("ws://{}/local", server.address)));
    let profile = tempfile::tempdir().unwrap();
    let mut browser = Command::new(chromium())
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{port}/page.html"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium starts");
    let result = results.recv_timeout(Duration::from_secs(60));
    let _ = browser.kill();
    let _ = browser.wait();
    let result = result.expect("the page reports within 60 s");
    serde_json::from_str(&result).unwrap()
}

#[test]
fn a_browser_refused_at_the_handshake_sees_1006_and_nothing_else() {
    // One listener join a minute per address: the page's second socket is
    // refused with the 429 at the handshake (the default, hard rejection).
    let server = Server::start(&[("RATE_LIMIT_LISTENER_JOINS_PER_MIN", "1")]);
    let seen = browse(&server);
    assert_eq!(
        seen,
        [
            json!({"socket": 1, "event": "open"}),
            json!({"socket": 2, "event": "error"}),
            json!({"socket": 2, "event": "close", "code": 1006, "reason": ""}),
        ],
        "no status, no body, no retryAfter: a script cannot tell a limit from an outage"
    );
}

#[test]
fn a_browser_rejected_softly_reads_the_body_and_retry_after_then_the_close() {
    // The same page and limit, with RATE_LIMIT_CONNECT_REJECT=soft: the
    // second socket opens, receives the seed's 429 body, then closes with
    // 1008 and a reason that says so.
    let server = Server::start(&[
        ("RATE_LIMIT_LISTENER_JOINS_PER_MIN", "1"),
        ("RATE_LIMIT_CONNECT_REJECT", "soft"),
    ]);
    let seen = browse(&server);
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(seen[0], json!({"socket": 1, "event": "open"}));
    assert_eq!(seen[1], json!({"socket": 2, "event": "open"}));
    assert_eq!(seen[2]["event"], "message", "{seen:?}");
    let body: Value = serde_json::from_str(seen[2]["data"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "RATE_LIMIT_EXCEEDED");
    assert_eq!(body["details"]["retryAfter"], 60);
    assert_eq!(body["details"]["policy"], "listener_join");
    assert_eq!(
        seen[3],
        json!({"socket": 2, "event": "close", "code": 1008, "reason": "RATE_LIMIT_EXCEEDED: retry after 60 s"}),
    );
}

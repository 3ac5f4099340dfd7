//! Soft rejection's window, measured: how long a softly rejected client
//! holds an open connection before it is told why and closed, through
//! `ratelimit serve` (embedded store) and real WebSocket clients.
//!
//! `cargo bench -p ratelimiter-cli --bench soft`
//!
//! Each round comes from a new address: one connection allowed (one
//! connection attempt a minute), then a second refused softly. Timed from
//! the client's side, from the start of its handshake: the handshake's end
//! (accepted), the reason's arrival, and the close. A third, hard-refused
//! row is the same client connecting again before its `retryAfter`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[path = "../tests/common/mod.rs"]
mod common;

const ROUNDS: usize = 300;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn open(
    address: SocketAddr,
    source_ip: &str,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source_ip}:0").parse().unwrap())
        .unwrap();
    let stream = socket.connect(address).await.unwrap();
    tokio_tungstenite::client_async(
        format!("ws://{address}/local"),
        MaybeTlsStream::Plain(stream),
    )
    .await
    .map(|(socket, _)| socket)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index].as_secs_f64() * 1e3
}

fn main() {
    let server = common::Server::start(&[
        ("RATE_LIMIT_CONNECT_REJECT", "soft"),
        ("RATE_LIMIT_CONNECTION_ATTEMPTS_PER_MIN", "1"),
    ]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut accepted, mut told, mut closed, mut hard) = (vec![], vec![], vec![], vec![]);
    runtime.block_on(async {
        for i in 0..ROUNDS {
            let ip = format!("127.1.{}.{}", i / 200, i % 200 + 1);
            let _first = open(server.address, &ip)
                .await
                .expect("the first is allowed");
            let started = Instant::now();
            let mut socket = open(server.address, &ip).await.expect("accepted, softly");
            accepted.push(started.elapsed());
            loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        assert!(text.as_str().contains("RATE_LIMIT_EXCEEDED"), "{text}");
                        told.push(started.elapsed());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        assert_eq!(frame.map(|f| u16::from(f.code)), Some(1008));
                        closed.push(started.elapsed());
                        break;
                    }
                    Some(Ok(_)) => {}
                    other => panic!("expected the reason and a close, got {other:?}"),
                }
            }
            let started = Instant::now();
            assert!(
                open(server.address, &ip).await.is_err(),
                "told: refused hard"
            );
            hard.push(started.elapsed());
        }
    });
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "soft rejection, from the handshake", "p50 ms", "p90 ms", "p99 ms"
    );
    for (name, mut times) in [
        ("handshake accepted", accepted),
        ("reason received", told),
        ("closed (1008): the window", closed),
        ("again, refused hard (429)", hard),
    ] {
        assert_eq!(times.len(), ROUNDS, "{name}");
        times.sort();
        println!(
            "{name:<34} {:>9.2} {:>9.2} {:>9.2}",
            percentile(&times, 0.5),
            percentile(&times, 0.9),
            percentile(&times, 0.99)
        );
    }
}

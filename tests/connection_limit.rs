//! `--max-connections` on a real node: connections past the limit are
//! closed as they arrive, counted and logged, and a freed slot serves again.

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use testkit::http::metric;
use testkit::{wait_until, Cluster, ClusterOptions};

/// Whether the server closed `conn` (end of stream or reset). A connection
/// it serves sends its HTTP/2 settings at once instead.
fn closed_by_server(mut conn: &TcpStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 64];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_counted_and_logged() {
    const MAX: usize = 4;
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        extra_args: vec!["--max-connections".into(), MAX.to_string()],
        ..Default::default()
    })
    .await;
    let node = &c.nodes[&1];

    // More raw connections than the limit: whatever the harness's client
    // holds, at least this many past MAX are refused.
    let conns: Vec<TcpStream> = (0..MAX + 3)
        .map(|_| TcpStream::connect(&node.grpc).expect("connect"))
        .collect();
    let closed = conns.iter().filter(|c| closed_by_server(c)).count();
    assert!(
        closed >= 3,
        "{closed} of {} connections were closed",
        MAX + 3
    );
    assert!(
        closed < MAX + 3,
        "connections under the limit are served, not closed"
    );
    assert!(metric(&node.http, "inflight_connections_refused_total").await >= closed as f64);
    assert!(metric(&node.http, "inflight_connections_open").await <= MAX as f64);
    assert!(
        c.log_text(1)
            .contains("connection refused: --max-connections are open"),
        "the refusal is logged"
    );

    // Closing them frees their slots: a client is served again.
    drop(conns);
    let http = node.http.clone();
    wait_until(
        Duration::from_secs(10),
        "the open connections to drop",
        || {
            let http = http.clone();
            async move { metric(&http, "inflight_connections_open").await < MAX as f64 }
        },
    )
    .await;
    c.client()
        .insert("call/after-the-storm", "1")
        .await
        .expect("served once slots are free");
}

//! Small HTTP pieces the tests share: a receiver serving on a free loopback
//! port, and reading one sample from a node's `/metrics`.

/// Serves `app` on a free loopback port for the rest of the test; returns
/// `http://127.0.0.1:PORT`.
pub async fn serve(app: axum::Router) -> String {
    let port = crate::free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind a loopback port for the test's HTTP server");
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}")
}

/// The value of the sample `name` (with its labels, if any, as written,
/// e.g. `inflight_handoff_batches_total{role="primary",result="ok"}`) on the
/// node whose HTTP address is `http`; panics if it is not there.
pub async fn metric(http: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("read /metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

//! `inflight health`: one HTTP GET of a node's /readyz (or /livez), for
//! health checks in places without curl, such as the `FROM scratch`
//! container image (deploy/docker/Dockerfile, deploy/compose.yaml).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

/// The address to connect to for a node's `--http` address: an unspecified
/// IP (a server listening on every interface) means this host's loopback.
pub fn probe_address(http: &str) -> String {
    match http.parse::<SocketAddr>() {
        Ok(mut a) if a.ip().is_unspecified() => {
            a.set_ip(match a.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
            a.to_string()
        }
        _ => http.to_string(),
    }
}

/// The HTTP client: over TLS trusting only `tls.ca` (and presenting
/// `tls.identity`) when given.
fn http_client(
    timeout: Duration,
    tls: Option<&super::ClientTlsFiles>,
) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(tls) = tls {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let ca = reqwest::Certificate::from_pem(&read(&tls.ca)?)
            .map_err(|e| format!("--cacert {}: {e}", tls.ca.display()))?;
        b = b
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca);
        if let Some((cert, key)) = &tls.identity {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend(read(key)?);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| format!("--cert {} / --key {}: {e}", cert.display(), key.display()))?;
            b = b.identity(id);
        }
    }
    b.build().map_err(|e| e.to_string())
}

/// Exit 0 when `GET http(s)://HTTP/PATH` answers 200 within `timeout`, else 1
/// with the status and body (or the connection error) on stderr. Over
/// https when `tls` is given.
pub async fn run(
    http: &str,
    path: &str,
    timeout: Duration,
    tls: Option<&super::ClientTlsFiles>,
) -> ExitCode {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}{path}", probe_address(http));
    let client = match http_client(timeout, tls) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&url).send().await {
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::OK {
                println!("{url}: {} {}", status.as_u16(), body.trim());
                ExitCode::SUCCESS
            } else {
                eprintln!("{url}: {} {}", status.as_u16(), body.trim());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            // reqwest's own message is "error sending request"; the cause
            // (connection refused, timed out) is in its sources.
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            eprintln!("{url}: {msg}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::probe_address;

    #[test]
    fn an_unspecified_ip_means_this_host() {
        assert_eq!(probe_address("0.0.0.0:8001"), "127.0.0.1:8001");
        assert_eq!(probe_address("[::]:8001"), "[::1]:8001");
        assert_eq!(probe_address("10.0.0.1:8001"), "10.0.0.1:8001");
        assert_eq!(probe_address("node2:8001"), "node2:8001");
    }
}

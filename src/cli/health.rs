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

/// Exit 0 when `GET http://HTTP/PATH` answers 200 within `timeout`, else 1
/// with the status and body (or the connection error) on stderr.
pub async fn run(http: &str, path: &str, timeout: Duration) -> ExitCode {
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let url = format!("http://{}{path}", probe_address(http));
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
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

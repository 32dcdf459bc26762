//! `berth health`: does the berth serving this configuration answer? The
//! probe behind the container image's `HEALTHCHECK`. berth's image holds
//! no shell and no curl, so berth itself asks: `GET /healthz` on the
//! address the configuration serves it on (`admin_listen`, else `listen`),
//! over loopback when that address is unspecified, with a deadline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::Config;

/// How long the probe waits for an answer: a berth slower than this to
/// say "ok" is not healthy.
const DEADLINE: Duration = Duration::from_secs(5);

/// Where `config` serves `/healthz`, as a URL on this machine: the admin
/// listener (plain HTTP) when there is one, else the registry listener
/// (HTTPS with `[tls]`); `0.0.0.0` and `::` are asked on loopback.
pub fn healthz_url(config: &Config) -> String {
    let (addr, tls) = match config.admin_listen {
        Some(admin) => (admin, false),
        None => (config.listen, config.tls.is_some()),
    };
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{}/healthz", SocketAddr::new(ip, addr.port()))
}

/// `GET /healthz`: `Ok` on a 200, else what went wrong.
pub fn probe(config: &Config) -> Result<(), String> {
    let url = healthz_url(config);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        // The probe asks its own berth whether it answers. Whose
        // certificate it presents is not the question, and it is issued for
        // the name clients use, not for the loopback address asked here.
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(DEADLINE)
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        match response.status() {
            reqwest::StatusCode::OK => Ok(()),
            status => Err(format!("{url} answered {status}")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url_for(toml: &str) -> String {
        let config = Config::from_toml(toml).expect("a valid config");
        healthz_url(&config)
    }

    #[test]
    fn an_unspecified_listen_address_is_probed_on_loopback() {
        assert_eq!(
            url_for("listen = \"0.0.0.0:5000\""),
            "http://127.0.0.1:5000/healthz"
        );
        assert_eq!(
            url_for("listen = \"[::]:5000\""),
            "http://[::1]:5000/healthz"
        );
        assert_eq!(
            url_for("listen = \"10.1.2.3:5000\""),
            "http://10.1.2.3:5000/healthz"
        );
    }

    #[test]
    fn the_admin_listener_is_probed_when_there_is_one() {
        assert_eq!(
            url_for("listen = \"0.0.0.0:5000\"\nadmin_listen = \"127.0.0.1:9090\""),
            "http://127.0.0.1:9090/healthz"
        );
    }
}

//! `[http]`: where metrics, health and queries are served, the address
//! other instances reach this one at, and the bearer token of `/v1`.

use std::net::SocketAddr;
use std::path::Path;

use super::RawHttp;

/// The validated `[http]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpConfig {
    /// Off when `None`.
    pub listen: Option<SocketAddr>,
    /// What other instances forward queries to (`http://host:port`), when
    /// set; else [`HttpConfig::advertised_url`] derives it.
    pub advertised: Option<String>,
    /// Required as `Authorization: Bearer …` by `/v1` when set.
    pub token: Option<String>,
}

pub(super) fn validate(raw: &RawHttp, problems: &mut Vec<String>) -> HttpConfig {
    let listen = match raw.listen.as_deref().map(str::parse::<SocketAddr>) {
        None => None,
        Some(Ok(address)) => Some(address),
        Some(Err(_)) => {
            problems.push(format!(
                "http.listen must be ADDRESS:PORT such as 0.0.0.0:8080, not {:?}",
                raw.listen.as_deref().unwrap_or_default()
            ));
            None
        }
    };
    let advertised = raw.advertised_url.as_deref().map(|url| {
        let url = url.trim_end_matches('/');
        if !url.starts_with("http://") || url.len() <= "http://".len() {
            problems.push(format!("http.advertised_url must be an http:// URL such as http://host:8080, not {url:?}"));
        }
        url.to_owned()
    });
    let token = match (&raw.token, &raw.token_file) {
        (Some(_), Some(_)) => {
            problems.push("http.token and http.token_file are both set: give one".to_owned());
            None
        }
        (Some(token), None) => Some(token.clone()),
        (None, Some(path)) => read_token(path, problems),
        (None, None) => None,
    };
    if let Some(token) = &token {
        if token.is_empty() || token.chars().any(|character| character.is_whitespace() || character.is_control()) {
            problems.push("http.token must be non-empty, without spaces or control characters".to_owned());
        } else {
            super::remember_secret(token);
        }
    }
    HttpConfig { listen, advertised, token }
}

impl HttpConfig {
    /// The URL other instances reach this one at, serving on `bound`:
    /// `advertised_url` when set, else `http://` and the bound address,
    /// with this host's name for a wildcard address.
    pub fn advertised_url(&self, bound: SocketAddr) -> String {
        match &self.advertised {
            Some(url) => url.clone(),
            None if bound.ip().is_unspecified() => format!("http://{}:{}", host_name(), bound.port()),
            None => format!("http://{bound}"),
        }
    }
}

fn read_token(path: &Path, problems: &mut Vec<String>) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_owned()),
        Err(error) => {
            problems.push(format!("http.token_file {}: {error}", path.display()));
            None
        }
    }
}

/// This host's name (the kernel's), for a default advertised URL.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

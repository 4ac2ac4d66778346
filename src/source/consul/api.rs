//! One GET against Consul's HTTP API: the client (TLS with rustls, an optional private CA),
//! the token header, `X-Consul-Index`, and errors worded for an operator.

use std::time::Duration;

use bytes::Bytes;
use reqwest::{Client, StatusCode, Url};

use super::ConsulError;

/// Longest part of a response body quoted in an error.
const BODY_QUOTE_MAX: usize = 200;

/// A successful answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `X-Consul-Index`; `None` from an endpoint that does not block.
    pub index: Option<u64>,
    pub body: Bytes,
}

/// Why a request failed; the text names the endpoint and is what status and logs show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error(
        "Consul refused {endpoint} with 403 ({body}): the token lacks permission or is unknown"
    )]
    Forbidden { endpoint: String, body: String },
    #[error("Consul answered {endpoint} with {status} ({body})")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("Consul request {endpoint} failed: {detail}")]
    Transport { endpoint: String, detail: String },
    #[error("Consul answered {endpoint} with a body that is not JSON: {detail}")]
    Decode { endpoint: String, detail: String },
}

impl FetchError {
    pub fn is_forbidden(&self) -> bool {
        matches!(self, FetchError::Forbidden { .. })
    }
}

/// What to ask: path segments under the base address, and query pairs.
#[derive(Debug, Clone)]
pub struct Target {
    pub segments: Vec<String>,
    pub query: Vec<(&'static str, String)>,
    /// How status and errors name it: the path, plus `?dc=` for another datacenter.
    pub display: String,
}

pub struct Api {
    client: Client,
    base: Url,
    token: Option<String>,
}

impl Api {
    pub fn new(
        addr: &str,
        token: Option<String>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Api, ConsulError> {
        let base = parse_addr(addr)?;
        let mut builder = Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tls_backend_rustls();
        if let Some(pem) = ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ConsulError::Certificate(e.to_string()))?;
            if certs.is_empty() {
                return Err(ConsulError::Certificate(
                    "no certificate in the CA file".into(),
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        let client = builder
            .build()
            .map_err(|e| ConsulError::Client(e.to_string()))?;
        Ok(Api {
            client,
            base,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    pub fn url(&self, target: &Target) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut segs) = url.path_segments_mut() {
            segs.pop_if_empty().extend(&target.segments);
        }
        url
    }

    /// One GET; `index` makes it a blocking query of up to `wait`.
    pub async fn get(
        &self,
        target: &Target,
        index: Option<u64>,
        wait: &str,
        timeout: Duration,
    ) -> Result<Answer, FetchError> {
        let mut req = self
            .client
            .get(self.url(target))
            .timeout(timeout)
            .query(&target.query);
        if let Some(index) = index {
            req = req.query(&[("index", index.to_string()), ("wait", wait.to_string())]);
        }
        if let Some(token) = &self.token {
            req = req.header("X-Consul-Token", token);
        }
        let transport = |e: reqwest::Error| FetchError::Transport {
            endpoint: target.display.clone(),
            detail: describe(&e),
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = resp.bytes().await.map_err(transport)?;
        if status == StatusCode::FORBIDDEN {
            return Err(FetchError::Forbidden {
                endpoint: target.display.clone(),
                body: quote(&body),
            });
        }
        if !status.is_success() {
            return Err(FetchError::Status {
                endpoint: target.display.clone(),
                status: status.as_u16(),
                body: quote(&body),
            });
        }
        Ok(Answer { index, body })
    }
}

fn parse_addr(addr: &str) -> Result<Url, ConsulError> {
    let addr = addr.trim();
    // Like CONSUL_HTTP_ADDR, an address without a scheme is plain HTTP.
    let with_scheme = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let url =
        Url::parse(&with_scheme).map_err(|e| ConsulError::Address(format!("{addr:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        return Err(ConsulError::Address(format!(
            "{addr:?}: expected http://host:port or https://host:port"
        )));
    }
    Ok(url)
}

/// The body as one trimmed line, cut to [`BODY_QUOTE_MAX`] characters.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return "empty body".into();
    }
    match line.char_indices().nth(BODY_QUOTE_MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

/// A transport error without its URL (which carries the index and changes on every retry),
/// so that the same failure reads the same each time and is logged once.
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".into();
    }
    let mut innermost: &dyn std::error::Error = e;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    let detail = innermost.to_string();
    if e.is_connect() {
        format!("cannot connect: {detail}")
    } else {
        detail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_message_names_the_endpoint_and_quotes_the_body() {
        let e = FetchError::Forbidden {
            endpoint: "/v1/health/service/web".into(),
            body: quote(b"ACL not found\n"),
        };
        assert_eq!(
            e.to_string(),
            "Consul refused /v1/health/service/web with 403 (ACL not found): the token lacks permission or is unknown"
        );
        assert!(e.is_forbidden());
    }

    #[test]
    fn quote_is_one_short_line() {
        assert_eq!(
            quote(b"  Permission denied:\n  token  "),
            "Permission denied: token"
        );
        assert_eq!(quote(b""), "empty body");
        let long = "é".repeat(500);
        let q = quote(long.as_bytes());
        assert_eq!(q.chars().count(), BODY_QUOTE_MAX + 1);
    }

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:8500").unwrap().as_str(),
            "http://127.0.0.1:8500/"
        );
        assert!(parse_addr("https://consul.local:8501").is_ok());
        assert!(parse_addr("ftp://x").is_err());
        let api = Api::new("http://127.0.0.1:8500/", None, None).unwrap();
        let url = api.url(&Target {
            segments: vec![
                "v1".into(),
                "health".into(),
                "service".into(),
                "a b/c".into(),
            ],
            query: vec![],
            display: String::new(),
        });
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8500/v1/health/service/a%20b%2Fc"
        );
    }

    #[test]
    fn bad_ca_file_is_an_error() {
        assert!(matches!(
            Api::new("https://127.0.0.1:8501", None, Some(b"not a pem")),
            Err(ConsulError::Certificate(_))
        ));
    }
}

//! Where readings come from: `cadvisor` (JSON API base URLs, or `/metrics` URLs), `kubelet`
//! and `prometheus`. A config names at least one; any combination is fine.

use std::path::PathBuf;
use std::time::Duration;

use regex::Regex;
use serde_json::{Map, Value};

use super::error::{err, ConfigError};
use super::json::{reject_unknown, string, string_list};
use super::legacy;
use super::values;
use crate::source::http::{Auth, Tls};

/// The kubelets (`"kubelet": {"urls": [...], ...}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Kubelet {
    /// Base URLs, `https://node:10250`.
    pub urls: Vec<String>,
    /// `/metrics/resource` (the default: small) or `/metrics/cadvisor` (with CPU quotas).
    pub path: String,
    pub token_file: Option<PathBuf>,
    pub tls: Tls,
    /// Wait between a node's two scrapes when it has no earlier one (the kubelet's cAdvisor
    /// samples every 10 s).
    pub second_scrape: Duration,
}

/// A Prometheus server (`"prometheus": {"url": ..., ...}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Prometheus {
    /// Base URL, `http://prom:9090`.
    pub url: String,
    /// Label matchers added to every series asked for, e.g. `job="cadvisor"`.
    pub selector: String,
    /// The label that names a series' host (`instance`).
    pub host_label: String,
    pub tls: Tls,
    pub auth: Option<Auth>,
}

/// The sources of a config.
#[derive(Debug, Clone, PartialEq)]
pub struct Sources {
    pub cadvisor: Vec<String>,
    pub cadvisor_metrics: Vec<String>,
    pub second_scrape: Duration,
    pub kubelet: Option<Kubelet>,
    pub prometheus: Option<Prometheus>,
}

const KUBELET_KEYS: &[&str] = &[
    "urls",
    "path",
    "token_file",
    "ca_file",
    "insecure_skip_verify",
    "client_cert_file",
    "second_scrape",
];
const PROMETHEUS_KEYS: &[&str] = &[
    "url",
    "selector",
    "host_label",
    "token_file",
    "basic_auth",
    "ca_file",
    "insecure_skip_verify",
    "client_cert_file",
];
const KUBELET_PATHS: &[&str] = &["/metrics/resource", "/metrics/cadvisor"];

/// True when a cAdvisor URL is its Prometheus endpoint rather than the JSON API's base.
pub fn is_metrics_url(url: &str) -> bool {
    reqwest::Url::parse(url).is_ok_and(|u| u.path().trim_end_matches('/').ends_with("/metrics"))
}

pub(super) fn sources(top: &Map<String, Value>) -> Result<Sources, ConfigError> {
    let named = top.contains_key("cadvisor") || top.contains_key("urls");
    let kubelet = top.get("kubelet").map(kubelet).transpose()?;
    let prometheus = top.get("prometheus").map(prometheus).transpose()?;
    let (mut cadvisor, mut cadvisor_metrics) = (vec![], vec![]);
    if named || (kubelet.is_none() && prometheus.is_none()) {
        let urls = legacy::cadvisor(top).map_err(|e| {
            if named {
                e
            } else {
                err(
                    "cadvisor",
                    "missing: name at least one source: `cadvisor` (URLs), `kubelet` or `prometheus`",
                )
            }
        })?;
        let mut seen = std::collections::HashSet::new();
        for (text, key) in urls {
            let url = values::base_url(&text).map_err(|m| err(&key, m))?;
            if !seen.insert(url.clone()) {
                return Err(err(
                    "cadvisor",
                    format!("`{url}` is listed twice: each host is polled once"),
                ));
            }
            if is_metrics_url(&url) {
                cadvisor_metrics.push(url);
            } else {
                cadvisor.push(url);
            }
        }
    }
    let second_scrape = values::duration(
        top,
        "second_scrape",
        Duration::from_secs(2),
        Duration::from_secs(60),
    )?;
    Ok(Sources {
        cadvisor,
        cadvisor_metrics,
        second_scrape,
        kubelet,
        prometheus,
    })
}

fn object<'a>(v: &'a Value, key: &str) -> Result<&'a Map<String, Value>, ConfigError> {
    v.as_object()
        .ok_or_else(|| err(key, format!("must be an object, not {v}")))
}

fn kubelet(v: &Value) -> Result<Kubelet, ConfigError> {
    let o = object(v, "kubelet")?;
    reject_unknown(o, KUBELET_KEYS, "kubelet.")?;
    let list = o.get("urls").ok_or_else(|| {
        err(
            "kubelet.urls",
            "missing: list the kubelets, e.g. \"https://node1:10250\"",
        )
    })?;
    let mut urls = vec![];
    for (text, key) in string_list(list, "kubelet.urls")? {
        let url = values::base_url(&text).map_err(|m| err(&key, m))?;
        if reqwest::Url::parse(&url).is_ok_and(|u| u.path() != "/") {
            return Err(err(
                &key,
                format!(
                    "`{text}` has a path: give the node's base URL; the path is `kubelet.path`"
                ),
            ));
        }
        if urls.contains(&url) {
            return Err(err(&key, format!("`{url}` is listed twice")));
        }
        urls.push(url);
    }
    let path = match o.get("path") {
        None => KUBELET_PATHS[0].to_string(),
        Some(p) => {
            let p = string(p, "kubelet.path")?;
            if !KUBELET_PATHS.contains(&p.as_str()) {
                return Err(err(
                    "kubelet.path",
                    format!("`{p}` is not one of {}", KUBELET_PATHS.join(", ")),
                ));
            }
            p
        }
    };
    let token_file = o
        .get("token_file")
        .map(|v| readable(v, "kubelet.token_file"))
        .transpose()?;
    let tls = tls(o, "kubelet", urls.iter().any(|u| u.starts_with("https://")))?;
    let second_scrape = values::duration(
        o,
        "second_scrape",
        Duration::from_secs(15),
        Duration::from_secs(120),
    )
    .map_err(|e| err(format!("kubelet.{}", e.key), e.message))?;
    Ok(Kubelet {
        urls,
        path,
        token_file,
        tls,
        second_scrape,
    })
}

fn prometheus(v: &Value) -> Result<Prometheus, ConfigError> {
    let o = object(v, "prometheus")?;
    reject_unknown(o, PROMETHEUS_KEYS, "prometheus.")?;
    let url = o.get("url").ok_or_else(|| {
        err(
            "prometheus.url",
            "missing: the server's base URL, e.g. \"http://prometheus:9090\"",
        )
    })?;
    let url =
        values::base_url(&string(url, "prometheus.url")?).map_err(|m| err("prometheus.url", m))?;
    let selector = match o.get("selector") {
        None => String::new(),
        Some(s) => {
            let s = s
                .as_str()
                .ok_or_else(|| err("prometheus.selector", format!("must be a string, not {s}")))?;
            let s = s
                .trim()
                .trim_start_matches('{')
                .trim_end_matches('}')
                .trim();
            if !s.is_empty() && !matchers().is_match(s) {
                return Err(err(
                    "prometheus.selector",
                    format!("`{s}` is not label matchers such as job=\"cadvisor\",env=~\"prod|staging\""),
                ));
            }
            s.trim_end_matches(',').to_string()
        }
    };
    let host_label = match o.get("host_label") {
        None => "instance".to_string(),
        Some(v) => {
            let l = string(v, "prometheus.host_label")?;
            if !Regex::new("^[a-zA-Z_][a-zA-Z0-9_]*$").is_ok_and(|r| r.is_match(&l)) {
                return Err(err(
                    "prometheus.host_label",
                    format!("`{l}` is not a label name"),
                ));
            }
            l
        }
    };
    let token = o
        .get("token_file")
        .map(|v| readable(v, "prometheus.token_file"))
        .transpose()?;
    let basic = o.get("basic_auth").map(basic_auth).transpose()?;
    let auth = match (token, basic) {
        (Some(_), Some(_)) => {
            return Err(err(
                "prometheus.basic_auth",
                "use either `token_file` or `basic_auth`, not both",
            ))
        }
        (Some(t), None) => Some(Auth::BearerFile(t)),
        (None, b) => b,
    };
    let tls = tls(o, "prometheus", url.starts_with("https://"))?;
    Ok(Prometheus {
        url,
        selector,
        host_label,
        tls,
        auth,
    })
}

fn basic_auth(v: &Value) -> Result<Auth, ConfigError> {
    let o = object(v, "prometheus.basic_auth")?;
    reject_unknown(o, &["username", "password_file"], "prometheus.basic_auth.")?;
    let username = o
        .get("username")
        .ok_or_else(|| err("prometheus.basic_auth.username", "missing"))?;
    let username = string(username, "prometheus.basic_auth.username")?;
    let password_file = o.get("password_file").ok_or_else(|| {
        err(
            "prometheus.basic_auth.password_file",
            "missing: the file holding the password (it is never written in the config)",
        )
    })?;
    Ok(Auth::Basic {
        username,
        password_file: readable(password_file, "prometheus.basic_auth.password_file")?,
    })
}

/// `{label op "value", ...}`'s inside, as PromQL reads it.
fn matchers() -> Regex {
    let one = r#"[a-zA-Z_][a-zA-Z0-9_]*\s*(=~|!~|!=|=)\s*"(?:[^"\\]|\\.)*""#;
    Regex::new(&format!(r"^{one}(\s*,\s*{one})*\s*,?$")).expect("a valid regex")
}

/// A file hatune will read, at `key`: it must be readable now (it is read again when it
/// changes).
fn readable(v: &Value, key: &str) -> Result<PathBuf, ConfigError> {
    let path = PathBuf::from(string(v, key)?);
    std::fs::File::open(&path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(path)
}

/// `ca_file`, `client_cert_file` and `insecure_skip_verify` of a source; HTTPS needs a CA or
/// an explicit skip (there is no bundled root store: a kubelet's certificate is the cluster's).
pub(super) fn tls(o: &Map<String, Value>, prefix: &str, https: bool) -> Result<Tls, ConfigError> {
    let ca_key = format!("{prefix}.ca_file");
    let ca_file = o.get("ca_file").map(|v| readable(v, &ca_key)).transpose()?;
    if let Some(path) = &ca_file {
        let pem = std::fs::read(path).map_err(|e| err(&ca_key, e.to_string()))?;
        match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            _ => {
                return Err(err(
                    &ca_key,
                    format!("{} holds no PEM certificate", path.display()),
                ))
            }
        }
    }
    let identity_key = format!("{prefix}.client_cert_file");
    let identity_file = o
        .get("client_cert_file")
        .map(|v| readable(v, &identity_key))
        .transpose()?;
    if let Some(path) = &identity_file {
        let pem = std::fs::read(path).map_err(|e| err(&identity_key, e.to_string()))?;
        reqwest::Identity::from_pem(&pem).map_err(|_| {
            err(
                &identity_key,
                format!(
                    "{} must hold a PEM certificate and its private key",
                    path.display()
                ),
            )
        })?;
    }
    let skip_key = format!("{prefix}.insecure_skip_verify");
    let insecure = match o.get("insecure_skip_verify") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(err(&skip_key, format!("must be true or false, not {v}"))),
    };
    if insecure && ca_file.is_some() {
        return Err(err(
            &skip_key,
            "use either `ca_file` or `insecure_skip_verify`, not both",
        ));
    }
    if https && !insecure && ca_file.is_none() {
        return Err(err(
            &ca_key,
            "missing: HTTPS needs the CA that signed the servers' certificates (or \"insecure_skip_verify\": true, which checks nothing)",
        ));
    }
    Ok(Tls {
        ca_file,
        insecure,
        identity_file,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn parse(sources: &str) -> Result<Config, crate::config::ConfigError> {
        Config::parse(&format!(
            r#"{{"haproxy": "/s", {sources} "backends": [{{"name": "a", "pattern": "a"}}]}}"#
        ))
    }

    /// Each source alone is a whole config; JSON and /metrics URLs mix in one list.
    #[test]
    fn any_source_alone_or_mixed() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0k3n\n").unwrap();
        let c = parse(r#""cadvisor": ["http://h:8080", "http://h2:8080/metrics", "http://h3:8080/metrics/"],"#).unwrap();
        assert_eq!(c.cadvisor, ["http://h:8080"]);
        assert_eq!(
            c.cadvisor_metrics,
            ["http://h2:8080/metrics", "http://h3:8080/metrics"]
        );
        let c = parse(r#""prometheus": {"url": "http://prom:9090", "selector": "{job=\"cadvisor\", env=~\"prod|x\",}"},"#).unwrap();
        assert!(c.cadvisor.is_empty() && c.cadvisor_metrics.is_empty());
        let p = c.prometheus.unwrap();
        assert_eq!(p.selector, r#"job="cadvisor", env=~"prod|x""#);
        assert_eq!(p.host_label, "instance");
        let c = parse(&format!(
            r#""kubelet": {{"urls": ["https://n1:10250"], "insecure_skip_verify": true, "token_file": "{}"}},"#,
            token.display()
        ))
        .unwrap();
        let k = c.kubelet.unwrap();
        assert_eq!(k.path, "/metrics/resource");
        assert_eq!(k.second_scrape, std::time::Duration::from_secs(15));
        assert!(k.tls.insecure);
    }

    /// Each mistake names its key.
    #[test]
    fn mistakes_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let notpem = dir.path().join("ca.pem");
        std::fs::write(&notpem, "hello").unwrap();
        let cases = [
            ("", "cadvisor", "name at least one source"),
            (
                r#""kubelet": {"urls": ["https://n:10250"]},"#,
                "kubelet.ca_file",
                "HTTPS needs the CA",
            ),
            (
                r#""kubelet": {"urls": ["https://n:10250/metrics"], "insecure_skip_verify": true},"#,
                "kubelet.urls[0]",
                "has a path",
            ),
            (
                r#""kubelet": {"urls": ["http://n:10255"], "path": "/stats"},"#,
                "kubelet.path",
                "is not one of",
            ),
            (
                r#""kubelet": {"urls": ["http://n:10255"], "token_file": "/nonexistent/t"},"#,
                "kubelet.token_file",
                "cannot read",
            ),
            (
                r#""kubelet": {"urls": ["http://n:10255"], "colour": 1},"#,
                "kubelet.colour",
                "unknown key",
            ),
            (
                r#""kubelet": {"urls": ["http://n:10255"], "second_scrape": "5m"},"#,
                "kubelet.second_scrape",
                "longer than",
            ),
            (
                r#""kubelet": {"urls": ["https://n:10250"], "insecure_skip_verify": "yes"},"#,
                "kubelet.insecure_skip_verify",
                "true or false",
            ),
            (r#""prometheus": {},"#, "prometheus.url", "missing"),
            (
                r#""prometheus": {"url": "prom:9090"},"#,
                "prometheus.url",
                "http://",
            ),
            (
                r#""prometheus": {"url": "http://p", "selector": "job=cadvisor"},"#,
                "prometheus.selector",
                "label matchers",
            ),
            (
                r#""prometheus": {"url": "http://p", "host_label": "in-stance"},"#,
                "prometheus.host_label",
                "not a label name",
            ),
            (
                r#""prometheus": {"url": "http://p", "basic_auth": {"username": "u"}},"#,
                "prometheus.basic_auth.password_file",
                "missing",
            ),
            (
                r#""prometheus": "http://p","#,
                "prometheus",
                "must be an object",
            ),
            (
                r#""cadvisor": ["http://h:1/metrics", "http://h:1/metrics/"],"#,
                "cadvisor",
                "listed twice",
            ),
        ];
        for (sources, key, words) in cases {
            let e = parse(sources).unwrap_err();
            assert_eq!(e.key, key, "{sources}: {e}");
            assert!(e.message.contains(words), "{sources}: {e}");
        }
        let e = parse(&format!(
            r#""prometheus": {{"url": "https://p", "ca_file": "{}"}},"#,
            notpem.display()
        ))
        .unwrap_err();
        assert_eq!(
            (e.key.as_str(), e.message.contains("no PEM")),
            ("prometheus.ca_file", true),
            "{e}"
        );
    }
}

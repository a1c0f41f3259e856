//! Several balancers, one set of weights: each server's row is taken from the balancer where
//! it serves. Pure.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::{ServerView, View};

/// One view's servers grouped by backend, once per tick (not one scan per backend).
pub fn by_backend(view: &View) -> HashMap<&str, Vec<&ServerView>> {
    let mut groups: HashMap<&str, Vec<&ServerView>> = HashMap::new();
    for s in &view.servers {
        groups.entry(s.key.backend.as_str()).or_default().push(s);
    }
    groups
}

/// One row per server of `backend` across every balancer read (each grouped by
/// [`by_backend`]), in the order they first appear. Balancers may disagree (an operator drained
/// a server on one instance only): a server takes part when it serves on any instance, with
/// that instance's row, so every instance gets one set of weights and each keeps its own
/// drains. Among serving rows, one holding the weight hatune set there is preferred (another
/// instance may hold a stale weight from while the server was drained there). The second item
/// is hatune's weight when every instance where the server serves has an operator's weight
/// instead.
pub fn merge<'a>(
    backend: &str,
    grouped: &[HashMap<&str, Vec<&'a ServerView>>],
) -> Vec<(&'a ServerView, Option<u32>)> {
    let mut order: Vec<&str> = vec![];
    let mut rows: HashMap<&str, Vec<&'a ServerView>> = HashMap::new();
    for groups in grouped {
        for &s in groups.get(backend).into_iter().flatten() {
            let entry = rows.entry(s.key.server.as_str()).or_default();
            if entry.is_empty() {
                order.push(s.key.server.as_str());
            }
            entry.push(s);
        }
    }
    order
        .into_iter()
        .map(|name| {
            let candidates = &rows[name];
            let serving = || candidates.iter().filter(|s| s.exclusion.is_none());
            let free = || serving().filter(|s| s.overridden.is_none());
            if let Some(s) = free().find(|s| s.ours).or_else(|| free().next()) {
                return (*s, None);
            }
            if let Some(s) = serving().next() {
                return (*s, s.overridden);
            }
            (candidates[0], None)
        })
        .collect()
}

/// Servers of `backend` whose serving rows hold different addresses on different balancers
/// (each instance resolved its `server-template` slots on its own, say), with the addresses:
/// one name is then several servers, and no container is that name's.
pub fn differing_addresses<'a>(
    backend: &str,
    grouped: &[HashMap<&str, Vec<&'a ServerView>>],
) -> HashMap<&'a str, Vec<SocketAddr>> {
    let mut seen: HashMap<&'a str, Vec<SocketAddr>> = HashMap::new();
    for groups in grouped {
        for &s in groups.get(backend).into_iter().flatten() {
            let (Some(addr), None) = (s.address, &s.exclusion) else {
                continue;
            };
            let list = seen.entry(s.key.server.as_str()).or_default();
            if !list.contains(&addr) {
                list.push(addr);
            }
        }
    }
    seen.retain(|_, list| list.len() > 1);
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{Reason, ServerKey};

    fn row(server: &str, exclusion: Option<Reason>, w: u32) -> ServerView {
        ServerView {
            exclusion,
            ..ServerView::new(ServerKey::new("app", server), w)
        }
    }

    fn view(servers: Vec<ServerView>) -> View {
        View {
            servers,
            ..View::default()
        }
    }

    #[test]
    fn a_server_serving_on_any_instance_takes_part_with_that_row() {
        let drain = Some(Reason::Drain);
        let maint = Some(Reason::Maint);
        let mut first = view(vec![
            row("a", drain.clone(), 100),
            row("b", None, 100),
            row("c", maint.clone(), 100),
            row("d", None, 40),
            ServerView {
                key: ServerKey::new("other", "x"),
                ..row("x", None, 1)
            },
        ]);
        let mut second = view(vec![
            row("a", None, 120),
            row("b", None, 90),
            row("c", maint, 100),
            row("d", None, 50),
            row("e", None, 7),
        ]);
        // The operator's weight on the first only.
        first.servers[3].overridden = Some(64);
        let got = |first: &View, second: &View| -> Vec<(String, bool, u32, Option<u32>)> {
            let grouped = [by_backend(first), by_backend(second)];
            merge("app", &grouped)
                .iter()
                .map(|(s, o)| (s.key.server.clone(), s.exclusion.is_none(), s.holds, *o))
                .collect()
        };
        assert_eq!(
            got(&first, &second),
            vec![
                ("a".into(), true, 120, None), // drained on the first only: serves on the second
                ("b".into(), true, 100, None), // serving on both: the first's row
                ("c".into(), false, 100, None),
                ("d".into(), true, 50, None), // the operator's weight on the first only
                ("e".into(), true, 7, None),  // only the second has it
            ]
        );
        second.servers[3].overridden = Some(64);
        assert_eq!(
            got(&first, &second)[3].3,
            Some(64),
            "operators' weights on every instance"
        );
    }

    /// Another instance may still hold a weight from while the server was drained there: the
    /// row with hatune's own weight wins, whatever the order of balancers.
    #[test]
    fn the_row_with_hatunes_weight_is_preferred() {
        let a = view(vec![row("app-1", None, 100)]);
        let mut b = view(vec![row("app-1", None, 256)]);
        b.servers[0].ours = true;
        let grouped = [by_backend(&a), by_backend(&b)];
        assert_eq!(merge("app", &grouped)[0].0.holds, 256);
    }

    /// A name whose serving rows sit at different addresses on two balancers is said, with
    /// both; the same address twice, a row without one, or a drained row is not a difference.
    #[test]
    fn differing_addresses_are_found_across_balancers() {
        let at = |server: &str, addr: Option<&str>, exclusion: Option<Reason>| ServerView {
            address: addr.map(|a| a.parse().unwrap()),
            ..row(server, exclusion, 100)
        };
        let a = view(vec![
            at("srv1", Some("10.0.0.1:80"), None),
            at("srv2", Some("10.0.0.2:80"), None),
            at("srv3", Some("10.0.0.3:80"), None),
            at("srv4", None, None),
        ]);
        let b = view(vec![
            at("srv1", Some("10.0.0.9:80"), None),
            at("srv2", Some("10.0.0.2:80"), None),
            at("srv3", Some("10.0.0.7:80"), Some(Reason::Maint)),
            at("srv4", Some("10.0.0.4:80"), None),
        ]);
        let grouped = vec![by_backend(&a), by_backend(&b)];
        let d = differing_addresses("app", &grouped);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d["srv1"],
            [
                "10.0.0.1:80".parse().unwrap(),
                "10.0.0.9:80".parse::<SocketAddr>().unwrap()
            ]
        );
    }
}

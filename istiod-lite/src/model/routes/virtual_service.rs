//! VirtualService → `RouteRule`s of one service port, in `http[]` order (the port is pushed
//! `ordered`: first match wins, as in Istio).
//!
//! Binding: a VirtualService applies to mesh traffic when `gateways` is empty or names
//! `mesh`; it binds to a Service when one of its `hosts` resolves to the Service's FQDN (a
//! short name in the VirtualService's namespace, or the FQDN). When several bind to one host
//! the oldest wins (Istio's rule for mesh traffic), with a warning.

use mesh_proto::route::{
    self as pb, filter, path_match, path_modifier, PathMatch, PathModifier, RouteMatch, RouteRule,
    ValueMatch,
};

use super::destination_rule::{resolve_host, service_of};
use super::{backend, ModelParams};
use crate::model::service::hostname;
use crate::source::networking as net;
use crate::source::{ConfigSnapshot, ObjectKey, Service};

/// Istio's default retry policy when a VirtualService rule has no `retries`: 2 attempts on
/// connect-failure, refused-stream, unavailable, cancelled and retriable-status-codes (503).
const DEFAULT_ATTEMPTS: u32 = 2;

/// The VirtualService bound to `svc` and its rules for `port`; `None` when none binds.
pub fn rules_for(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    svc: &Service,
    port: u16,
) -> Option<(ObjectKey, Vec<RouteRule>)> {
    let host = hostname(&svc.metadata.name, svc.metadata.ns());
    let mut bound: Vec<(&ObjectKey, &net::VirtualService)> = cfg
        .virtual_services
        .iter()
        .filter(|(k, v)| {
            v.for_mesh()
                && v.spec
                    .hosts
                    .iter()
                    .any(|h| resolve_host(h, &k.namespace) == host)
        })
        .map(|(k, v)| (k, v.as_ref()))
        .collect();
    bound.sort_by_key(|(k, v)| {
        (
            v.metadata.creation_timestamp.clone().unwrap_or_default(),
            k.to_string(),
        )
    });
    let (key, vs) = *bound.first()?;
    if bound.len() > 1 {
        let ignored: Vec<String> = bound[1..].iter().map(|(k, _)| k.to_string()).collect();
        tracing::warn!(%host, used = %key, ?ignored, "several VirtualServices bind one host; the oldest applies");
    }
    let mut rules = Vec::new();
    for (i, r) in vs.spec.http.iter().enumerate() {
        if let Some(rule) = http_rule(cfg, params, key, vs, svc, port, i, r) {
            rules.push(rule);
        }
    }
    Some((key.clone(), rules))
}

fn value_match(name: &str, m: &net::StringMatch) -> ValueMatch {
    let (value, regex) = match (&m.exact, &m.prefix, &m.regex) {
        (Some(e), _, _) => (e.clone(), false),
        (_, Some(p), _) => (format!("{}.*", regex::escape(p)), true),
        (_, _, Some(r)) => (r.clone(), true),
        _ => (String::new(), false),
    };
    ValueMatch {
        name: name.to_string(),
        value,
        regex,
    }
}

fn route_match(m: &net::HttpMatchRequest) -> RouteMatch {
    RouteMatch {
        path: m.uri.as_ref().map(|u| {
            let mut pm = PathMatch::default();
            match (&u.exact, &u.prefix, &u.regex) {
                (Some(e), _, _) => {
                    pm.set_kind(path_match::Kind::Exact);
                    pm.value = e.clone();
                }
                (_, Some(p), _) => {
                    pm.set_kind(path_match::Kind::StringPrefix);
                    pm.value = p.clone();
                }
                (_, _, Some(r)) => {
                    pm.set_kind(path_match::Kind::Regex);
                    pm.value = r.clone();
                }
                _ => {}
            }
            pm
        }),
        headers: m
            .headers
            .iter()
            .map(|(k, v)| value_match(&k.to_ascii_lowercase(), v))
            .collect(),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| value_match(k, v))
            .collect(),
        method: m
            .method
            .as_ref()
            .and_then(|me| me.exact.clone())
            .unwrap_or_default(),
    }
}

/// A destination as a backend: the Service the host names, the port (given, else this
/// port when it is the same Service or the target has it, else the target's only port).
fn destination(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    key: &ObjectKey,
    port: u16,
    d: &net::Destination,
    weight: u32,
) -> Option<pb::Backend> {
    let host = resolve_host(&d.host, &key.namespace);
    let Some((ns, name)) = service_of(&host) else {
        tracing::warn!(virtual_service = %key, %host, "destination is not a Service of this cluster; left out");
        return None;
    };
    let target = cfg.services.get(&ObjectKey::new(ns, name));
    let p = match (d.port, target) {
        (Some(p), _) => p.number,
        (None, Some(t)) if t.spec.ports.iter().any(|sp| sp.port == port) => port,
        (None, Some(t)) if t.spec.ports.len() == 1 => t.spec.ports[0].port,
        _ => port,
    };
    Some(backend(
        cfg,
        params,
        ns,
        name,
        p,
        weight,
        d.subset.as_deref(),
    ))
}

fn header_ops(h: &net::HeaderOperations) -> pb::HeaderModifier {
    let pairs = |m: &std::collections::BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| pb::Header {
                name: k.clone(),
                value: v.clone(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: pairs(&h.set),
        add: pairs(&h.add),
        remove: h.remove.clone(),
    }
}

fn millis(v: Option<&String>) -> u64 {
    v.and_then(|v| mesh_config::parse_duration(v).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn percent(p: Option<&net::Percent>) -> f64 {
    p.map_or(100.0, |p| p.value)
}

/// Istio's retry translation: conditions by name, numbers as retriable status codes.
fn retry(r: Option<&net::HttpRetry>) -> Option<pb::RetryPolicy> {
    let default_on = || pb::RetryOn {
        connect_failure: true,
        ..Default::default()
    };
    let Some(r) = r else {
        return Some(pb::RetryPolicy {
            attempts: DEFAULT_ATTEMPTS,
            codes: vec![503],
            retry_on: Some(default_on()),
            ..Default::default()
        });
    };
    let attempts = r.attempts.unwrap_or(DEFAULT_ATTEMPTS);
    if attempts == 0 {
        return None;
    }
    let (on, codes) = match &r.retry_on {
        None => (default_on(), vec![503]),
        Some(list) => {
            let mut on = pb::RetryOn::default();
            let mut codes = Vec::new();
            for c in list.split(',').map(str::trim) {
                match c {
                    "5xx" => on.server_error = true,
                    "gateway-error" => on.gateway_error = true,
                    "connect-failure" | "refused-stream" => on.connect_failure = true,
                    "retriable-4xx" => on.retriable_4xx = true,
                    "reset" => on.reset = true,
                    other => {
                        if let Ok(n) = other.parse::<u32>() {
                            codes.push(n);
                        }
                    }
                }
            }
            (on, codes)
        }
    };
    Some(pb::RetryPolicy {
        attempts,
        codes,
        backoff_ms: 0,
        per_try_timeout_ms: millis(r.per_try_timeout.as_ref()),
        retry_on: Some(on),
    })
}

#[allow(clippy::too_many_arguments)]
fn http_rule(
    cfg: &ConfigSnapshot,
    params: &ModelParams,
    key: &ObjectKey,
    vs: &net::VirtualService,
    _svc: &Service,
    port: u16,
    index: usize,
    r: &net::HttpRoute,
) -> Option<RouteRule> {
    // `match.port` narrows a match to one service port; a rule whose every match names
    // another port does not apply here.
    let matches: Vec<RouteMatch> = r
        .matches
        .iter()
        .filter(|m| m.port.is_none_or(|p| p == port))
        .map(route_match)
        .collect();
    if !r.matches.is_empty() && matches.is_empty() {
        return None;
    }
    let single = r.route.len() == 1;
    let backends = r
        .route
        .iter()
        .filter_map(|d| {
            let w = d.weight.unwrap_or(if single { 100 } else { 0 });
            destination(cfg, params, key, port, &d.destination, w)
        })
        .collect();
    let mut filters = Vec::new();
    let mut push = |k: filter::Kind| filters.push(pb::Filter { kind: Some(k) });
    if let Some(h) = &r.headers {
        if let Some(req) = &h.request {
            push(filter::Kind::RequestHeaderModifier(header_ops(req)));
        }
        if let Some(resp) = &h.response {
            push(filter::Kind::ResponseHeaderModifier(header_ops(resp)));
        }
    }
    if let Some(rw) = &r.rewrite {
        push(filter::Kind::UrlRewrite(pb::Rewrite {
            hostname: rw.authority.clone().unwrap_or_default(),
            path: rw.uri.as_ref().map(|u| {
                // The waypoint replaces the matched prefix after a prefix match and the whole
                // path after an exact or regex match, as Envoy's prefix_rewrite does.
                let mut pm = PathModifier {
                    value: u.clone(),
                    ..Default::default()
                };
                pm.set_kind(path_modifier::Kind::LiteralPrefix);
                pm
            }),
        }));
    }
    if let Some(rd) = &r.redirect {
        push(filter::Kind::RequestRedirect(pb::Redirect {
            scheme: rd.scheme.clone().unwrap_or_default(),
            hostname: rd.authority.clone().unwrap_or_default(),
            path: rd.uri.as_ref().map(|u| {
                let mut pm = PathModifier {
                    value: u.clone(),
                    ..Default::default()
                };
                pm.set_kind(path_modifier::Kind::Full);
                pm
            }),
            port: rd.port.map(u32::from).unwrap_or(0),
            status_code: u32::from(rd.redirect_code.unwrap_or(301)),
        }));
    }
    let mirrors = r
        .mirror
        .iter()
        .map(|d| (d, percent(r.mirror_percentage.as_ref())))
        .chain(
            r.mirrors
                .iter()
                .map(|m| (&m.destination, percent(m.percentage.as_ref()))),
        );
    for (d, pct) in mirrors {
        if let Some(b) = destination(cfg, params, key, port, d, 1) {
            push(filter::Kind::RequestMirror(pb::Mirror {
                backend: Some(b),
                percent: pct,
            }));
        }
    }
    let fault = r.fault.as_ref().map(|f| pb::FaultInjection {
        delay: f.delay.as_ref().map(|d| pb::fault_injection::Delay {
            fixed_delay_ms: millis(d.fixed_delay.as_ref()),
            percent: percent(d.percentage.as_ref()),
        }),
        abort: f.abort.as_ref().map(|a| pb::fault_injection::Abort {
            http_status: u32::from(a.http_status.unwrap_or(503)),
            percent: percent(a.percentage.as_ref()),
        }),
    });
    Some(RouteRule {
        route: key.to_string(),
        kind: "VirtualService".into(),
        rule_index: u32::try_from(index).unwrap_or(u32::MAX),
        creation_timestamp: vs.metadata.creation_timestamp.clone().unwrap_or_default(),
        matches,
        filters,
        backends,
        request_timeout_ms: millis(r.timeout.as_ref()),
        backend_request_timeout_ms: 0,
        retry: if r.redirect.is_some() {
            None
        } else {
            retry(r.retries.as_ref())
        },
        fault,
    })
}

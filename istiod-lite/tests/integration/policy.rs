//! Security policy over xDS: a policy file edit pushes the Authorization resource and
//! re-pushes the workloads that list it; deleting the file removes both.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mesh_proto::security::{string_match::MatchType, Action, Authorization, Scope};
use mesh_proto::workload::{address, Workload};
use mesh_proto::xds::DeltaDiscoveryResponse;
use mesh_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};
use prost::Message;

use crate::harness::*;

const POLICY: &str = "demo-b/deny-client";

fn deny_policy(principal: &str) -> String {
    format!(
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-client, namespace: demo-b}}
spec:
  selector:
    matchLabels: {{app: server}}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["{principal}"]
"#
    )
}

fn authorization(r: &DeltaDiscoveryResponse, name: &str) -> Authorization {
    let res = r
        .resources
        .iter()
        .find(|x| x.name == name)
        .unwrap_or_else(|| panic!("{name} not in response"));
    let any = res.resource.as_ref().unwrap();
    assert_eq!(any.type_url, AUTHORIZATION_TYPE_URL);
    Authorization::decode(any.value.as_slice()).unwrap()
}

fn server_workload(r: &DeltaDiscoveryResponse) -> Workload {
    match decode(r, SERVER_UID) {
        address::Type::Workload(w) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

/// Receives (and ACKs) responses until one of each type has arrived; returns (Address,
/// Authorization).
async fn one_of_each(c: &mut XdsClient) -> (DeltaDiscoveryResponse, DeltaDiscoveryResponse) {
    let (mut addr, mut authz) = (None, None);
    while addr.is_none() || authz.is_none() {
        let r = c.recv_within(Duration::from_secs(2)).await;
        c.ack(&r).await;
        let slot = if r.type_url == ADDRESS_TYPE_URL {
            &mut addr
        } else {
            &mut authz
        };
        assert!(slot.is_none(), "two {} responses: {r:?}", r.type_url);
        *slot = Some(r);
    }
    (addr.unwrap(), authz.unwrap())
}

#[tokio::test]
async fn policy_file_edits_push_authorizations_and_workload_policy_lists() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node2")), "node2", HashMap::new())
        .await
        .unwrap();
    let initial = c.initial().await;
    assert!(server_workload(&initial).authorization_policies.is_empty());

    // A new policy: the Authorization is pushed, and the server workload now lists it.
    std::fs::write(
        h.config_file("policy.yaml"),
        deny_policy("cluster.local/ns/demo-a/sa/client"),
    )
    .unwrap();
    let started = Instant::now();
    let (addr, authz) = one_of_each(&mut c).await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(names(&authz), vec![POLICY]);
    let a = authorization(&authz, POLICY);
    assert_eq!(
        (a.name.as_str(), a.namespace.as_str()),
        ("deny-client", "demo-b")
    );
    assert_eq!(a.action(), Action::Deny);
    assert_eq!(a.scope(), Scope::WorkloadSelector);
    let principal = &a.rules[0].clauses[0].matches[0].principals[0];
    assert_eq!(
        principal.match_type,
        Some(MatchType::Exact("cluster.local/ns/demo-a/sa/client".into()))
    );
    assert_eq!(names(&addr), vec![SERVER_UID], "only the selected workload");
    assert_eq!(server_workload(&addr).authorization_policies, vec![POLICY]);

    // Editing the rule changes only the Authorization: the workload's list is the same.
    std::fs::write(
        h.config_file("policy.yaml"),
        deny_policy("cluster.local/ns/demo-a/sa/*"),
    )
    .unwrap();
    let r = c.recv_within(Duration::from_secs(2)).await;
    c.ack(&r).await;
    assert_eq!(
        r.type_url, AUTHORIZATION_TYPE_URL,
        "no Address change: {r:?}"
    );
    let principal = &authorization(&r, POLICY).rules[0].clauses[0].matches[0].principals[0];
    assert_eq!(
        principal.match_type,
        Some(MatchType::Prefix("cluster.local/ns/demo-a/sa/".into()))
    );

    // Deleting the file removes the policy and the workload's reference to it.
    std::fs::remove_file(h.config_file("policy.yaml")).unwrap();
    let (addr, authz) = one_of_each(&mut c).await;
    assert_eq!(authz.removed_resources, vec![POLICY]);
    assert!(server_workload(&addr).authorization_policies.is_empty());
}

#[tokio::test]
async fn warnings_are_counted_per_policy_and_bad_policies_rejected() {
    let h = Harness::start().await;
    let mut c = XdsClient::connect(&h, Some(h.token("node2")), "node2", HashMap::new())
        .await
        .unwrap();
    c.initial().await;
    let metric = "istiod_policy_warnings_total{policy=\"demo-b/get-only\"}";
    let before = h.metric(metric).await.unwrap_or(0.0);
    let bad_before = h
        .metric("istiod_config_errors_total{kind=\"AuthorizationPolicy\"}")
        .await
        .unwrap_or(0.0);
    std::fs::write(
        h.config_file("l7.yaml"),
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: get-only, namespace: demo-b}\nspec:\n  rules: [{to: [{operation: {methods: [GET]}}]}]\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: demo-b}\nspec:\n  rules: [{to: [{operation: {ports: [http]}}]}]\n",
    )
    .unwrap();
    let r = c.recv_within(Duration::from_secs(2)).await;
    assert_eq!(r.type_url, AUTHORIZATION_TYPE_URL);
    assert_eq!(
        names(&r),
        vec!["demo-b/get-only"],
        "the invalid policy is skipped"
    );
    assert!(
        authorization(&r, "demo-b/get-only").rules.is_empty(),
        "the HTTP-only ALLOW rule is left out: the policy allows nothing"
    );
    assert_eq!(h.metric(metric).await, Some(before + 1.0));
    assert_eq!(
        h.metric("istiod_config_errors_total{kind=\"AuthorizationPolicy\"}")
            .await,
        Some(bad_before + 1.0)
    );
    let (_, body) = h.http_get("/debug/config").await;
    let cfg: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        cfg["errors"][0]["field"],
        "spec.rules[0].to[0].operation.ports[0]"
    );
    assert!(cfg["authorization_policies"]["demo-b/get-only"].is_object());
}

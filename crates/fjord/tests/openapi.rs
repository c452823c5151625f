//! The OpenAPI document is true: served at /v1/openapi.json, and every
//! documented operation, called on a live node, answers with one of the
//! statuses documented for it (never "no such route" or "method not
//! allowed"). The router-side check, that nothing is routed without being
//! documented, is a unit test of `fjord-http`.

mod common;

use common::{http, Node};
use serde_json::{json, Value};

#[tokio::test]
async fn every_documented_operation_answers_as_documented() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let c = http();
    let doc: Value = c
        .get(format!("{}/v1/openapi.json", node.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
    assert_eq!(
        doc,
        serde_json::from_str::<Value>(fjord_http::OPENAPI_JSON).unwrap()
    );
    // Something to describe.
    c.post(format!("{}/v1/streams/public/default", node.url))
        .json(&json!({"name": "doc"}))
        .send()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "post", "put", "patch", "delete"] {
            let Some(op) = item.get(m) else { continue };
            let url = format!("{}{}", node.url, path)
                .replace("{tenant}", "public")
                .replace("{namespace}", "default")
                .replace("{stream}", "doc")
                .replace("{consumer}", "c1");
            let req = c.request(m.to_uppercase().parse().unwrap(), &url);
            // Deletes run against something that does not exist, so the probe
            // does not remove what later probes use.
            let req = if m == "delete" {
                c.request(
                    m.to_uppercase().parse().unwrap(),
                    url.replace("/public", "/nobody")
                        .replace("/doc", "/nothing"),
                )
            } else {
                req
            };
            let req = if op.get("requestBody").is_some() {
                req.json(&json!({}))
            } else {
                req
            };
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16().to_string();
            let body = resp.text().await.unwrap();
            let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            assert!(
                documented.iter().any(|s| **s == status),
                "{m} {path} answered {status} ({body}); documented: {documented:?}"
            );
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            assert!(
                !matches!(
                    code.as_deref(),
                    Some("route_not_found" | "method_not_allowed")
                ),
                "{m} {path}: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} operations checked");
}

//! The CLI against a running node: stream admin, produce from stdin and from
//! a file with key and headers, consume as JSON and raw, and the message when
//! no node answers.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{bin, Node};
use serde_json::Value;

fn fjord(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(bin())
        .args(args)
        .env("FJORD_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

#[test]
fn stream_admin_produce_and_consume() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let u = node.url.as_str();

    let out = ok(&fjord(
        u,
        &[
            "stream",
            "create",
            "sensors",
            "--partitions",
            "2",
            "--durability",
            "always",
            "--retention-ms",
            "600000",
        ],
        None,
    ));
    assert!(
        out.contains("created stream public/default/sensors with 2 partition(s)"),
        "{out}"
    );
    let out = ok(&fjord(u, &["stream", "list"], None));
    assert!(out.contains("sensors\t2 partition(s)"), "{out}");
    let d: Value =
        serde_json::from_str(&ok(&fjord(u, &["stream", "describe", "sensors"], None))).unwrap();
    assert_eq!(d["effective_policy"]["durability"], "always");
    assert_eq!(d["effective_policy"]["retention_ms"], 600000);

    let lines: String = (0..1200).map(|i| format!("reading {i}\n")).collect();
    let o = fjord(
        u,
        &[
            "produce",
            "sensors",
            "--key",
            "dev-9",
            "--header",
            "unit=C",
            "--header",
            "site=north",
        ],
        Some(&lines),
    );
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("produced 1200 record(s)"));
    let file = tmp.path().join("more.txt");
    std::fs::write(&file, "from file 1\nfrom file 2\n").unwrap();
    ok(&fjord(
        u,
        &[
            "produce",
            "sensors",
            "--key",
            "dev-9",
            "--file",
            file.to_str().unwrap(),
        ],
        None,
    ));

    let out = ok(&fjord(u, &["consume", "sensors"], None));
    let recs: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 1202);
    assert_eq!(recs[0]["value"], "reading 0");
    assert_eq!(recs[0]["key"], "dev-9");
    assert_eq!(recs[0]["headers"][1]["key"], "site");
    assert_eq!(recs[1199]["value"], "reading 1199");
    assert_eq!(recs[1201]["value"], "from file 2");
    let p = recs[0]["partition"].as_u64().unwrap().to_string();

    let out = ok(&fjord(
        u,
        &[
            "consume",
            "sensors",
            "--partition",
            &p,
            "--offset",
            "1200",
            "--format",
            "raw",
        ],
        None,
    ));
    assert_eq!(out, "from file 1\nfrom file 2\n");
    let out = ok(&fjord(
        u,
        &["consume", "sensors", "--max", "3", "--format", "raw"],
        None,
    ));
    assert_eq!(out, "reading 0\nreading 1\nreading 2\n");

    // Errors are clear.
    let o = fjord(u, &["stream", "create", "sensors"], None);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = fjord(u, &["stream", "create", "bad.name"], None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid_name"));

    ok(&fjord(u, &["stream", "delete", "sensors"], None));
    let o = fjord(u, &["stream", "describe", "sensors"], None);
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn a_missing_node_is_reported_plainly() {
    let port = common::free_port();
    let o = fjord(
        &format!("http://127.0.0.1:{port}"),
        &["stream", "list"],
        None,
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("no Fjord node answers at http://127.0.0.1:{port}")),
        "{err}"
    );
}

/// Runs the CLI logged in as `login` (password in FJORD_PASSWORD).
fn fjord_as(url: &str, login: Option<(&str, &str)>, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env("FJORD_URL", url)
        .env_remove("FJORD_USER")
        .env_remove("FJORD_PASSWORD")
        .env_remove("FJORD_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((u, p)) = login {
        cmd.env("FJORD_USER", u).env("FJORD_PASSWORD", p);
    }
    let mut child = cmd.spawn().unwrap();
    {
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
    }
    child.wait_with_output().unwrap()
}

#[test]
fn security_administration_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let admin_pw = tmp.path().join("admin");
    std::fs::write(&admin_pw, "cli admin password").unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "a-cli-test-secret-of-32-bytes-or-more").unwrap();
    let node = Node::start_with(&tmp.path().join("data"), &[], |cmd| {
        cmd.env("FJORD_AUTH__ADMIN_PASSWORD_FILE", &admin_pw)
            .env("FJORD_AUTH__TOKENS__HS256_SECRET_FILE", &secret)
            .env("FJORD_AUTH__ANONYMOUS_ADMIN", "false");
    });
    let u = node.url.as_str();
    let admin = Some(("system:admin", "cli admin password"));
    // Without credentials the admin API says who is missing.
    let o = fjord_as(u, None, &["tenant", "create", "acme"], None);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"), "{o:?}");
    ok(&fjord_as(u, admin, &["tenant", "create", "acme"], None));
    let out = ok(&fjord_as(
        u,
        admin,
        &[
            "user",
            "set",
            "acme:alice",
            "--role",
            "devices",
            "--quota",
            "connections=5",
        ],
        Some("alice's password\n"),
    ));
    let user: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(user["roles"], serde_json::json!(["devices"]));
    assert_eq!(user["quotas"]["connections"], 5);
    assert!(!out.contains("alice's password"));
    let out = ok(&fjord_as(
        u,
        admin,
        &[
            "acl",
            "add",
            "acme",
            "--principal",
            "role:devices",
            "--resource",
            "topic:x/#",
            "--action",
            "publish",
        ],
        None,
    ));
    let rule: Value = serde_json::from_str(&out).unwrap();
    let id = rule["id"].as_str().unwrap().to_string();
    let list = ok(&fjord_as(u, admin, &["acl", "list", "acme"], None));
    assert!(list.contains(&id) && list.contains("topic:x/#"), "{list}");
    let out = ok(&fjord_as(
        u,
        admin,
        &[
            "tenant",
            "settings",
            "acme",
            "--acl-default",
            "deny",
            "--anonymous",
            "false",
        ],
        None,
    ));
    let t: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(t["settings"]["acl_default"], "deny");
    // The user logs in with the password it was given.
    let mine = ok(&fjord_as(
        u,
        Some(("acme:alice", "alice's password")),
        &["tenant", "list"],
        None,
    ));
    assert!(mine.contains("acme") && !mine.contains("system"), "{mine}");
    // A development token works as a login.
    let token = ok(&fjord_as(
        u,
        admin,
        &["token", "issue", "acme:alice", "--ttl", "60"],
        None,
    ));
    let o = Command::new(bin())
        .args(["tenant", "list"])
        .env("FJORD_URL", u)
        .env_remove("FJORD_USER")
        .env("FJORD_TOKEN", token.trim())
        .output()
        .unwrap();
    assert!(ok(&o).contains("acme"));
    ok(&fjord_as(u, admin, &["acl", "delete", "acme", &id], None));
    let tls = ok(&fjord_as(u, admin, &["tls", "status"], None));
    assert!(tls.contains("\"enabled\": false"), "{tls}");
    ok(&fjord_as(u, admin, &["user", "delete", "acme:alice"], None));
}

/// `fjord sql`: one command, statements from stdin, CSV, and an error that
/// points at its place.
#[test]
fn sql_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let u = node.url.as_str();
    ok(&fjord(u, &["stream", "create", "readings"], None));
    ok(&fjord(
        u,
        &["produce", "readings", "--key", "dev-1"],
        Some("{\"t\": 20}\n{\"t\": 22}\n{\"t\": 24}\n"),
    ));
    let table = ok(&fjord(
        u,
        &[
            "sql",
            "-c",
            "SELECT _key, avg(json_get_float(value, 't')) AS avg_t FROM readings GROUP BY _key",
        ],
        None,
    ));
    assert!(
        table.contains("avg_t") && table.contains("22.0") && table.contains("(1 row)"),
        "{table}"
    );
    let csv = ok(&fjord(
        u,
        &["sql", "--format", "csv"],
        Some("SELECT count(*) AS n FROM readings; -- two statements\nSELECT max(_offset) AS last FROM readings;"),
    ));
    assert_eq!(csv, "n\n3\nlast\n2\n");
    let bad = fjord(u, &["sql", "-c", "SELECT nope FROM readings"], None);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("ERROR:") && err.contains("nope"), "{err}");
}

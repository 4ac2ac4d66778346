//! `meshgate intention check SRC DST`, run as the binary over a config directory: `Allowed`
//! (exit 0) or `Denied` (exit 1) with the deciding intention on stderr, 2 on errors.

use std::path::Path;
use std::process::Command;

fn check(dir: &Path, extra: &[&str], source: &str, destination: &str) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["intention", "check", "--config-dir"])
        .arg(dir)
        .args(extra)
        .args([source, destination])
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("MESHGATE_CONFIG_DIR")
        .output()
        .expect("run meshgate");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const INTENTIONS: &str = r#"
Kind = "service-defaults"
Name = "api"
Protocol = "http"
"#;

const API: &str = r#"
Kind: service-intentions
Name: api
Sources:
  - {Name: web, Action: allow}
  - {Name: batch, Action: deny}
  - Name: reporter
    Permissions:
      - Action: allow
        HTTP: {PathPrefix: /reports/}
  - {Name: "*", Action: deny}
---
Kind: service-intentions
Name: "*"
Sources:
  - {Name: ops, Action: allow}
  - {Name: web, Action: deny}
"#;

#[test]
fn a_table_of_intentions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("defaults.hcl"), INTENTIONS).unwrap();
    std::fs::write(dir.path().join("intentions.yaml"), API).unwrap();
    // (source, destination, --default-intention-policy, exit, stdout, stderr)
    let table = [
        (
            "web",
            "api",
            "deny",
            0,
            "Allowed",
            "intention web => api (allow), precedence 9",
        ),
        (
            "batch",
            "api",
            "allow",
            1,
            "Denied",
            "intention batch => api (deny), precedence 9",
        ),
        (
            "reporter",
            "api",
            "allow",
            1,
            "Denied",
            "intention reporter => api has L7 permissions, which count as deny at L4, precedence 9",
        ),
        // * => api (8) beats ops => * (6)
        (
            "ops",
            "api",
            "allow",
            1,
            "Denied",
            "intention * => api (deny), precedence 8",
        ),
        (
            "ops",
            "db",
            "deny",
            0,
            "Allowed",
            "intention ops => * (allow), precedence 6",
        ),
        (
            "web",
            "db",
            "allow",
            1,
            "Denied",
            "intention web => * (deny), precedence 6",
        ),
        ("other", "db", "deny", 1, "Denied", "default policy deny"),
        ("other", "db", "allow", 0, "Allowed", "default policy allow"),
    ];
    for (src, dst, default, code, stdout, stderr) in table {
        let (got_code, got_out, got_err) = check(
            dir.path(),
            &["--default-intention-policy", default],
            src,
            dst,
        );
        assert_eq!(
            (got_code, got_out.as_str(), got_err.as_str()),
            (
                code,
                format!("{stdout}\n").as_str(),
                format!("{stderr}\n").as_str()
            ),
            "{src} => {dst} (default {default})"
        );
    }
    // The default policy is deny.
    let (code, out, _) = check(dir.path(), &[], "other", "db");
    assert_eq!((code, out.as_str()), (1, "Denied\n"));
}

#[test]
fn a_broken_directory_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("intentions.hcl"),
        "Kind = \"service-intentions\"\nName = \"api\"\nSources = [{ Name = \"web\", Action = \"allow\", Colour = \"red\" }]\n",
    )
    .unwrap();
    let (code, out, err) = check(dir.path(), &[], "web", "api");
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out, "");
    assert!(err.contains("intentions.hcl:3:"), "{err}");
    assert!(err.contains("Colour"), "{err}");

    let (code, _, err) = check(Path::new("no/such/dir"), &[], "web", "api");
    assert_eq!(code, 2);
    assert!(err.contains("no/such/dir: not a directory"), "{err}");
}

#[test]
fn no_source_exits_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .args(["intention", "check", "web", "api"])
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("MESHGATE_CONFIG_DIR")
        .output()
        .expect("run meshgate");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--config-dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

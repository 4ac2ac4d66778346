//! `meshgate validate DIR`, run as the binary: every problem as `file:line: message` and
//! exit 1, or counts by kind and exit 0; 2 when the directory cannot be read.

use std::path::Path;
use std::process::Command;

fn validate(dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshgate"))
        .arg("validate")
        .arg(dir)
        .output()
        .expect("run meshgate");
    (
        out.status.code().expect("exit code"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn the_example_mesh_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mesh");
    let (code, stdout, stderr) = validate(&dir);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.starts_with("valid: 10 files, 36 documents, 0 warnings\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  service-intentions: 7\n"), "{stdout}");
    assert!(
        stdout.contains("  services: 17 (18 instances in 3 datacenters)\n"),
        "{stdout}"
    );
}

#[test]
fn errors_are_listed_with_their_lines_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("resolver.hcl"),
        "Kind = \"service-resolver\"\nName = \"api\"\nDefaultSubset = \"v2\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("exports.yaml"),
        "Kind: exported-services\nName: default\nServices:\n  - Name: api\n    Consumerz: []\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("intentions.yaml"),
        "Kind: service-defaults\nName: db\nProtocol: tcp\n---\nKind: service-intentions\nName: db\nSources:\n  - Name: web\n    Permissions:\n      - Action: allow\n        HTTP: {PathPrefix: /}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = validate(dir.path());
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with("exports.yaml:5: exported-services \"default\": "),
        "{stdout}"
    );
    assert!(lines[0].contains("Consumerz"), "{stdout}");
    assert_eq!(
        lines[1],
        "intentions.yaml:8: warning: service-intentions \"db\": source \"web\" has L7 Permissions but \"db\" speaks tcp: they count as deny"
    );
    assert_eq!(
        lines[2],
        "resolver.hcl:3: service-resolver \"api\": DefaultSubset \"v2\" is not one of its Subsets (it has none)"
    );
    assert!(stderr.contains("2 errors, 1 warning"), "{stderr}");
}

#[test]
fn a_missing_directory_exits_2() {
    let (code, _, stderr) = validate(Path::new("no/such/dir"));
    assert_eq!(code, 2);
    assert!(stderr.contains("no/such/dir: not a directory"), "{stderr}");
}

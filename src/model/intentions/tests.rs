use super::*;
use crate::model::ConfigEntries;

/// Config entries from YAML documents, as a config directory would hold them.
pub(crate) fn entries(yaml: &str) -> ConfigEntries {
    let loaded = crate::source::dir::load_files(&[("entries.yaml", yaml)], "dc1", 1);
    let errors: Vec<String> = loaded.errors().map(|p| p.to_string()).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    loaded.snapshot.entries
}

const L4: &str = r#"
Kind: service-intentions
Name: api
Sources:
  - {Name: web, Action: allow}
  - {Name: "*", Action: deny}
  - {Name: batch, Action: deny}
---
Kind: service-intentions
Name: "*"
Sources:
  - {Name: batch, Action: allow}
  - {Name: ops, Action: allow}
  - {Name: web, Action: deny}
  - {Name: "*", Action: allow}
"#;

#[test]
fn precedence_values_are_consuls() {
    // (source ns, source, destination ns, destination) → precedence (agent/structs/intention.go)
    let table = [
        (("default", "web"), ("default", "api"), 9),
        (("default", "*"), ("default", "api"), 8),
        (("*", "*"), ("default", "api"), 7),
        (("default", "web"), ("default", "*"), 6),
        (("default", "*"), ("default", "*"), 5),
        (("*", "*"), ("default", "*"), 4),
        (("default", "web"), ("*", "*"), 3),
        (("default", "*"), ("*", "*"), 2),
        (("*", "*"), ("*", "*"), 1),
    ];
    for ((sns, s), (dns, d), want) in table {
        assert_eq!(precedence(sns, s, dns, d), want, "{sns}/{s} => {dns}/{d}");
    }
}

#[test]
fn l4_check_follows_precedence_and_the_default() {
    let e = entries(L4);
    // (source, destination, default, allowed, reason)
    let table = [
        // exact => exact beats * => exact
        (
            "web",
            "api",
            DefaultPolicy::Deny,
            true,
            "intention web => api (allow), precedence 9",
        ),
        // * => api (8) decides for anyone without an exact intention, over every x => * (6)
        (
            "ops",
            "api",
            DefaultPolicy::Allow,
            false,
            "intention * => api (deny), precedence 8",
        ),
        // batch => api deny (9) beats batch => * allow (6)
        (
            "batch",
            "api",
            DefaultPolicy::Allow,
            false,
            "intention batch => api (deny), precedence 9",
        ),
        // another destination: only the * entry applies
        (
            "web",
            "db",
            DefaultPolicy::Allow,
            false,
            "intention web => * (deny), precedence 6",
        ),
        (
            "ops",
            "db",
            DefaultPolicy::Deny,
            true,
            "intention ops => * (allow), precedence 6",
        ),
        (
            "anyone",
            "db",
            DefaultPolicy::Deny,
            true,
            "intention * => * (allow), precedence 5",
        ),
    ];
    for (src, dst, default, allowed, reason) in table {
        let d = check(&e, src, dst, default);
        assert_eq!(d.allowed, allowed, "{src} => {dst}: {d:?}");
        assert_eq!(d.reason, reason, "{src} => {dst}");
    }
}

#[test]
fn no_intention_gives_the_default_policy() {
    let e =
        entries("Kind: service-intentions\nName: api\nSources:\n  - {Name: web, Action: allow}\n");
    for (default, allowed) in [(DefaultPolicy::Deny, false), (DefaultPolicy::Allow, true)] {
        let d = check(&e, "other", "api", default);
        assert_eq!(d.allowed, allowed);
        assert_eq!(d.reason, format!("default policy {}", default.as_str()));
        let d = check(&e, "web", "db", default);
        assert_eq!(d.allowed, allowed, "no entry for db");
    }
    assert!(check(&ConfigEntries::default(), "a", "b", DefaultPolicy::Allow).allowed);
    assert!(!check(&ConfigEntries::default(), "a", "b", DefaultPolicy::Deny).allowed);
}

#[test]
fn deny_does_not_win_over_a_higher_allow() {
    // A * deny under an exact allow; and a * allow under an exact deny.
    let e = entries(
        r#"
Kind: service-intentions
Name: api
Sources:
  - {Name: "*", Action: deny}
  - {Name: web, Action: allow}
---
Kind: service-intentions
Name: db
Sources:
  - {Name: "*", Action: allow}
  - {Name: web, Action: deny}
"#,
    );
    assert!(check(&e, "web", "api", DefaultPolicy::Deny).allowed);
    assert!(!check(&e, "other", "api", DefaultPolicy::Allow).allowed);
    assert!(!check(&e, "web", "db", DefaultPolicy::Allow).allowed);
    assert!(check(&e, "other", "db", DefaultPolicy::Deny).allowed);
}

#[test]
fn rules_are_sorted_and_shadowed_ones_left_out() {
    let e = entries(L4);
    let rules = rules_for(&e, "api");
    let listed: Vec<(String, String, u32, Action)> = rules
        .iter()
        .map(|r| {
            (
                r.source.clone(),
                r.destination.clone(),
                r.precedence,
                r.l4_action(),
            )
        })
        .collect();
    // batch => * and web => * share a source with a higher rule; ops => * and * => * are
    // covered by * => api.
    assert_eq!(
        listed,
        vec![
            ("batch".into(), "api".into(), 9, Action::Deny),
            ("web".into(), "api".into(), 9, Action::Allow),
            ("*".into(), "api".into(), 8, Action::Deny),
        ]
    );
    // For a destination without its own entry, the * entry, exact sources first by name.
    let rules: Vec<(String, u32)> = rules_for(&e, "db")
        .iter()
        .map(|r| (r.source.clone(), r.precedence))
        .collect();
    assert_eq!(
        rules,
        vec![
            ("batch".into(), 6),
            ("ops".into(), 6),
            ("web".into(), 6),
            ("*".into(), 5)
        ]
    );
}

#[test]
fn unsupported_sources_are_skipped() {
    let e = entries(
        r#"
Kind: service-intentions
Name: api
Sources:
  - {Name: web, Namespace: other, Action: allow}
  - {Name: "*/*", Action: allow}
  - {Name: "default/cli", Action: allow}
"#,
    );
    let rules = rules_for(&e, "api");
    let listed: Vec<(&str, &str, u32)> = rules
        .iter()
        .map(|r| (r.source_namespace.as_str(), r.source.as_str(), r.precedence))
        .collect();
    assert_eq!(listed, vec![("default", "cli", 9), ("*", "*", 7)]);
    assert_eq!(
        check(&e, "web", "api", DefaultPolicy::Deny).reason,
        "intention */* => api (allow), precedence 7"
    );
}

const L7: &str = r#"
Kind: service-defaults
Name: api
Protocol: http
---
Kind: service-defaults
Name: db
Protocol: tcp
---
Kind: service-intentions
Name: api
Sources:
  - Name: web
    Permissions:
      - Action: deny
        HTTP: {PathExact: /admin}
      - Action: allow
        HTTP: {PathPrefix: /v1/, Methods: [GET, HEAD]}
      - Action: allow
        HTTP:
          PathRegex: "/v2/[a-z]+"
          Header:
            - {Name: x-env, Exact: PROD, IgnoreCase: true}
            - {Name: x-debug, Present: true, Invert: true}
  - {Name: "*", Action: allow}
---
Kind: service-intentions
Name: db
Sources:
  - Name: web
    Permissions:
      - Action: allow
        HTTP: {PathPrefix: /}
"#;

#[test]
fn l7_intentions_count_as_deny_at_l4() {
    let e = entries(L7);
    let d = check(&e, "web", "api", DefaultPolicy::Allow);
    assert!(!d.allowed);
    assert_eq!(
        d.reason,
        "intention web => api has L7 permissions, which count as deny at L4, precedence 9"
    );
    // Other callers get * => api.
    assert!(check(&e, "other", "api", DefaultPolicy::Deny).allowed);
    // On a tcp destination, a request is judged at L4 too.
    let d = check_request(
        &e,
        "web",
        "db",
        &HttpRequest::new("GET", "/"),
        DefaultPolicy::Allow,
    );
    assert!(!d.allowed, "{d:?}");
}

#[test]
fn l7_first_matching_permission_decides_else_the_default() {
    let e = entries(L7);
    let prod = |r: HttpRequest| r.header("X-Env", "prod");
    // (request, default, allowed, reason suffix)
    let table: Vec<(HttpRequest, DefaultPolicy, bool, &str)> = vec![
        // the deny comes first even though /admin is not under /v1/
        (
            HttpRequest::new("GET", "/admin"),
            DefaultPolicy::Allow,
            false,
            "permission 1 (deny), precedence 9",
        ),
        (
            HttpRequest::new("GET", "/v1/users?id=3"),
            DefaultPolicy::Deny,
            true,
            "permission 2 (allow), precedence 9",
        ),
        (
            HttpRequest::new("HEAD", "/v1/"),
            DefaultPolicy::Deny,
            true,
            "permission 2 (allow), precedence 9",
        ),
        // method not listed (and case-sensitive, as Envoy's :method regex)
        (
            HttpRequest::new("POST", "/v1/users"),
            DefaultPolicy::Deny,
            false,
            "no permission matched, default policy deny",
        ),
        (
            HttpRequest::new("get", "/v1/users"),
            DefaultPolicy::Deny,
            false,
            "no permission matched, default policy deny",
        ),
        // ... and no fall-through to * => api (allow): the default decides
        (
            HttpRequest::new("POST", "/v1/users"),
            DefaultPolicy::Allow,
            true,
            "no permission matched, default policy allow",
        ),
        // regex is a full match; header exact ignoring case; x-debug must be absent
        (
            prod(HttpRequest::new("PUT", "/v2/orders")),
            DefaultPolicy::Deny,
            true,
            "permission 3 (allow), precedence 9",
        ),
        (
            prod(HttpRequest::new("PUT", "/v2/orders/1")),
            DefaultPolicy::Deny,
            false,
            "no permission matched, default policy deny",
        ),
        (
            prod(HttpRequest::new("PUT", "/v2/orders")).header("x-debug", "1"),
            DefaultPolicy::Deny,
            false,
            "no permission matched, default policy deny",
        ),
        (
            HttpRequest::new("PUT", "/v2/orders").header("x-env", "staging"),
            DefaultPolicy::Deny,
            false,
            "no permission matched, default policy deny",
        ),
    ];
    for (request, default, allowed, reason) in table {
        let d = check_request(&e, "web", "api", &request, default);
        assert_eq!(d.allowed, allowed, "{request:?}: {d:?}");
        assert_eq!(
            d.reason,
            format!("intention web => api, {reason}"),
            "{request:?}"
        );
    }
    // A caller with an L4 intention is decided by it at L7 too.
    let d = check_request(
        &e,
        "other",
        "api",
        &HttpRequest::new("DELETE", "/admin"),
        DefaultPolicy::Deny,
    );
    assert!(d.allowed);
    assert_eq!(d.reason, "intention * => api (allow), precedence 8");
}

fn header(yaml_fields: &str) -> HeaderPermission {
    let e = entries(&format!(
        "Kind: service-intentions\nName: x\nSources:\n  - Name: y\n    Permissions:\n      - Action: allow\n        HTTP:\n          Header:\n            - {{Name: x-h, {yaml_fields}}}\n"
    ));
    let RuleAction::Permissions(p) = &rules_for(&e, "x")[0].action else {
        panic!("L7 rule expected")
    };
    p[0].http.as_ref().unwrap().header[0].value.clone()
}

#[test]
fn header_matchers_with_invert_and_absence() {
    let with = |v: &str| HttpRequest::new("GET", "/").header("x-h", v);
    let without = HttpRequest::new("GET", "/");
    // (matcher, request, matches)
    let table: Vec<(&str, HttpRequest, bool)> = vec![
        ("Exact: a", with("a"), true),
        ("Exact: a", with("A"), false),
        ("Exact: a, IgnoreCase: true", with("A"), true),
        ("Exact: a, Invert: true", with("a"), false),
        ("Exact: a, Invert: true", with("b"), true),
        // absent: neither the matcher nor its inversion matches (Envoy)
        ("Exact: a", without.clone(), false),
        ("Exact: a, Invert: true", without.clone(), false),
        ("Prefix: ab", with("abc"), true),
        ("Prefix: ab, Invert: true", with("abc"), false),
        ("Suffix: bc", with("abc"), true),
        ("Suffix: BC, IgnoreCase: true", with("abc"), true),
        ("Contains: b", with("abc"), true),
        ("Contains: x, Invert: true", with("abc"), true),
        ("Regex: \"[0-9]+\"", with("123"), true),
        ("Regex: \"[0-9]+\"", with("123a"), false),
        ("Regex: \"[0-9]+\", Invert: true", with("123a"), true),
        ("Present: true", with(""), true),
        ("Present: true", without.clone(), false),
        ("Present: true, Invert: true", without.clone(), true),
        ("Present: true, Invert: true", with("x"), false),
    ];
    for (fields, request, want) in table {
        let h = header(fields);
        assert_eq!(
            header_matches(&h, &request),
            want,
            "{fields} on {request:?}"
        );
    }
    // Repeated headers are joined with "," as Envoy does; names are case-insensitive.
    let h = header("Exact: \"a,b\"");
    let r = HttpRequest::new("GET", "/")
        .header("X-H", "a")
        .header("x-h", "b");
    assert!(header_matches(&h, &r));
}

#[test]
fn default_policy_parses() {
    assert_eq!("allow".parse(), Ok(DefaultPolicy::Allow));
    assert_eq!("deny".parse(), Ok(DefaultPolicy::Deny));
    assert!("maybe".parse::<DefaultPolicy>().is_err());
}

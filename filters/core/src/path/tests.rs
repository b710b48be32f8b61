use super::*;

fn n(s: &str) -> String {
    normalize(s).unwrap().into_owned()
}

fn strict() -> PathRules {
    PathRules::default()
}

/// The path Envoy hands to the filters, then the rule on it.
fn through_envoy(raw: &str, rules: &PathRules) -> Result<String, PathRefusal> {
    let seen = normalize(raw)?.into_owned();
    rules.canonicalize(&seen).map(|p| p.key().to_string())
}

fn prefix(p: &str) -> PathPrefix {
    strict().prefix(p).unwrap()
}

/// Outputs of Envoy 1.40 (`normalize_path`, `merge_slashes`,
/// `KEEP_UNCHANGED`), read from a running Envoy's `x-router-path`
/// (`%REQ(:PATH)%`); the differential test checks thousands more.
#[test]
fn normalisation_is_envoys() {
    for (raw, envoy) in [
        ("/", "/"),
        ("/a/b/", "/a/b/"),
        ("/a//../b", "/a/b"),
        ("/admin%2f", "/admin%2f"),
        ("/a\\..\\b", "/b"),
        ("/%41dmin", "/Admin"),
        ("/%2e%2e/x", "/x"),
        ("/a/%2e%2E/b", "/b"),
        ("/a%zz", "/a%zz"),
        ("/a%%300", "/a%2500"),
        ("/a\"b", "/a%22b"),
        ("/a{b", "/a%7Bb"),
        ("/a^b", "/a%5Eb"),
        ("/a`b", "/a%60b"),
        ("/a|b", "/a%7Cb"),
        ("/<>", "/%3C%3E"),
        ("/a;x/../b", "/b"),
        ("/a..;/b", "/a..;/b"),
        // A dot segment in raw dots with `;` parameters is a dot segment;
        // escaped dots are not (Envoy's path-parameter step runs first).
        ("/a/..;/b", "/b"),
        ("/..;/admin", "/admin"),
        ("/a/.;x/b", "/a/b"),
        ("/a/..;x;y/..;/b", "/b"),
        ("/a/..;x\\y/b", "/b"),
        ("/a\\..;\\b", "/a/..;/b"),
        ("/a//..;/b", "/a/b"),
        ("/a/..;%2e/b", "/b"),
        ("/%2e%2e;/admin", "/..;/admin"),
        ("/a/.%2e;/b", "/a/..;/b"),
        ("/a/%2e;/b", "/a/.;/b"),
        ("/a/...;/b", "/a/...;/b"),
        ("/a/x;../b", "/a/x;../b"),
        ("/a/;x/b", "/a/;x/b"),
        ("/%2fa", "/%2fa"),
        ("/a%5c..%5cb", "/a%5c..%5cb"),
        ("/A%7e%7E%2D%5f", "/A~~-_"),
        ("/a/.", "/a/"),
        ("/a/..", "/"),
        ("/..", "/"),
        ("/a%2e", "/a."),
        ("/a%2e%2e", "/a.."),
        ("//a//b//", "/a/b/"),
        ("/a/b?x/../y", "/a/b"),
        ("/a%25%34%31", "/a%2541"),
        ("/a/.%2e/b", "/b"),
        ("/a/%2e./b", "/b"),
        ("/a/..%2fb", "/a/..%2fb"),
        ("/a/b/..\\", "/a/"),
        ("/a/b\\", "/a/b/"),
        ("/a%%32%65", "/a%252e"),
        ("/a%2%65", "/a%252e"),
        ("/a%%%34%31", "/a%%2541"),
        ("/a%%34%31", "/a%2541"),
        ("/a/%2e%2e%2e/b", "/a/.../b"),
        ("/a/..../b", "/a/..../b"),
        ("/a/.%2e", "/"),
        ("/a/b/%2e%2e", "/a/"),
        ("/a%2e/", "/a./"),
        ("/a;/../b", "/b"),
        ("/%2e", "/"),
        ("/.%2e/x", "/x"),
        ("/\\\\evil", "/evil"),
        ("/a/\\/b", "/a/b"),
        ("/a%5b%5d%21%24", "/a%5b%5d%21%24"),
        ("/a[]!$", "/a[]!$"),
        ("/%7B%7b", "/%7B%7b"),
        ("/a%7f", "/a%7f"),
        ("/a%c3%a9", "/a%c3%a9"),
        ("//", "//"),
        ("///", "//"),
        ("/\\", "//"),
        ("/\\.", "//"),
        ("/a//", "/a/"),
        ("//a", "/a"),
        ("/'", "/'"),
        ("/[]@:=+,$&()*!~", "/[]@:=+,$&()*!~"),
        ("/%30%39%41%5a%61%7a", "/09AZaz"),
        ("/.\\..\\a", "/a"),
        ("/%2e\\", "/"),
        ("/a/b/.%2e\\", "/a/"),
        ("/%80", "/%80"),
    ] {
        assert_eq!(n(raw), envoy, "{raw:?}");
    }
}

/// What Envoy refuses (400 before any filter), the core refuses too.
#[test]
fn what_envoy_refuses_is_refused() {
    for raw in [
        "/a#frag",
        "/a%00",
        "/a b",
        "/a\tb",
        "/a\u{1}b",
        "/a\u{7f}b",
        "/a\u{e9}",
        "*",
        "",
    ] {
        assert!(normalize(raw).is_err(), "{raw:?}");
        assert!(strict().canonicalize(raw).is_err(), "{raw:?}");
    }
}

#[test]
fn normal_forms_are_fixed_points() {
    for raw in ["/a//../b", "/a%%300", "/a\"b", "//", "/a%2541", "/a/..;/b"] {
        let once = n(raw);
        assert_eq!(n(&once), once, "{raw:?}");
    }
    // Not Envoy's: it leaves `%2e%2e;` as `..;`, which it resolves when it
    // sees it raw. The rule refuses what Envoy forwards, under every switch.
    assert_eq!(n("/%2e%2e;/admin"), "/..;/admin");
    assert_eq!(n("/..;/admin"), "/admin");
    assert_eq!(
        strict().canonicalize("/..;/admin"),
        Err(PathRefusal::DotSegmentWithParameters)
    );
    let keep = PathRules {
        keep_path_parameters: true,
        ..PathRules::default()
    };
    assert_eq!(
        keep.canonicalize("/..;/admin"),
        Err(PathRefusal::NotNormalised)
    );
}

#[test]
fn a_path_envoy_did_not_normalise_is_refused() {
    for raw in [
        "/public/../admin",
        "/public//admin",
        "/public/./admin",
        "/%41dmin",
        "/admin\\x",
        "/a\"b",
        "/public%2e%2e/x/",
    ] {
        assert_eq!(
            strict().canonicalize(raw),
            Err(PathRefusal::NotNormalised),
            "{raw:?}"
        );
    }
}

/// Every spelling of the issue, as Envoy hands it over: the condition
/// `/admin` matches it, or it is refused before any policy.
#[test]
fn every_spelling_of_admin_matches_or_is_refused() {
    let admin = prefix("/admin");
    let spellings = [
        "/admin",
        "/ADMIN",
        "/Admin",
        "/aDmIn/",
        "/%41dmin",
        "/ADMIN%2f",
        "/admin;x",
        "/admin;",
        "/admin;/x",
        "/;/admin",
        "/admin..;/",
        "/%2e%2e;/admin",
        "/admin%3b",
        "/admin%2f",
        "/admin%2F",
        "/%2fadmin",
        "/x/..%2fadmin",
        "/%2561dmin",
        "/admin.",
        "/admin%2e",
        "/admin%20",
        "/admin%09",
        // More of the same families.
        "/admin/x",
        "/ADMIN/users;jsessionid=1",
        "/x/../admin",
        "/x/..\\admin",
        "//admin",
        "/admin\\",
        "/admin/.",
        "/admin%2e%2e",
        "/admin%20/x",
        "/admin./x",
        "/admin%5c",
        "/admin%5Cx",
        "/%61dmin",
        "/admin%252f",
        "/admin%25u002f",
        "/admin%u002f",
        "/admin%",
        "/admin%0d%0a",
        "/admin%7f",
        "/admin;%2e%2e",
        "/x/..;/admin",
        "/x/.;/../admin",
        "/x/..;x=1/admin",
        "/admin%3B/x",
        "/admin;/../x/../admin",
    ];
    for raw in spellings {
        let seen = normalize(raw).unwrap();
        match strict().canonicalize(&seen) {
            Ok(p) => assert!(p.is_under(&admin), "{raw:?} -> {seen} -> key {}", p.key()),
            Err(e) => assert_ne!(e, PathRefusal::NotNormalised, "{raw:?}"),
        }
    }
}

#[test]
fn the_refusal_names_the_cause() {
    let cases = [
        ("/ADMIN%2f", PathRefusal::EncodedSlash),
        ("/%2fadmin", PathRefusal::EncodedSlash),
        ("/x/..%2fadmin", PathRefusal::EncodedSlash),
        ("/admin%5c", PathRefusal::EncodedSlash),
        ("/admin%3b", PathRefusal::EncodedSemicolon),
        ("/%2561dmin", PathRefusal::DoubleEncoding),
        ("/admin%25u0041", PathRefusal::DoubleEncoding),
        ("/admin%09", PathRefusal::EncodedControl),
        ("/admin%7F", PathRefusal::EncodedControl),
        ("/admin.", PathRefusal::TrailingDotOrSpace),
        ("/admin%2e", PathRefusal::TrailingDotOrSpace),
        ("/admin%20", PathRefusal::TrailingDotOrSpace),
        ("/admin%20/x", PathRefusal::TrailingDotOrSpace),
        ("/admin..;/", PathRefusal::TrailingDotOrSpace),
        ("/admin.;x", PathRefusal::TrailingDotOrSpace),
        ("/%2e%2e;/admin", PathRefusal::DotSegmentWithParameters),
        ("/x/%2e;/admin", PathRefusal::DotSegmentWithParameters),
        ("/admin%u0041", PathRefusal::MalformedEncoding),
        ("/admin%", PathRefusal::MalformedEncoding),
    ];
    for (raw, why) in cases {
        assert_eq!(through_envoy(raw, &strict()), Err(why), "{raw:?}");
    }
    assert_eq!(
        PathRefusal::EncodedSlash.switch(),
        Some("allow_encoded_slash")
    );
    assert_eq!(PathRefusal::MalformedEncoding.switch(), None);
}

#[test]
fn keys_fold_case_cut_parameters_and_decode_printable_escapes() {
    for (raw, key) in [
        ("/ADMIN", "/admin"),
        ("/aDmIn/", "/admin/"),
        ("/admin;x", "/admin"),
        ("/admin;", "/admin"),
        ("/admin;/x", "/admin/x"),
        ("/;/admin", "/admin"),
        ("/a;v=1/b;jsessionid=X", "/a/b"),
        ("/a%21b", "/a!b"),
        ("/a%c3%a9", "/a%C3%A9"),
        ("/A%C3%A9", "/a%C3%A9"),
        ("/a%22b", "/a\"b"),
        ("//", "/"),
        ("/", "/"),
        ("/;", "/"),
    ] {
        assert_eq!(through_envoy(raw, &strict()).as_deref(), Ok(key), "{raw:?}");
    }
}

/// A prefix must never open another path: for every attack spelling, the
/// path Envoy forwards is refused, or is not opened by `/public`, or does lie
/// under `/public` for every reading.
#[test]
fn a_prefix_never_opens_another_path() {
    let public = prefix("/public");
    for raw in [
        "/PUBLIC/../admin",
        "/public/../admin",
        "/public;/../admin",
        "/public/..;/admin",
        "/public/%2e%2e;/admin",
        "/public%2f..%2fadmin",
        "/public%2F..%2Fadmin",
        "/public/..%2fadmin",
        "/public/..%5cadmin",
        "/public/%2e%2e%5cadmin",
        "/public\\..\\admin",
        "/public/.%2e/admin",
        "/public/%252e%252e/admin",
        "/public/..%252fadmin",
        "/public/..%00/admin",
        "/public/x/..%20/..%20/admin",
        "/public/...",
        "/public/x%3b/../admin",
        "/;/public",
        "/PUBLIC/x",
        "/Public",
        "/public;x/y",
        "/public%3b/x",
        "/publicity",
        "/public./x",
        "/public%2e/x",
        "/public%20/x",
    ] {
        let Ok(seen) = normalize(raw) else {
            continue; // Envoy refuses it
        };
        let Ok(p) = strict().canonicalize(&seen) else {
            continue; // refused before any decision
        };
        // Opened only where Envoy itself resolved the path to a page below
        // /public (`x%3b/..` is a segment and its `..`).
        assert_eq!(
            p.is_under_as_written(&public),
            seen == "/public/admin",
            "{raw:?} -> {seen}"
        );
    }
    // What it does open.
    for raw in [
        "/public",
        "/public/",
        "/public/x",
        "/public/x;jsessionid=1",
        "/public/X",
    ] {
        let p = strict().canonicalize(raw).unwrap();
        assert!(p.is_under_as_written(&public), "{raw:?}");
    }
    // Under the rule but not as written: a restricting decision covers it,
    // an opening one does not.
    for raw in ["/PUBLIC/x", "/Public", "/public;x/y", "/;/public"] {
        let p = strict().canonicalize(raw).unwrap();
        assert!(p.is_under(&public), "{raw:?}");
        assert!(!p.is_under_as_written(&public), "{raw:?}");
    }
}

#[test]
fn switches_loosen_one_rule_each() {
    let admin = prefix("/admin");
    let rules = |f: fn(&mut PathRules)| {
        let mut r = PathRules::default();
        f(&mut r);
        r
    };
    let case = rules(|r| r.case_sensitive = true);
    assert_eq!(through_envoy("/ADMIN", &case).as_deref(), Ok("/ADMIN"));
    let p = case.canonicalize("/ADMIN").unwrap();
    assert!(!p.is_under(&case.prefix("/admin").unwrap()));
    assert!(case.canonicalize("/admin/x").unwrap().is_under(&admin));

    let params = rules(|r| r.keep_path_parameters = true);
    assert_eq!(
        through_envoy("/admin;x", &params).as_deref(),
        Ok("/admin;x")
    );
    assert!(!params.canonicalize("/admin;x").unwrap().is_under(&admin));
    assert_eq!(
        through_envoy("/x/..;/admin", &params).as_deref(),
        Ok("/admin")
    );
    assert!(params.prefix("/a;b").is_ok());

    let slash = rules(|r| r.allow_encoded_slash = true);
    assert_eq!(
        through_envoy("/group%2fproject", &slash).as_deref(),
        Ok("/group%2Fproject")
    );
    assert_eq!(
        through_envoy("/x/..%2fadmin", &slash).as_deref(),
        Ok("/x/..%2Fadmin")
    );
    assert_eq!(
        through_envoy("/a%3b", &slash),
        Err(PathRefusal::EncodedSemicolon)
    );

    let semi = rules(|r| r.allow_encoded_semicolon = true);
    assert_eq!(through_envoy("/a%3bb", &semi).as_deref(), Ok("/a%3Bb"));

    let double = rules(|r| r.allow_double_encoding = true);
    assert_eq!(through_envoy("/%2561", &double).as_deref(), Ok("/%2561"));

    let control = rules(|r| r.allow_encoded_control = true);
    assert_eq!(through_envoy("/a%09", &control).as_deref(), Ok("/a%09"));
    assert!(control.canonicalize("/a%00").is_err());

    let dots = rules(|r| r.allow_trailing_dot_or_space = true);
    assert_eq!(through_envoy("/admin.", &dots).as_deref(), Ok("/admin."));
    assert!(!dots.canonicalize("/admin.").unwrap().is_under(&admin));
    assert_eq!(
        through_envoy("/%2e%2e;/admin", &dots),
        Err(PathRefusal::DotSegmentWithParameters)
    );

    // A malformed escape and a path Envoy did not normalise have no switch.
    let all = PathRules {
        case_sensitive: true,
        keep_path_parameters: true,
        allow_encoded_slash: true,
        allow_encoded_semicolon: true,
        allow_double_encoding: true,
        allow_encoded_control: true,
        allow_trailing_dot_or_space: true,
    };
    assert_eq!(
        all.canonicalize("/a%u0041"),
        Err(PathRefusal::MalformedEncoding)
    );
    assert_eq!(all.canonicalize("/a/../b"), Err(PathRefusal::NotNormalised));
}

#[test]
fn the_switches_are_read_from_json_and_unknown_ones_refused() {
    let r: PathRules = serde_json::from_str(r#"{"case_sensitive": true}"#).unwrap();
    assert!(r.case_sensitive && !r.keep_path_parameters);
    assert_eq!(serde_json::from_str::<PathRules>("{}").unwrap(), strict());
    assert!(serde_json::from_str::<PathRules>(r#"{"allow_encoded_slashes": true}"#).is_err());
}

#[test]
fn prefixes_are_checked_at_load() {
    let r = strict();
    assert!(r.prefix("admin").unwrap_err().contains("must start with"));
    assert!(r.prefix("/a?x").is_err());
    assert!(r.prefix("/a#x").is_err());
    assert!(r.prefix("/a/../b").unwrap_err().contains("write `/b`"));
    assert!(r.prefix("/a//b").unwrap_err().contains("write `/a/b`"));
    assert!(r.prefix("/%41").unwrap_err().contains("write `/A`"));
    assert!(r
        .prefix("/a;x")
        .unwrap_err()
        .contains("keep_path_parameters"));
    assert!(r.prefix("/a%2fb").unwrap_err().contains("encoded `/`"));
    assert!(r.prefix("/a.").is_err());
    assert!(r.prefix("/a b").is_err());
    let p = r.prefix("/Admin").unwrap();
    assert_eq!(p.as_written(), "/Admin");
    assert_eq!(p.key(false), "/admin");
    assert_eq!(p.key(true), "/Admin");
    let p = r.prefix("/a%21/").unwrap();
    assert_eq!(p.key(false), "/a!/");
}

#[test]
fn the_common_path_is_not_copied() {
    let p = strict().canonicalize("/app/page.html?x=1").unwrap();
    assert_eq!(p.as_written(), "/app/page.html");
    assert!(matches!(p.key, Cow::Borrowed(_)));
    assert!(matches!(normalize("/a/b.css").unwrap(), Cow::Borrowed(_)));
}

#[test]
fn prefixes_match_on_segment_boundaries() {
    assert!(has_prefix("/public", "/public"));
    assert!(has_prefix("/public/x", "/public"));
    assert!(!has_prefix("/publicity", "/public"));
    assert!(has_prefix("/public/x", "/public/"));
    assert!(has_prefix("/public", "/public/"));
    assert!(!has_prefix("/publicx", "/public/"));
    assert!(has_prefix("/anything", "/"));
}

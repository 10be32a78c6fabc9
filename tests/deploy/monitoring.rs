//! Alerts and the dashboard parse as PromQL and name only series (and label
//! values) a running castellan exports.

use super::*;

/// The series of a `/metrics` exposition: name → label sets.
fn exposition(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let mut series: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, labels) = match line.split_once('{') {
            Some((name, rest)) => {
                let inner = rest.split_once('}').unwrap().0;
                let labels = inner
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').unwrap();
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (line.split(' ').next().unwrap().to_owned(), BTreeMap::new()),
        };
        series.entry(name).or_default().push(labels);
    }
    series
}

/// Every vector selector of a PromQL expression.
fn selectors(
    expr: &promql_parser::parser::Expr,
    out: &mut Vec<promql_parser::parser::VectorSelector>,
) {
    use promql_parser::parser::Expr;
    match expr {
        Expr::Aggregate(a) => {
            selectors(&a.expr, out);
            if let Some(p) = &a.param {
                selectors(p, out);
            }
        }
        Expr::Unary(u) => selectors(&u.expr, out),
        Expr::Binary(b) => {
            selectors(&b.lhs, out);
            selectors(&b.rhs, out);
        }
        Expr::Paren(p) => selectors(&p.expr, out),
        Expr::Subquery(s) => selectors(&s.expr, out),
        Expr::VectorSelector(v) => out.push(v.clone()),
        Expr::MatrixSelector(m) => out.push(m.vs.clone()),
        Expr::Call(c) => {
            for a in &c.args.args {
                selectors(a, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Checks `expr` parses and names only series castellan exports, with
/// label values it exports.
fn check_expr(where_: &str, expr: &str, series: &BTreeMap<String, Vec<BTreeMap<String, String>>>) {
    use promql_parser::label::MatchOp;
    let expr_text = expr.replace("$__rate_interval", "5m");
    let parsed = promql_parser::parser::parse(&expr_text)
        .unwrap_or_else(|e| panic!("{where_}: {expr}: {e}"));
    let mut found = Vec::new();
    selectors(&parsed, &mut found);
    assert!(!found.is_empty(), "{where_}: {expr} reads no metric");
    for s in found {
        let name = s.name.clone().unwrap_or_default();
        let Some(sets) = series.get(&name) else {
            panic!("{where_}: {name} is not in castellan's /metrics");
        };
        for m in &s.matchers.matchers {
            let values: Vec<String> = match &m.op {
                MatchOp::Equal => vec![m.value.clone()],
                MatchOp::Re(_) => m.value.split('|').map(str::to_owned).collect(),
                MatchOp::NotEqual | MatchOp::NotRe(_) => continue,
            };
            for v in values {
                assert!(
                    sets.iter().any(|l| l.get(&m.name) == Some(&v)),
                    "{where_}: {name} has no series with {}=\"{v}\"",
                    m.name
                );
            }
        }
    }
}

#[tokio::test]
async fn alerts_and_dashboard_parse_and_name_only_what_castellan_exports() {
    // TokenReview, so the series of a back end's queue exist too.
    let kube = FakeKube::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::start_with(crate::support::Setup {
        authn_sections: Some(format!(
            "[[authn]]\ntype = \"tokenreview\"\nkubeconfig = \"{}\"\n",
            kube.kubeconfig(dir.path(), "local").display()
        )),
        ..crate::support::Setup::default()
    })
    .await;
    let (_, text) = http_get(&format!("{}/metrics", ca.metrics_url())).await;
    let series = exposition(&text);

    let objects = deploy::yaml_documents(&compose(
        "monitoring",
        &["overlays/file"],
        &["components/monitoring"],
    ));
    let rules = deploy::find(&objects, "PrometheusRule", "castellan");
    let mut alerts = BTreeSet::new();
    for group in rules["spec"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            assert!(alerts.insert(alert.to_owned()), "{alert} twice");
            check_expr(alert, rule["expr"].as_str().unwrap(), &series);
            let severity = rule["labels"]["severity"].as_str().unwrap_or_default();
            assert!(
                ["warning", "critical"].contains(&severity),
                "{alert}: severity {severity}"
            );
            assert!(
                rule["annotations"]["summary"].is_string(),
                "{alert}: summary"
            );
            let runbook = rule["annotations"]["runbook"].as_str().unwrap_or_default();
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(runbook)
                    .is_file(),
                "{alert}: runbook {runbook:?} does not exist"
            );
        }
    }
    for must in [
        "CastellanIntermediateExpiresSoon",
        "CastellanRootExpiresSoon",
        "CastellanCannotSign",
        "CastellanServerErrors",
        "CastellanOverloaded",
        "CastellanTrustBundleBehind",
        "CastellanIstiodCertificateExpiring",
        "CastellanNoLeader",
    ] {
        assert!(alerts.contains(must), "no {must}");
    }

    let monitor = deploy::find(&objects, "ServiceMonitor", "castellan");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http-monitoring");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");

    let dashboard: Value = serde_json::from_str(
        deploy::find(&objects, "ConfigMap", "castellan-dashboard")["data"]["castellan-dashboard.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let mut exprs = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            check_expr(title, t["expr"].as_str().unwrap(), &series);
            exprs += 1;
        }
    }
    assert!(exprs >= 20, "the dashboard shows {exprs} queries");
    ca.running.kill();
}

// === Istio wiring ===

//! One incident's evidence: `/api/incidents/<id>` (JSON) and `/incidents/<id>` (a page with
//! its windows drawn as a server-rendered SVG chart: no script, nothing downloaded). Every
//! text that comes from data is HTML-escaped.

use std::fmt::Write;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::history::{History, Query};
use crate::incident::evidence::{Impact, Point};
use crate::incident::{Alert, Status};
use crate::time::format_ms;

/// What the page shows, as `/api/incidents/<id>` returns it.
#[derive(Debug, Serialize)]
pub struct Evidence {
    pub id: String,
    /// Its latest state change.
    pub incident: Alert,
    /// Every state change kept, oldest first.
    pub changes: Vec<Alert>,
    /// Each window of its scope since its bad run began (and, for a key's incident, the two
    /// windows before it), oldest first.
    pub windows: Vec<Point>,
    /// Viewers reached so far, over the bad windows kept (the alerts carry it as of their
    /// change).
    pub impact: Option<Impact>,
    /// The CDN-wide or location-wide incident it belongs to, as last changed.
    pub parent: Option<Alert>,
    /// The incidents under it, each as last changed.
    pub children: Vec<Alert>,
}

/// Gathers an incident's evidence from the history (and what fires now, for an incident
/// whose changes the history does not hold); `None` if it is unknown here.
pub fn gather(history: &History, live: &super::Live, id: &str) -> anyhow::Result<Option<Evidence>> {
    let by_id = |id: &str| Query {
        id: Some(id.to_string()),
        limit: crate::history::MAX_PAGE,
        ..Default::default()
    };
    let mut changes = history.query(&by_id(id))?.changes;
    changes.reverse();
    let incident = match changes.last() {
        Some(a) => a.clone(),
        None => match live.firing(id) {
            Some(a) => a,
            None => return Ok(None),
        },
    };
    let windows = history.evidence(id)?;
    let parent = match &incident.parent_id {
        Some(p) => history.query(&by_id(p))?.changes.into_iter().next(),
        None => None,
    };
    let under = Query {
        parent: Some(id.to_string()),
        limit: crate::history::MAX_PAGE,
        ..Default::default()
    };
    let mut children: Vec<Alert> = Vec::new();
    for a in history.query(&under)?.changes {
        if !children.iter().any(|c| c.id == a.id) {
            children.push(a); // newest first: the first seen is its latest change
        }
    }
    let mut impact = Impact::default();
    for p in windows.iter().filter(|p| p.bad) {
        impact.add(p);
    }
    Ok(Some(Evidence {
        id: id.to_string(),
        impact: impact.any().then_some(impact).or(incident.impact),
        incident,
        changes,
        windows,
        parent,
        children,
    }))
}

async fn load(s: &AppState, id: String) -> Result<Evidence, Response> {
    let Some(history) = s.history.clone() else {
        return Err((StatusCode::NOT_FOUND, "no history here\n").into_response());
    };
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err((StatusCode::BAD_REQUEST, "id must be an incident id\n").into_response());
    }
    let live = s.live.clone();
    let found = tokio::task::spawn_blocking(move || gather(&history, &live, &id)).await;
    match found {
        Ok(Ok(Some(e))) => Ok(e),
        Ok(Ok(None)) => Err((StatusCode::NOT_FOUND, "no such incident here\n").into_response()),
        Ok(Err(e)) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    }
}

pub(super) async fn api(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match load(&s, id).await {
        Ok(e) => axum::Json(e).into_response(),
        Err(r) => r,
    }
}

pub(super) async fn page(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    match load(&s, id).await {
        Ok(e) => Html(render(&e)).into_response(),
        Err(r) => r,
    }
}

/// Text for HTML (element content and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn status_of(a: &Alert) -> &'static str {
    match a.status {
        Status::Firing => a.severity.as_str(),
        Status::Resolved => "resolved",
    }
}

fn link_to(a: &Alert) -> String {
    format!(
        "<a href=\"{}\">{}</a> <span class=\"pill {}\">{}</span> {}",
        esc(&a.id),
        esc(&a.scope.to_string()),
        status_of(a),
        status_of(a),
        esc(&a.summary)
    )
}

/// The whole page.
pub fn render(e: &Evidence) -> String {
    let a = &e.incident;
    let kind = a.metric.kind();
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>qos-sentinel · {scope}</title><style>{STYLE}</style></head><body>\
         <header><a href=\"../\">← live</a><h1><span class=\"pill {st}\">{st}</span> {rule} · {scope}</h1></header>\
         <p class=\"summary\">{summary}</p><dl>",
        scope = esc(&a.scope.to_string()),
        st = status_of(a),
        rule = esc(&a.rule),
        summary = esc(&a.summary),
    );
    let mut fact = |k: &str, v: String| {
        let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", esc(k), esc(&v));
    };
    fact("incident", a.id.clone());
    fact("started", format_ms(a.started_at));
    if let Some(r) = a.resolved_at {
        fact("resolved", format_ms(r));
    }
    fact("metric", kind.name().to_string());
    fact(
        "last window",
        format!(
            "{} vs {} expected over {} reports",
            kind.format(a.observed),
            a.expected.map_or("n/a".into(), |x| kind.format(x)),
            a.samples
        ),
    );
    if let Some(i) = &e.impact {
        fact("viewers", i.describe());
    }
    if let Some(c) = &a.cohort {
        fact(
            "cohort",
            format!(
                "{} carries {:.0}% of it with {:.0}% of the reports",
                c.label(),
                c.share * 100.0,
                c.traffic_share * 100.0
            ),
        );
    }
    if !a.silenced_by.is_empty() {
        fact("silenced by", a.silenced_by.join(", "));
    }
    h.push_str("</dl>");
    h.push_str(&chart(e));
    if let Some(p) = &e.parent {
        let _ = write!(h, "<h2>Part of</h2><p>{}</p>", link_to(p));
    }
    if !e.children.is_empty() {
        h.push_str("<h2>Under it</h2><ul>");
        for c in &e.children {
            let _ = write!(h, "<li>{}</li>", link_to(c));
        }
        h.push_str("</ul>");
    }
    h.push_str(&windows_table(e));
    h.push_str("<h2>State changes</h2><ul>");
    for c in &e.changes {
        let _ = write!(
            h,
            "<li>{} <span class=\"pill {st}\">{st}</span> {}</li>",
            esc(&format_ms(c.window_end)),
            esc(&c.summary),
            st = status_of(c)
        );
    }
    h.push_str("</ul></body></html>");
    h
}

fn windows_table(e: &Evidence) -> String {
    let kind = e.incident.metric.kind();
    let mut h = String::from(
        "<h2>Windows</h2><table><tr><th>window</th><th>observed</th><th>expected</th>\
         <th>reports</th><th>sessions</th><th>p-value</th><th>verdict</th><th>cohort</th></tr>",
    );
    for p in e.windows.iter().rev() {
        let verdict = if p.bad { p.severity.as_str() } else { "clean" };
        let _ = write!(
            h,
            "<tr class=\"{verdict}\"><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{:.1e}</td>\
             <td>{verdict}</td><td>{}</td></tr>",
            esc(&format_ms(p.window_start)),
            esc(&kind.format(p.observed)),
            esc(&kind.format(p.expected)),
            p.samples,
            p.exposure.map_or("".into(), |x| x.sessions.to_string()),
            p.p_value,
            p.cohort.as_ref().map_or(String::new(), |c| esc(&c.label())),
        );
    }
    if e.windows.is_empty() {
        h.push_str("<tr><td colspan=\"8\">No window kept for it (it fired before this version kept them, or on another instance).</td></tr>");
    }
    h.push_str("</table>");
    h
}

const W: f64 = 900.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;

/// Observed (dots, red where judged bad) and expected (dashed) per window, with the
/// incident's start and resolution marked.
pub fn chart(e: &Evidence) -> String {
    let pts = &e.windows;
    let kind = e.incident.metric.kind();
    let mut s = format!(
        "<figure><svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {W} {H}\" \
         width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"observed and expected per window\">"
    );
    if pts.is_empty() {
        s.push_str("<text x=\"20\" y=\"40\">no windows kept</text></svg></figure>");
        return s;
    }
    let first = pts.iter().map(|p| p.window_end).min().unwrap_or(0);
    let t0 = first.min(e.incident.started_at);
    let t1 = pts
        .iter()
        .map(|p| p.window_end)
        .max()
        .unwrap_or(0)
        .max(t0 + 1);
    let values = pts.iter().flat_map(|p| [p.observed, p.expected]);
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(v), h.max(v)));
    let (lo, hi) = (lo.min(0.0), if hi > lo { hi * 1.1 } else { lo + 1.0 });
    let x = |t: i64| PAD + (t - t0) as f64 / (t1 - t0) as f64 * (W - 2.0 * PAD);
    let y = |v: f64| H - PAD - (v - lo) / (hi - lo) * (H - 2.0 * PAD);
    let _ = write!(
        s,
        "<line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"axis\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" class=\"axis\"/>\
         <text x=\"4\" y=\"{PAD}\" class=\"label\">{top}</text>\
         <text x=\"4\" y=\"{b}\" class=\"label\">{bottom}</text>\
         <text x=\"{PAD}\" y=\"{tb}\" class=\"label\">{from}</text>\
         <text x=\"{r}\" y=\"{tb}\" class=\"label\" text-anchor=\"end\">{to}</text>",
        b = H - PAD,
        r = W - PAD,
        tb = H - PAD + 18.0,
        top = esc(&kind.format(hi)),
        bottom = esc(&kind.format(lo)),
        from = esc(&format_ms(t0)),
        to = esc(&format_ms(t1)),
    );
    for (at, class) in [
        (Some(e.incident.started_at), "start"),
        (e.incident.resolved_at, "end"),
    ] {
        if let Some(t) = at.filter(|t| (t0..=t1).contains(t)) {
            let _ = write!(
                s,
                "<line x1=\"{v}\" y1=\"{PAD}\" x2=\"{v}\" y2=\"{b}\" class=\"{class}\"/>",
                v = x(t),
                b = H - PAD
            );
        }
    }
    let path = |f: &dyn Fn(&Point) -> f64| {
        pts.iter()
            .map(|p| format!("{:.1},{:.1}", x(p.window_end), y(f(p))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        s,
        "<polyline class=\"expected\" points=\"{}\"/><polyline class=\"observed\" points=\"{}\"/>",
        path(&|p| p.expected),
        path(&|p| p.observed)
    );
    for p in pts {
        let _ = write!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" class=\"{}\"><title>{}: {}</title></circle>",
            x(p.window_end),
            y(p.observed),
            if p.bad { "bad" } else { "clean" },
            esc(&format_ms(p.window_start)),
            esc(&kind.format(p.observed)),
        );
    }
    s.push_str(
        "</svg><figcaption><span class=\"k observed\">observed</span> \
         <span class=\"k expected\">expected</span> <span class=\"k bad\">judged bad</span></figcaption></figure>",
    );
    s
}

const STYLE: &str = "body{margin:0;padding:16px 24px;background:#0f1419;color:#e6edf3;\
font:14px/1.4 system-ui,sans-serif}a{color:#58a6ff}h1{font-size:18px}h2{font-size:14px;\
color:#8b98a5;text-transform:uppercase;letter-spacing:.05em;margin-top:24px}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px}dt{color:#8b98a5}dd{margin:0}\
.pill{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}\
.pill.critical{background:#d40e0d}.pill.warning{background:#ecb22e;color:#111}.pill.resolved{background:#2eb67d}\
svg{background:#182029;border-radius:8px}.axis{stroke:#2a3540}.label{fill:#8b98a5;font-size:11px}\
.observed{fill:none;stroke:#58a6ff;stroke-width:2}.expected{fill:none;stroke:#8b98a5;stroke-dasharray:6 4;stroke-width:2}\
circle.bad{fill:#d40e0d}circle.clean{fill:#58a6ff}.start{stroke:#ecb22e}.end{stroke:#2eb67d}\
.k.observed{color:#58a6ff}.k.expected{color:#8b98a5}.k.bad{color:#d40e0d}\
table{border-collapse:collapse;background:#182029}th,td{text-align:left;padding:6px 10px;\
border-bottom:1px solid #2a3540}th{color:#8b98a5;font-weight:500}.num{font-variant-numeric:tabular-nums}\
tr.critical td:first-child,tr.warning td:first-child{border-left:4px solid #d40e0d}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Metric, Severity};
    use crate::incident::Scope;

    #[test]
    fn the_page_escapes_what_comes_from_data_and_draws_every_window() {
        let place = "<script>alert(1)</script>";
        let a: Alert = serde_json::from_value(serde_json::json!({
            "id": "00000000000000aa", "status": "firing", "rule": "failures_above_benchmark",
            "severity": "critical", "scope": Scope::pair(place, "cdn-\"x\""),
            "metric": "failure_rate", "observed": 0.2, "expected": 0.01, "samples": 100,
            "p_value": 1e-9, "window_start": "2026-01-01T00:01:00Z",
            "window_end": "2026-01-01T00:02:00Z", "started_at": "2026-01-01T00:01:00Z",
            "resolved_at": null, "summary": format!("{place} & co"),
            "cohort": {"dimension": "asn", "value": "<b>64512</b>", "share": 0.9, "traffic_share": 0.2}
        }))
        .expect("alert");
        let point = |i: i64, bad: bool| Point {
            window_start: a.window_start + (i - 1) * 60_000,
            window_end: a.window_start + i * 60_000,
            metric: Metric::FAILURE_RATE,
            observed: if bad { 0.2 } else { 0.01 },
            expected: 0.01,
            samples: 100,
            p_value: 1e-9,
            bad,
            severity: Severity::Critical,
            cohort: a.cohort.clone(),
            exposure: None,
        };
        let e = Evidence {
            id: a.id.clone(),
            incident: a.clone(),
            changes: vec![a.clone()],
            windows: vec![point(1, true), point(2, true), point(3, false)],
            impact: None,
            parent: None,
            children: vec![a],
        };
        let html = render(&e);
        assert!(
            !html.contains("<script>") && !html.contains("<b>"),
            "{html}"
        );
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"));
        assert!(html.contains("cdn=cdn-&quot;x&quot;"));
        assert_eq!(html.matches("<circle ").count(), 3);
        assert_eq!(html.matches("class=\"bad\"").count(), 2);
    }
}

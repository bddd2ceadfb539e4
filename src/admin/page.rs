//! `GET /`: the status page, drawn from the `/status` document.
//!
//! One HTML document with its styles inline and charts as inline SVG: no script, font or
//! stylesheet is fetched, so the page works in an air-gapped cluster and behind any proxy
//! an SRE reaches the admin port through. It refreshes itself with a `<meta>` tag, which
//! needs no script either. Every text that comes from a file ops edit (rule names,
//! version labels, error messages) is escaped.

use std::fmt::Write as _;

use serde_json::Value;

use super::status::{PoolSeries, RuleHits, ServiceStatus, Status, SAMPLE_EVERY};

/// Stable in blue, other pools in warm colours, the same on every chart.
const STABLE_COLOUR: &str = "#2563eb";
const OTHER_COLOURS: [&str; 4] = ["#ea580c", "#9333ea", "#0d9488", "#be123c"];

const CHART_W: f64 = 320.0;
const CHART_H: f64 = 90.0;
/// Room for the y-axis labels.
const PAD_L: f64 = 44.0;
const PAD_B: f64 = 16.0;

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1f2328}\
header{background:#1f2328;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}\
header h1{font-size:18px;margin:0}header span{color:#c9d1d9}\
main{padding:12px 20px}section{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:0 0 14px;padding:10px 14px}\
h2{font-size:16px;margin:0 0 8px;display:flex;gap:10px;align-items:center}h3{font-size:13px;margin:10px 0 4px;color:#57606a}\
table{border-collapse:collapse;margin:4px 0}td,th{padding:2px 10px 2px 0;text-align:left;vertical-align:top}\
th{color:#57606a;font-weight:600;font-size:12px}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.badge{font-size:12px;padding:1px 8px;border-radius:10px;color:#fff}\
.closed{background:#1a7f37}.open{background:#cf222e}.half_open{background:#bf8700}\
.err{color:#cf222e;font-weight:600}.ok{color:#1a7f37}.down{color:#cf222e}.muted{color:#57606a}\
.charts{display:flex;flex-wrap:wrap;gap:12px;margin-top:8px}.chart{font-size:11px;margin:0}\
.big{font-size:22px;font-weight:600}code{font-size:12px}";

/// The whole page.
pub(crate) fn render(st: &Status) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let refresh = SAMPLE_EVERY.as_secs();
    // The empty `data:` icon keeps a browser from asking the admin port for
    // /favicon.ico on every refresh.
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{refresh}\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>graylane status</title><style>{STYLE}</style></head><body>"
    );
    header(&mut h, st);
    h.push_str("<main>");
    rules(&mut h, st);
    for s in &st.services {
        service(&mut h, s, st);
    }
    if let Some(sh) = &st.shadow {
        shadow(&mut h, sh);
    }
    let _ = write!(
        h,
        "<p class=\"muted\">Numbers cover the last {}&nbsp;s; charts the last 15 minutes, one \
         point per {refresh}&nbsp;s. The same data as JSON: <a href=\"status\">/status</a>.</p>\
         </main></body></html>",
        st.recent_seconds
    );
    h
}

fn header(h: &mut String, st: &Status) {
    let r = &st.rules;
    let version = r.get("version").and_then(Value::as_str).unwrap_or("(none)");
    let sha = r.get("sha256").and_then(Value::as_str).unwrap_or("");
    let loaded = r.get("loaded_at").and_then(Value::as_str).unwrap_or("");
    let _ = write!(
        h,
        "<header><h1>graylane</h1><span>rules <b id=\"version\">{}</b></span>\
         <span title=\"{}\">sha256 <code id=\"sha256\">{}</code></span>\
         <span>loaded {}</span><span>page {}</span></header>",
        esc(version),
        esc(sha),
        esc(sha.get(..12).unwrap_or(sha)),
        esc(loaded),
        esc(&st.generated_at),
    );
}

fn rules(h: &mut String, st: &Status) {
    h.push_str("<section id=\"rules\"><h2>Rules</h2>");
    match st.rules.get("last_error").and_then(Value::as_str) {
        Some(e) => {
            let _ = write!(
                h,
                "<p class=\"err\" id=\"last-error\">The last reload failed; the rules below \
                 still serve. {}</p>",
                esc(e)
            );
        }
        None => h.push_str("<p class=\"ok\" id=\"last-error\">Last reload: ok</p>"),
    }
    if let Some(expired) = st.rules.get("expired").and_then(Value::as_array) {
        for e in expired {
            let _ = write!(
                h,
                "<p class=\"err\">Rule {} expired at {} and still routes (owner {}).</p>",
                esc(str_of(e, "rule")),
                esc(str_of(e, "expires")),
                esc(e.get("owner").and_then(Value::as_str).unwrap_or("-")),
            );
        }
    }
    h.push_str(
        "<table id=\"rule-hits\"><tr><th>rule</th><th>route</th><th>percent now</th>\
         <th>next step</th><th>requests</th><th>share</th></tr>",
    );
    for r in &st.rule_hits {
        rule_row(h, r, st);
    }
    h.push_str("</table></section>");
}

fn rule_row(h: &mut String, r: &RuleHits, st: &Status) {
    let next = st
        .rules
        .get("ramps")
        .and_then(Value::as_array)
        .and_then(|rs| rs.iter().find(|x| str_of(x, "rule") == r.rule))
        .and_then(|x| x.get("next_step_at").and_then(Value::as_str));
    let _ = write!(
        h,
        "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td>\
         <td class=\"n\">{}</td></tr>",
        esc(&r.rule),
        esc(&r.route),
        r.percent_now.map_or(String::new(), |p| format!("{p}%")),
        esc(next.unwrap_or("")),
        r.requests,
        pct(r.share),
    );
}

fn service(h: &mut String, s: &ServiceStatus, st: &Status) {
    let _ = write!(
        h,
        "<section class=\"service\" data-service=\"{}\"><h2>{}",
        esc(&s.name),
        esc(&s.name)
    );
    if let Some(g) = &s.guard {
        let state = str_of(g, "state");
        let _ = write!(
            h,
            " <span class=\"badge {}\" data-guard=\"{}\">guard {}</span>",
            esc(state),
            esc(state),
            esc(&state.replace('_', "-"))
        );
    }
    let _ = write!(
        h,
        "</h2><div><span class=\"big gray-share\">{}</span> of {} requests went to gray",
        pct(s.gray_share),
        s.requests
    );
    for l in &s.listeners {
        let _ = write!(
            h,
            " · <span class=\"listener-share\" data-listener=\"{}\">{} {}</span>",
            esc(&l.listener),
            esc(&l.listener),
            pct(l.gray_share)
        );
    }
    h.push_str("</div>");
    pools(h, s);
    if let Some(g) = &s.guard {
        guard(h, g);
    }
    if let Some(m) = &s.mirror {
        let n = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
        let _ = write!(
            h,
            "<h3>Mirror (since start)</h3><p class=\"mirror\">match {} · <span class=\"{}\">\
             mismatch {}</span> · error {} · dropped {}</p>",
            n("match"),
            if n("mismatch") > 0 { "err" } else { "" },
            n("mismatch"),
            n("error"),
            n("dropped"),
        );
    }
    shadow_moves(h, &s.name, st);
    charts(h, s);
    h.push_str("</section>");
}

fn pools(h: &mut String, s: &ServiceStatus) {
    h.push_str(
        "<table class=\"pools\"><tr><th>pool</th><th>endpoints</th><th>requests</th>\
         <th>errors</th><th>p95</th><th>long links</th></tr>",
    );
    for p in &s.pools {
        let _ = write!(
            h,
            "<tr data-pool=\"{}\"><td>{}</td><td>",
            esc(&p.name),
            esc(&p.name)
        );
        let _ = write!(
            h,
            "<span class=\"{}\">{} up</span>",
            if p.endpoints_up == 0 { "down" } else { "ok" },
            p.endpoints_up
        );
        if p.endpoints_down > 0 {
            let _ = write!(h, ", <span class=\"down\">{} down</span>", p.endpoints_down);
        }
        let down: Vec<&str> = p
            .endpoints
            .iter()
            .filter(|e| !e.up)
            .map(|e| e.endpoint.as_str())
            .collect();
        if !down.is_empty() {
            let _ = write!(
                h,
                " <span class=\"muted\">({})</span>",
                esc(&down.join(", "))
            );
        }
        let _ = write!(
            h,
            "</td><td class=\"n\">{}</td><td class=\"n error-share\">{}</td>\
             <td class=\"n p95\">{}</td><td class=\"n long-links\">{}</td></tr>",
            p.requests,
            pct(p.error_share),
            p.p95_ms.map_or("–".to_owned(), ms),
            p.long_links
        );
    }
    h.push_str("</table>");
}

fn guard(h: &mut String, g: &Value) {
    let since = str_of(g, "since");
    let _ = write!(
        h,
        "<h3>Guard</h3><p class=\"guard\">{} since {}",
        esc(str_of(g, "state")),
        esc(since)
    );
    if let Some(held) = g.get("held_since").and_then(Value::as_str) {
        let _ = write!(h, "; ramps held since {}", esc(held));
    }
    h.push('.');
    if let Some(e) = g.get("last_trip").filter(|e| !e.is_null()) {
        let side = |k: &str| {
            let p = e.get(k);
            let n = |f: &str| {
                p.and_then(|p| p.get(f))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            let p95 = p
                .and_then(|p| p.get("p95_ms"))
                .and_then(Value::as_f64)
                .map_or(String::new(), |v| format!(", p95 {}", ms(v)));
            format!("{k} {}/{} failed{p95}", n("failures"), n("requests"))
        };
        let z = e.get("z").and_then(Value::as_f64);
        let z_needed = e.get("z_needed").and_then(Value::as_f64);
        let _ = write!(
            h,
            " Last trip <span class=\"err evidence\">{}</span> at {}: {}; {}",
            esc(str_of(e, "reason")),
            esc(str_of(e, "at")),
            side("gray"),
            side("stable"),
        );
        if let (Some(z), Some(n)) = (z, z_needed) {
            let _ = write!(h, "; z = {z:.2} (needed {n:.2})");
        }
        h.push('.');
    }
    h.push_str("</p>");
}

fn shadow_moves(h: &mut String, service: &str, st: &Status) {
    let Some(moves) = st
        .shadow
        .as_ref()
        .and_then(|s| s.get("moves"))
        .and_then(Value::as_array)
    else {
        return;
    };
    let mine: Vec<&Value> = moves
        .iter()
        .filter(|m| str_of(m, "service") == service)
        .collect();
    h.push_str("<h3>Shadow moves</h3><p class=\"shadow-moves\">");
    if mine.is_empty() {
        h.push_str("none: the candidate decides like the live rules");
    }
    for (i, m) in mine.iter().enumerate() {
        let n = m.get("requests").and_then(Value::as_u64).unwrap_or(0);
        let sep = if i > 0 { " · " } else { "" };
        let _ = write!(
            h,
            "{sep}{} → {}: {n}",
            esc(str_of(m, "from")),
            esc(str_of(m, "to"))
        );
    }
    h.push_str("</p>");
}

fn shadow(h: &mut String, sh: &Value) {
    let _ = write!(
        h,
        "<section id=\"shadow\"><h2>Shadow ruleset</h2><p>{} · sha256 <code>{}</code> · \
         {} requests decided since {}</p>",
        esc(str_of(sh, "file")),
        esc(str_of(sh, "sha256").get(..12).unwrap_or("")),
        sh.get("requests").and_then(Value::as_u64).unwrap_or(0),
        esc(str_of(sh, "since")),
    );
    if let Some(e) = sh.get("last_error").and_then(Value::as_str) {
        let _ = write!(h, "<p class=\"err\">{}</p>", esc(e));
    }
    h.push_str("</section>");
}

fn charts(h: &mut String, s: &ServiceStatus) {
    let at = &s.history.at;
    let colour = |i: usize, p: &PoolSeries| {
        if p.name == "stable" {
            STABLE_COLOUR
        } else {
            OTHER_COLOURS[i % OTHER_COLOURS.len()]
        }
    };
    let per_pool = |f: fn(&PoolSeries) -> &[Option<f64>]| -> Vec<Line<'_>> {
        s.history
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| Line {
                label: &p.name,
                colour: colour(i, p),
                values: f(p),
            })
            .collect()
    };
    h.push_str("<div class=\"charts\">");
    let gray = [Line {
        label: "not stable",
        colour: OTHER_COLOURS[0],
        values: &s.history.gray_share,
    }];
    chart(h, "gray share", at, &gray, 1.0, |v| pct(Some(v)));
    chart(
        h,
        "error share",
        at,
        &per_pool(|p| &p.error_share),
        0.01,
        |v| pct(Some(v)),
    );
    chart(h, "p95", at, &per_pool(|p| &p.p95_ms), 1.0, ms);
    chart(
        h,
        "long links",
        at,
        &per_pool(|p| &p.long_links),
        1.0,
        |v| format!("{v:.0}"),
    );
    h.push_str("</div>");
}

struct Line<'a> {
    label: &'a str,
    colour: &'a str,
    values: &'a [Option<f64>],
}

/// One small chart: x spans the last 15 minutes up to the newest point, y starts at 0
/// and ends at the largest value (at least `min_top`, so a flat zero line stays low).
/// A gap (`None`: no requests) breaks the line rather than drawing a zero.
fn chart(
    h: &mut String,
    title: &str,
    at: &[u64],
    lines: &[Line<'_>],
    min_top: f64,
    fmt: fn(f64) -> String,
) {
    let end = at.last().copied().unwrap_or(0) as f64;
    let start = end - 15.0 * 60.0;
    let top = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .fold(min_top, |a, &b| a.max(b));
    let x = |t: u64| PAD_L + (t as f64 - start) / (end - start) * (CHART_W - PAD_L - 4.0);
    let y = |v: f64| 4.0 + (1.0 - v / top) * (CHART_H - PAD_B - 8.0);
    let _ = write!(
        h,
        "<figure class=\"chart\" data-chart=\"{}\"><svg xmlns=\"http://www.w3.org/2000/svg\" \
         width=\"{CHART_W}\" height=\"{CHART_H}\" role=\"img\" aria-label=\"{}\">\
         <rect x=\"{PAD_L}\" y=\"4\" width=\"{}\" height=\"{}\" fill=\"#fafbfc\" stroke=\"#d0d7de\"/>\
         <text x=\"{}\" y=\"12\" text-anchor=\"end\" fill=\"#57606a\">{}</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#57606a\">0</text>\
         <text x=\"{PAD_L}\" y=\"{}\" fill=\"#57606a\">−15 min</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#57606a\">now</text>",
        esc(title),
        esc(title),
        CHART_W - PAD_L - 4.0,
        CHART_H - PAD_B - 8.0,
        PAD_L - 4.0,
        esc(&fmt(top)),
        PAD_L - 4.0,
        CHART_H - PAD_B - 4.0,
        CHART_H - 2.0,
        CHART_W - 4.0,
        CHART_H - 2.0,
    );
    for l in lines {
        for run in runs(at, l.values) {
            if let [(t, v)] = run.as_slice() {
                let _ = write!(
                    h,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{}\"/>",
                    x(*t),
                    y(*v),
                    l.colour
                );
            } else {
                let pts: Vec<String> = run
                    .iter()
                    .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                    .collect();
                let _ = write!(
                    h,
                    "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>",
                    pts.join(" "),
                    l.colour
                );
            }
        }
    }
    let _ = write!(h, "</svg><figcaption><b>{}</b>", esc(title));
    for l in lines {
        // The newest point with requests: a quiet last few seconds is not "no data".
        let last = l.values.iter().rev().find_map(|v| *v);
        let _ = write!(
            h,
            " <span style=\"color:{}\">■</span> {} {}",
            l.colour,
            esc(l.label),
            last.map_or("–".to_owned(), fmt)
        );
    }
    h.push_str("</figcaption></figure>");
}

/// The unbroken stretches of a series, inside the chart's 15 minutes.
fn runs(at: &[u64], values: &[Option<f64>]) -> Vec<Vec<(u64, f64)>> {
    let mut out: Vec<Vec<(u64, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for (t, v) in at.iter().zip(values) {
        match v {
            Some(v) => cur.push((*t, *v)),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn pct(v: Option<f64>) -> String {
    match v {
        None => "–".to_owned(),
        Some(v) if v > 0.0 && v < 0.001 => "<0.1%".to_owned(),
        Some(v) => format!("{:.1}%", v * 100.0),
    }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else if v >= 10.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// HTML-escapes text for element content and attribute values alike.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::status::{status, History};

    #[test]
    fn escapes_what_ops_wrote() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        let shared = crate::testing::shared_with_rules(
            "version: \"<script>alert(1)</script>\"\nrules: []\n",
        );
        let h = History::new();
        h.sample(&shared);
        let page = render(&status(&shared, &h));
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }

    #[test]
    fn nothing_is_fetched_from_elsewhere() {
        let shared = crate::testing::shared_with_rules("rules: []\n");
        let h = History::new();
        h.sample(&shared);
        let page = render(&status(&shared, &h));
        // The one link is the empty inline icon.
        let page = page.replacen("<link rel=\"icon\" href=\"data:,\">", "", 1);
        for needle in ["<script", "<link", "src=", "@import", "url("] {
            assert!(!page.contains(needle), "{needle} in the page");
        }
        assert!(page.contains("http-equiv=\"refresh\""));
        assert!(page.contains("data-chart=\"gray share\""));
    }

    #[test]
    fn gaps_break_lines() {
        let r = runs(
            &[1, 2, 3, 4, 5],
            &[Some(1.0), Some(2.0), None, Some(3.0), None],
        );
        assert_eq!(r, vec![vec![(1, 1.0), (2, 2.0)], vec![(4, 3.0)]]);
        assert!(runs(&[], &[]).is_empty());
    }

    #[test]
    fn shares_and_durations_read_well() {
        assert_eq!(pct(None), "–");
        assert_eq!(pct(Some(0.0)), "0.0%");
        assert_eq!(pct(Some(0.0004)), "<0.1%");
        assert_eq!(pct(Some(0.2)), "20.0%");
        assert_eq!(ms(3.3), "3.3 ms");
        assert_eq!(ms(250.0), "250 ms");
        assert_eq!(ms(1500.0), "1.50 s");
    }
}

//! The figures of a run (text and JSON), and the side-by-side table and plot that
//! `bench/compare.sh` writes from the JSON lines of both targets (`baton bench-report`).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::Value;

use super::driver::Target;

/// The figures of one run.
#[derive(Debug)]
pub struct BenchReport {
    /// Which system ran.
    pub target: Target,
    /// Workload name.
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Connections they shared (0: one each).
    pub connections: usize,
    /// Completed operations per second.
    pub ops_per_s: f64,
    /// Latency histogram in microseconds.
    pub latency_us: Histogram<u64>,
    /// Failed operations.
    pub errors: u64,
    /// Mutual-exclusion or token-order violations seen.
    pub violations: u64,
    /// Workload-specific figures (memory, CPU).
    pub extra: serde_json::Map<String, Value>,
}

fn checks_exclusion(workload: &str) -> bool {
    matches!(workload, "contended" | "hot-set" | "election")
}

impl BenchReport {
    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// One JSON object with the documented keys.
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({
            "target": self.target.name(),
            "workload": self.workload,
            "clients": self.clients,
            "ops_per_s": (self.ops_per_s * 10.0).round() / 10.0,
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.latency_us.max() as f64 / 1000.0,
            "errors": self.errors,
        });
        if self.connections != 0 && self.connections < self.clients {
            v["connections"] = self.connections.into();
        }
        if self.workload == "contended" {
            v["handoffs_per_s"] = v["ops_per_s"].clone();
        }
        if checks_exclusion(&self.workload) {
            v["violations"] = self.violations.into();
        }
        for (k, x) in &self.extra {
            v[k] = x.clone();
        }
        v
    }

    /// A line for people.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "{} {} clients={} ops/s={:.0} p50={:.2}ms p90={:.2}ms p99={:.2}ms p99.9={:.2}ms max={:.2}ms errors={}",
            self.target.name(),
            self.workload,
            self.clients,
            self.ops_per_s,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
            self.errors
        );
        if self.workload == "contended" {
            s.push_str(&format!(" handoffs/s={:.0}", self.ops_per_s));
        }
        if checks_exclusion(&self.workload) {
            s.push_str(&format!(" violations={}", self.violations));
        }
        for (k, x) in &self.extra {
            s.push_str(&format!(" {k}={x}"));
        }
        s
    }
}

/// One compared line: a workload at a client count, with each target's figures.
struct Pair {
    workload: String,
    /// The client count, and the connections they shared if fewer than one each.
    clients: String,
    baton: Option<Value>,
    etcd: Option<Value>,
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

/// How much better Baton did, and what that is measured on: throughput for most workloads;
/// server CPU per renewal for keepalive-scale; resident bytes per lock for hold.
fn advantage(p: &Pair) -> Option<(f64, &'static str)> {
    let (b, e) = (p.baton.as_ref()?, p.etcd.as_ref()?);
    let ratio = |x: f64, y: f64| (y > 0.0).then(|| x / y);
    match p.workload.as_str() {
        "keepalive-scale" => {
            ratio(num(e, "cpu_us_per_renewal"), num(b, "cpu_us_per_renewal")).map(|r| (r, "CPU per renewal"))
        }
        "hold" => ratio(num(e, "bytes_per_lock"), num(b, "bytes_per_lock")).map(|r| (r, "RSS per lock")),
        _ => ratio(num(b, "ops_per_s"), num(e, "ops_per_s")).map(|r| (r, "ops/s")),
    }
}

fn pairs(lines: &[Value]) -> Vec<Pair> {
    let mut order: Vec<(String, String)> = Vec::new();
    let mut by: BTreeMap<(String, String), (Option<Value>, Option<Value>)> = BTreeMap::new();
    for v in lines {
        let workload = v.get("workload").and_then(Value::as_str).unwrap_or("?").to_string();
        let clients = v.get("clients").and_then(Value::as_u64).unwrap_or(0);
        let clients = match v.get("connections").and_then(Value::as_u64) {
            Some(1) => format!("{clients} on 1 conn"),
            Some(c) => format!("{clients} on {c} conns"),
            None => clients.to_string(),
        };
        let key = (workload, clients);
        if !by.contains_key(&key) {
            order.push(key.clone());
        }
        let slot = by.entry(key).or_default();
        match v.get("target").and_then(Value::as_str) {
            Some("etcd") => slot.1 = Some(v.clone()),
            _ => slot.0 = Some(v.clone()),
        }
    }
    order
        .into_iter()
        .map(|key| {
            let (baton, etcd) = by.remove(&key).unwrap_or_default();
            Pair { workload: key.0, clients: key.1, baton, etcd }
        })
        .collect()
}

fn cell(v: &Option<Value>) -> String {
    let Some(v) = v else { return "—".into() };
    let mut s = format!("{:.0}", num(v, "ops_per_s"));
    if num(v, "p50_ms") > 0.0 {
        s.push_str(&format!(" ({:.2} / {:.2})", num(v, "p50_ms"), num(v, "p99_ms")));
    }
    s
}

fn notes(v: &Option<Value>) -> String {
    let Some(v) = v else { return String::new() };
    let mut parts = Vec::new();
    for key in ["violations", "errors"] {
        if let Some(n) = v.get(key).and_then(Value::as_u64) {
            if n > 0 || key == "violations" {
                parts.push(format!("{key} {n}"));
            }
        }
    }
    for key in ["sessions", "cpu_us_per_renewal", "server_cpu_pct", "locks", "bytes_per_lock", "bytes_per_session"] {
        if let Some(x) = v.get(key) {
            parts.push(format!("{key} {x}"));
        }
    }
    parts.join(", ")
}

/// The markdown table of Baton/etcd results, one row per workload and client count.
pub fn markdown(lines: &[Value]) -> String {
    let mut out = String::from(
        "| workload | clients | Baton ops/s (p50 / p99 ms) | etcd ops/s (p50 / p99 ms) | Baton ÷ etcd | Baton notes | etcd notes |\n|---|---|---|---|---|---|---|\n",
    );
    for p in pairs(lines) {
        let adv = advantage(&p).map(|(r, on)| format!("**{r:.1}x** ({on})")).unwrap_or_else(|| "—".into());
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            p.workload,
            p.clients,
            cell(&p.baton),
            cell(&p.etcd),
            adv,
            notes(&p.baton),
            notes(&p.etcd)
        ));
    }
    out
}

/// A bar chart (SVG) of Baton's advantage per workload: one horizontal bar per workload and
/// client count, on a log scale, with 1x (parity) and 10x marked.
pub fn plot(lines: &[Value], path: &std::path::Path) -> Result<(), String> {
    use plotters::prelude::*;
    // Bottom-up on the chart: reversed, so that the table's first row is the top bar.
    let bars: Vec<(String, f64, &'static str)> = pairs(lines)
        .iter()
        .rev()
        .filter_map(|p| {
            let who = match p.clients.split_once(" on ") {
                Some((n, conns)) => format!("{n} clients on {conns}"),
                None => format!("{} clients", p.clients),
            };
            advantage(p).map(|(r, on)| (format!("{} ({who})", p.workload), r, on))
        })
        .collect();
    if bars.is_empty() {
        return Err("no workload ran on both targets: nothing to plot".into());
    }
    let right = bars.iter().map(|b| b.1).fold(10.0f64, f64::max) * 12.0;
    let left = bars.iter().map(|b| b.1).fold(0.5f64, f64::min) / 2.0;
    let n = bars.len() as i32;
    let height = 90 + 34 * bars.len() as u32;
    let root = SVGBackend::new(path, (900, height)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Baton ÷ etcd, same machine and tool (higher is better; log scale)", ("sans-serif", 18))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(230)
        .build_cartesian_2d((left..right).log_scale(), (0..n).into_segmented())
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len())
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) => bars.get(*i as usize).map(|b| b.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_style(("sans-serif", 13))
        .x_label_formatter(&|x| format!("{x}x"))
        .draw()
        .map_err(e)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, r, _))| {
            let color = if *r >= 1.0 { RGBColor(46, 125, 50) } else { RGBColor(198, 40, 40) };
            let mut bar = Rectangle::new(
                [(left, SegmentValue::Exact(i as i32)), (*r, SegmentValue::Exact(i as i32 + 1))],
                color.filled(),
            );
            bar.set_margin(5, 5, 0, 0);
            bar
        }))
        .map_err(e)?;
    chart
        .draw_series(bars.iter().enumerate().map(|(i, (_, r, on))| {
            let label = if *on == "ops/s" { format!("{r:.1}x") } else { format!("{r:.1}x ({on})") };
            Text::new(label, (*r * 1.08, SegmentValue::CenterOf(i as i32)), ("sans-serif", 13))
        }))
        .map_err(e)?;
    for (at, style) in [(1.0, BLACK.stroke_width(1)), (10.0, RGBColor(120, 120, 120).stroke_width(1))] {
        chart
            .draw_series(LineSeries::new([(at, SegmentValue::Exact(0)), (at, SegmentValue::Exact(n))], style))
            .map_err(e)?;
    }
    root.present().map_err(e)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(target: &str, workload: &str, ops: f64) -> Value {
        serde_json::json!({"target": target, "workload": workload, "clients": 16, "ops_per_s": ops,
            "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0, "violations": 0})
    }

    #[test]
    fn table_pairs_targets_and_computes_ratios() {
        let lines = vec![
            line("baton", "contended", 3000.0),
            line("etcd", "contended", 150.0),
            line("baton", "uncontended", 100.0),
        ];
        let md = markdown(&lines);
        assert!(md.contains("| contended | 16 | 3000 (1.00 / 2.00) | 150 (1.00 / 2.00) | **20.0x** (ops/s)"), "{md}");
        assert!(md.contains("| uncontended | 16 | 100 (1.00 / 2.00) | — | — |"), "{md}");
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("plot.svg");
        plot(&lines, &svg).unwrap();
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains("contended (16 clients)") && text.contains("20.0x"), "{text}");
        assert!(plot(&lines[2..], &svg).is_err());
    }

    #[test]
    fn memory_and_cpu_workloads_compare_on_their_own_figure() {
        let mut b = line("baton", "hold", 5000.0);
        b["bytes_per_lock"] = 200.into();
        let mut e = line("etcd", "hold", 2000.0);
        e["bytes_per_lock"] = 1000.into();
        let md = markdown(&[b, e]);
        assert!(md.contains("**5.0x** (RSS per lock)"), "{md}");
    }
}

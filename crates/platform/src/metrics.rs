//! Prometheus metrics: one registry per process, rendered on `/metrics`.

use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use std::sync::LazyLock;

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register(name: &str, help: &str, labels: &[&str]) -> Option<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels).ok()?;
    REGISTRY.register(Box::new(c.clone())).ok()?;
    Some(c)
}

static HTTP_REQUESTS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    register(
        "tally_http_requests_total",
        "HTTP requests by status class",
        &["class"],
    )
});
static EVENTS: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
    register(
        "tally_events_total",
        "Domain events by kind (reports_collected, reports_quarantined, acks_imported, ...)",
        &["kind"],
    )
});

/// Counts a domain event.
pub fn inc(kind: &str, n: u64) {
    if let Some(c) = &*EVENTS {
        c.with_label_values(&[kind]).inc_by(n);
    }
}

/// Counts an HTTP answer by status class (`2xx`, `4xx`...).
pub fn http(status: u16) {
    if let Some(c) = &*HTTP_REQUESTS {
        c.with_label_values(&[&format!("{}xx", status / 100)]).inc();
    }
}

pub fn render() -> String {
    LazyLock::force(&HTTP_REQUESTS);
    LazyLock::force(&EVENTS);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// This process's peak resident memory (VmHWM) in MiB, for benchmarks; 0 where /proc is absent.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_registered_metrics() {
        super::inc("reports_collected", 3);
        super::http(404);
        let text = super::render();
        assert!(
            text.contains("tally_events_total{kind=\"reports_collected\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("tally_http_requests_total{class=\"4xx\"} 1"),
            "{text}"
        );
    }
}

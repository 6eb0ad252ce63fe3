//! `/metrics` in the Prometheus text format: request counts and latency by verb, resource and
//! code, requests in flight, open watches.

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    pub verb: String,
    pub resource: String,
}

/// The API server's metrics.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<LatencyLabels, Histogram>,
    pub inflight: Gauge<i64, AtomicI64>,
    pub watches: Gauge<i64, AtomicI64>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ])
        });
        let inflight = Gauge::<i64, AtomicI64>::default();
        let watches = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "apiserver_request",
            "Requests by verb, resource and HTTP code",
            requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Request latency by verb and resource (watches excluded)",
            latency.clone(),
        );
        registry.register(
            "apiserver_current_inflight_requests",
            "Requests being served",
            inflight.clone(),
        );
        registry.register("apiserver_registered_watchers", "Open watch streams", watches.clone());
        Self { registry, requests, latency, inflight, watches }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn open_watches(&self) -> i64 {
        self.watches.get()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements a gauge when dropped.
pub struct GaugeGuard(pub Gauge<i64, AtomicI64>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

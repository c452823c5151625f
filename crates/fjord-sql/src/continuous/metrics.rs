//! Continuous queries in the node's Prometheus metrics (`/metrics`), per
//! tenant and query: rows read and written, late and failed rows, and the
//! watermark.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::checkpoint::Counters;

pub struct QueryMetrics {
    rows_in: IntCounterVec,
    rows_out: IntCounterVec,
    late_rows: IntCounterVec,
    failed_rows: IntCounterVec,
    watermark: IntGaugeVec,
}

const LABELS: &[&str] = &["tenant", "query"];

impl QueryMetrics {
    /// Registered in `registry` (unregistered, so still counting, if the
    /// names are taken there already).
    pub fn new(registry: &Registry) -> QueryMetrics {
        let counter = |name: &str, help: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), LABELS)
                .unwrap_or_else(|_| unreachable!("valid metric {name}"));
            let _ = registry.register(Box::new(c.clone()));
            c
        };
        let watermark = IntGaugeVec::new(
            Opts::new(
                "fjord_sql_query_watermark_ms",
                "A continuous query's watermark (event time, ms since the epoch)",
            ),
            LABELS,
        )
        .unwrap_or_else(|_| unreachable!("valid metric"));
        let _ = registry.register(Box::new(watermark.clone()));
        QueryMetrics {
            rows_in: counter(
                "fjord_sql_query_rows_in_total",
                "Rows a continuous query read from its stream",
            ),
            rows_out: counter(
                "fjord_sql_query_rows_out_total",
                "Result rows a continuous query appended",
            ),
            late_rows: counter(
                "fjord_sql_query_late_rows_total",
                "Rows that came after their window closed",
            ),
            failed_rows: counter(
                "fjord_sql_query_failed_rows_total",
                "Rows left out because an expression failed on them",
            ),
            watermark,
        }
    }

    /// Adds what changed from `before` to `now`.
    pub fn record(
        &self,
        tenant: &str,
        query: &str,
        before: &Counters,
        now: &Counters,
        watermark: Option<i64>,
    ) {
        let l = [tenant, query];
        let add = |c: &IntCounterVec, a: u64, b: u64| {
            if b > a {
                c.with_label_values(&l).inc_by(b - a);
            }
        };
        add(&self.rows_in, before.rows_in, now.rows_in);
        add(&self.rows_out, before.rows_out, now.rows_out);
        add(&self.late_rows, before.late_rows, now.late_rows);
        add(&self.failed_rows, before.failed_rows, now.failed_rows);
        if let Some(w) = watermark {
            self.watermark.with_label_values(&l).set(w);
        }
    }

    /// Forgets a dropped query's series.
    pub fn remove(&self, tenant: &str, query: &str) {
        let l = [tenant, query];
        for c in [
            &self.rows_in,
            &self.rows_out,
            &self.late_rows,
            &self.failed_rows,
        ] {
            let _ = c.remove_label_values(&l);
        }
        let _ = self.watermark.remove_label_values(&l);
    }
}

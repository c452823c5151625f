//! What a query's filters say about where to read: which partitions, which
//! offsets, which publish times. The scan uses it to skip what cannot
//! match (a query for the last five minutes reads the last five minutes,
//! through the log's time index); DataFusion still applies every filter to
//! what is read, so bounds only ever narrow the reading.

use std::collections::BTreeSet;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

use crate::columns::Column;

/// Where a scan reads. Offsets and times are inclusive on both ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    /// `None`: every partition.
    pub partitions: Option<BTreeSet<u32>>,
    pub offset_min: Option<i64>,
    pub offset_max: Option<i64>,
    pub publish_min_ms: Option<i64>,
    pub publish_max_ms: Option<i64>,
}

impl Bounds {
    /// The bounds of all `filters` together (they are ANDed).
    pub fn of(filters: &[Expr]) -> Bounds {
        let mut b = Bounds::default();
        for f in filters {
            for part in split_conjunction(f) {
                b.narrow(part);
            }
        }
        b
    }

    /// Whether the scan can use `filter` at all.
    pub fn usable(filter: &Expr) -> bool {
        split_conjunction(filter).into_iter().any(|e| {
            let mut b = Bounds::default();
            b.narrow(e);
            b != Bounds::default()
        })
    }

    /// True when nothing can match.
    pub fn empty(&self) -> bool {
        self.partitions.as_ref().is_some_and(|p| p.is_empty())
            || matches!((self.offset_min, self.offset_max), (Some(a), Some(b)) if a > b)
            || matches!((self.publish_min_ms, self.publish_max_ms), (Some(a), Some(b)) if a > b)
    }

    fn narrow(&mut self, e: &Expr) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(c), Some(v)) = (column(left), literal(right)) {
                    self.compare(c, *op, v);
                } else if let (Some(v), Some(c)) = (literal(left), column(right)) {
                    if let Some(op) = op.swap() {
                        self.compare(c, op, v);
                    }
                }
            }
            Expr::Between(Between {
                expr,
                negated: false,
                low,
                high,
            }) => {
                if let (Some(c), Some(lo), Some(hi)) = (column(expr), literal(low), literal(high)) {
                    self.compare(c, Operator::GtEq, lo);
                    self.compare(c, Operator::LtEq, hi);
                }
            }
            Expr::InList(l) if !l.negated && column(&l.expr) == Some(Column::Partition) => {
                let values: Option<BTreeSet<u32>> = l
                    .list
                    .iter()
                    .map(|v| match literal(v) {
                        Some((v, true)) => u32::try_from(v).ok(),
                        _ => None,
                    })
                    .collect();
                if let Some(set) = values {
                    self.only_partitions(set);
                }
            }
            _ => {}
        }
    }

    fn only_partitions(&mut self, set: BTreeSet<u32>) {
        self.partitions = Some(match self.partitions.take() {
            Some(had) => had.intersection(&set).copied().collect(),
            None => set,
        });
    }

    /// Applies `column op value`; an inexact value (a time finer than a
    /// millisecond) is widened to the milliseconds around it.
    fn compare(&mut self, c: Column, op: Operator, (v, exact): (i64, bool)) {
        let op = match (exact, op) {
            (true, op) => op,
            (false, Operator::Gt | Operator::GtEq) => Operator::GtEq,
            (false, Operator::Lt | Operator::LtEq) => {
                return self.compare(c, Operator::LtEq, (v.saturating_add(1), true));
            }
            (false, Operator::Eq) => {
                self.compare(c, Operator::GtEq, (v, true));
                return self.compare(c, Operator::LtEq, (v.saturating_add(1), true));
            }
            (false, _) => return,
        };
        let (min, max) = match c {
            Column::Offset => (&mut self.offset_min, &mut self.offset_max),
            Column::PublishTs => (&mut self.publish_min_ms, &mut self.publish_max_ms),
            Column::Partition => {
                if op == Operator::Eq {
                    match u32::try_from(v) {
                        Ok(p) => self.only_partitions(BTreeSet::from([p])),
                        Err(_) => self.only_partitions(BTreeSet::new()),
                    }
                }
                return;
            }
            _ => return,
        };
        let raise = |m: &mut Option<i64>, to: i64| *m = Some(m.map_or(to, |x| x.max(to)));
        let lower = |m: &mut Option<i64>, to: i64| *m = Some(m.map_or(to, |x| x.min(to)));
        match op {
            Operator::Eq => {
                raise(min, v);
                lower(max, v);
            }
            Operator::Gt => raise(min, v.saturating_add(1)),
            Operator::GtEq => raise(min, v),
            Operator::Lt => lower(max, v.saturating_sub(1)),
            Operator::LtEq => lower(max, v),
            _ => {}
        }
    }
}

fn column(e: &Expr) -> Option<Column> {
    match e {
        Expr::Column(c) => Column::by_name(&c.name),
        _ => None,
    }
}

/// An integer literal, or a timestamp literal in milliseconds; false when
/// the time was finer than a millisecond (then rounded down).
fn literal(e: &Expr) -> Option<(i64, bool)> {
    let Expr::Literal(v, _) = e else {
        return None;
    };
    let exact = |x: Option<i64>| x.map(|x| (x, true));
    let fine = |x: i64, per_ms: i64| Some((x.div_euclid(per_ms), x.rem_euclid(per_ms) == 0));
    match v {
        ScalarValue::TimestampMicrosecond(Some(x), _) => fine(*x, 1000),
        ScalarValue::TimestampNanosecond(Some(x), _) => fine(*x, 1_000_000),
        v => exact(integer(v)),
    }
}

fn integer(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::Int8(Some(x)) => Some(*x as i64),
        ScalarValue::Int16(Some(x)) => Some(*x as i64),
        ScalarValue::Int32(Some(x)) => Some(*x as i64),
        ScalarValue::Int64(Some(x)) => Some(*x),
        ScalarValue::UInt8(Some(x)) => Some(*x as i64),
        ScalarValue::UInt16(Some(x)) => Some(*x as i64),
        ScalarValue::UInt32(Some(x)) => Some(*x as i64),
        ScalarValue::UInt64(Some(x)) => i64::try_from(*x).ok(),
        ScalarValue::TimestampSecond(Some(x), _) => x.checked_mul(1000),
        ScalarValue::TimestampMillisecond(Some(x), _) => Some(*x),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};

    fn ts_ms(ms: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(
            Some(ms),
            Some("UTC".into()),
        ))
    }

    #[test]
    fn time_offset_and_partition_predicates_narrow_the_scan() {
        let b = Bounds::of(&[
            col("_publish_ts").gt_eq(ts_ms(1_000)),
            col("_publish_ts")
                .lt(ts_ms(2_000))
                .and(col("_offset").gt(lit(10i64))),
            col("_partition").eq(lit(3i32)),
            col("value").eq(lit("x")),
        ]);
        assert_eq!(
            b,
            Bounds {
                partitions: Some(BTreeSet::from([3])),
                offset_min: Some(11),
                offset_max: None,
                publish_min_ms: Some(1_000),
                publish_max_ms: Some(1_999),
            }
        );
        assert!(!b.empty());
    }

    #[test]
    fn reversed_between_and_in_lists() {
        let b = Bounds::of(&[
            lit(5i64).lt_eq(col("_offset")),
            col("_offset").between(lit(0i64), lit(20i64)),
            col("_partition").in_list(vec![lit(1i32), lit(2i32)], false),
            col("_partition").in_list(vec![lit(2i32), lit(7i32)], false),
        ]);
        assert_eq!(b.offset_min, Some(5));
        assert_eq!(b.offset_max, Some(20));
        assert_eq!(b.partitions, Some(BTreeSet::from([2])));
    }

    #[test]
    fn nanosecond_bounds_round_outwards_and_contradictions_are_empty() {
        let ns = |x: i64| lit(ScalarValue::TimestampNanosecond(Some(x), None));
        // 1500.5 ms: records are whole milliseconds; read 1500 and 1501
        // either way (a superset), never less.
        let b = Bounds::of(&[col("_publish_ts").gt(ns(1_500_500_000))]);
        assert_eq!(b.publish_min_ms, Some(1_500));
        let b = Bounds::of(&[col("_publish_ts").lt(ns(1_500_500_000))]);
        assert_eq!(b.publish_max_ms, Some(1_501));
        let b = Bounds::of(&[col("_publish_ts").lt(ns(1_500_000_000))]);
        assert_eq!(b.publish_max_ms, Some(1_499));
        let b = Bounds::of(&[col("_offset").gt(lit(5i64)), col("_offset").lt(lit(3i64))]);
        assert!(b.empty());
        assert!(Bounds::of(&[col("_partition").eq(lit(-1i64))]).empty());
    }

    #[test]
    fn what_the_scan_cannot_use() {
        assert!(!Bounds::usable(&col("_event_ts").gt(ts_ms(0))));
        assert!(!Bounds::usable(&col("_offset").not_eq(lit(1i64))));
        assert!(Bounds::usable(&col("_offset").gt(lit(1i64))));
        let b = Bounds::of(&[col("_offset")
            .gt(lit(1i64))
            .or(col("_offset").lt(lit(0i64)))]);
        assert_eq!(b, Bounds::default());
    }
}

//! Gap filling: resampling a per-device series to a regular grid.
//!
//! ```sql
//! SELECT device,
//!        time_bucket_gapfill(INTERVAL '1 minute', _event_ts) AS minute,
//!        avg(temp) AS raw, locf(avg(temp)) AS held, interpolate(avg(temp)) AS smooth
//! FROM readings
//! WHERE _event_ts >= now() - INTERVAL '1 hour' AND _event_ts < now()
//! GROUP BY device, minute
//! ```
//!
//! In the spirit of TimescaleDB: `time_bucket_gapfill(width, time [, start,
//! finish])` buckets like `tumble` and makes a row for every bucket of
//! `[start, finish)` — the range given, or else the one the `WHERE` clause
//! bounds the time to — for each combination of the other group columns;
//! an aggregate of a bucket without rows is empty, `locf(agg)` carries the
//! last value forward into it, `interpolate(agg)` draws a straight line
//! between its neighbours.
//!
//! The three functions only mark the query: the analyzer rule
//! [`HandleGapFill`] turns the aggregate into a plain bucketed one under a
//! [`node::GapFill`] node, which [`exec::GapFillExec`] executes.

pub mod exec;
pub mod fill;
pub mod node;

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::Column;
use datafusion::config::ConfigOptions;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, ColumnarValue, Expr, Extension, LogicalPlan, Operator, Projection,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use crate::continuous::window::{interval_ms, TUMBLE};
use node::{Fill, GapFill};

pub const TIME_BUCKET_GAPFILL: &str = "time_bucket_gapfill";
pub const LOCF: &str = "locf";
pub const INTERPOLATE: &str = "interpolate";

const USAGE: &str = "time_bucket_gapfill(INTERVAL '1 minute', _event_ts [, start, finish]) in GROUP BY, with locf(avg(x)) or interpolate(avg(x)) in the SELECT list";

/// The marker functions, for a session's registry. Called on their own
/// (outside a query the rule rewrites) they fail, saying how to use them.
pub fn functions() -> Vec<Arc<ScalarUDF>> {
    [TIME_BUCKET_GAPFILL, LOCF, INTERPOLATE]
        .into_iter()
        .map(|name| {
            Arc::new(ScalarUDF::from(Marker {
                name,
                signature: Signature::variadic_any(Volatility::Immutable),
            }))
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Marker {
    name: &'static str,
    signature: Signature,
}

impl ScalarUDFImpl for Marker {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        let plan = |m: String| Err(DataFusionError::Plan(m));
        match self.name {
            TIME_BUCKET_GAPFILL => match args {
                [_, t @ DataType::Timestamp(_, _), ..] if (2..=4).contains(&args.len()) => {
                    Ok(t.clone())
                }
                [_, other, ..] if (2..=4).contains(&args.len()) => plan(format!(
                    "time_bucket_gapfill()'s time is a timestamp (like _event_ts), not {other}"
                )),
                _ => plan(format!(
                    "time_bucket_gapfill() takes 2 to 4 arguments: {USAGE}"
                )),
            },
            name => match args {
                [t] => Ok(t.clone()),
                _ => plan(format!("{name}() takes one aggregate: {USAGE}")),
            },
        }
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        Err(DataFusionError::Plan(format!(
            "{}() only works in a grouped query: {USAGE}",
            self.name
        )))
    }
}

/// Rewrites queries using the gap-filling functions (see the module).
#[derive(Debug, Default)]
pub struct HandleGapFill;

impl AnalyzerRule for HandleGapFill {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(rewrite_node)
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "handle_gap_fill"
    }
}

fn rewrite_node(plan: LogicalPlan) -> DfResult<Transformed<LogicalPlan>> {
    match plan {
        LogicalPlan::Aggregate(agg)
            if agg
                .group_expr
                .iter()
                .any(|e| is_call(e, TIME_BUCKET_GAPFILL)) =>
        {
            Ok(Transformed::yes(gapfill_aggregate(agg)?))
        }
        LogicalPlan::Projection(p) if p.expr.iter().any(has_fill_call) => {
            Ok(Transformed::yes(fill_projection(p)?))
        }
        other => {
            if other.expressions().iter().any(|e| {
                has_fill_call(e)
                    || e.exists(|e| Ok(is_call(e, TIME_BUCKET_GAPFILL)))
                        .unwrap_or(false)
            }) {
                return Err(DataFusionError::Plan(format!(
                    "the gap-filling functions go in GROUP BY and the SELECT list: {USAGE}"
                )));
            }
            Ok(Transformed::no(other))
        }
    }
}

fn is_call(e: &Expr, name: &str) -> bool {
    matches!(e.clone().unalias(), Expr::ScalarFunction(f) if f.name() == name)
}

fn has_fill_call(e: &Expr) -> bool {
    e.exists(|e| Ok(is_call(e, LOCF) || is_call(e, INTERPOLATE)))
        .unwrap_or(false)
}

/// The aggregate grouped by plain buckets, under a gap-filling node.
fn gapfill_aggregate(agg: Aggregate) -> DfResult<LogicalPlan> {
    let plan_err = |m: String| DataFusionError::Plan(m);
    let at = agg
        .group_expr
        .iter()
        .position(|e| is_call(e, TIME_BUCKET_GAPFILL))
        .ok_or_else(|| plan_err("no time_bucket_gapfill()".into()))?;
    if agg
        .group_expr
        .iter()
        .filter(|e| is_call(e, TIME_BUCKET_GAPFILL))
        .count()
        > 1
    {
        return Err(plan_err(
            "a query fills gaps along one time_bucket_gapfill() only".into(),
        ));
    }
    let original = agg.group_expr[at].clone();
    let name = original.schema_name().to_string();
    let Expr::ScalarFunction(call) = original.unalias() else {
        return Err(plan_err("no time_bucket_gapfill()".into()));
    };
    let mut args = call.args.into_iter();
    let (Some(width), Some(time)) = (args.next(), args.next()) else {
        return Err(plan_err(format!(
            "time_bucket_gapfill() takes 2 to 4 arguments: {USAGE}"
        )));
    };
    let stride_ms =
        match &width {
            Expr::Literal(v, _) => {
                interval_ms(v).map_err(|e| plan_err(e.replace("a window", "a bucket")))?
            }
            _ => return Err(plan_err(
                "time_bucket_gapfill()'s width is a constant INTERVAL, like INTERVAL '1 minute'"
                    .into(),
            )),
        };
    let (mut start, mut finish) = (args.next(), args.next().map(|f| (f, false)));
    if start.is_none() || finish.is_none() {
        let (lower, upper) = where_bounds(&agg.input, &time);
        start = start.or(lower);
        finish = finish.or(upper);
    }
    let (Some(start), Some((finish, finish_inclusive))) = (start, finish) else {
        return Err(plan_err(format!(
            "time_bucket_gapfill() needs the time range to fill: bound {time} in WHERE ({time} >= … AND {time} < …) or pass start and finish: {USAGE}"
        )));
    };
    let tumble = tumble_call(vec![time, width])?;
    let mut group_expr = agg.group_expr.clone();
    group_expr[at] = tumble.alias(name);
    let aggregate = LogicalPlan::Aggregate(Aggregate::try_new(
        agg.input.clone(),
        group_expr,
        agg.aggr_expr.clone(),
    )?);
    let node = GapFill::try_new(
        aggregate,
        at,
        agg.group_expr.len(),
        stride_ms,
        start,
        finish,
        finish_inclusive,
    )?;
    Ok(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    }))
}

/// `tumble(time, width)`: the buckets `date_bin` makes, in the time's
/// own type.
fn tumble_call(args: Vec<Expr>) -> DfResult<Expr> {
    let f = crate::continuous::window::functions()
        .into_iter()
        .find(|f| f.name() == TUMBLE)
        .ok_or_else(|| DataFusionError::Internal("no tumble()".into()))?;
    Ok(Expr::ScalarFunction(ScalarFunction::new_udf(f, args)))
}

/// The bounds `WHERE` puts on `time` under an aggregate: `time >= a`
/// (or `>`, `BETWEEN a AND …`) gives the start; `time < b` the finish,
/// `time <= b` (or `BETWEEN … AND b`) a finish that holds `b`'s bucket.
fn where_bounds(input: &LogicalPlan, time: &Expr) -> (Option<Expr>, Option<(Expr, bool)>) {
    let (mut lower, mut upper) = (None, None);
    let mut node = input;
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                for c in split_conjunction(&f.predicate) {
                    bound_of(c, time, &mut lower, &mut upper);
                }
                node = &f.input;
            }
            LogicalPlan::Projection(Projection { input, .. })
            | LogicalPlan::SubqueryAlias(datafusion::logical_expr::SubqueryAlias {
                input, ..
            }) => node = input,
            _ => return (lower, upper),
        }
    }
}

fn split_conjunction(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            let mut v = split_conjunction(left);
            v.extend(split_conjunction(right));
            v
        }
        other => vec![other],
    }
}

fn bound_of(c: &Expr, time: &Expr, lower: &mut Option<Expr>, upper: &mut Option<(Expr, bool)>) {
    let same = |e: &Expr| strip_casts(e) == strip_casts(time);
    let constant = |e: &Expr| e.column_refs().is_empty();
    match c {
        Expr::Between(b)
            if !b.negated && same(&b.expr) && constant(&b.low) && constant(&b.high) =>
        {
            *lower = Some((*b.low).clone());
            *upper = Some(((*b.high).clone(), true));
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (op, bound) = if same(left) && constant(right) {
                (*op, right)
            } else if same(right) && constant(left) {
                match op.swap() {
                    Some(op) => (op, left),
                    None => return,
                }
            } else {
                return;
            };
            match op {
                Operator::Gt | Operator::GtEq => *lower = Some((**bound).clone()),
                Operator::Lt => *upper = Some(((**bound).clone(), false)),
                Operator::LtEq => *upper = Some(((**bound).clone(), true)),
                _ => {}
            }
        }
        _ => {}
    }
}

fn strip_casts(e: &Expr) -> &Expr {
    match e {
        Expr::Cast(c) => strip_casts(&c.expr),
        Expr::TryCast(c) => strip_casts(&c.expr),
        Expr::Alias(a) => strip_casts(&a.expr),
        other => other,
    }
}

/// A projection with `locf(x)`/`interpolate(x)` reading the column the
/// gap-filling node below adds for each.
fn fill_projection(p: Projection) -> DfResult<LogicalPlan> {
    let fill_of = |e: &Expr| {
        if is_call(e, LOCF) {
            Some(Fill::Locf)
        } else if is_call(e, INTERPOLATE) {
            Some(Fill::Interpolate)
        } else {
            None
        }
    };
    let mut wanted: Vec<(Expr, Fill)> = Vec::new();
    for e in &p.expr {
        e.apply(|e| {
            if let (Some(fill), Expr::ScalarFunction(f)) = (fill_of(e), e) {
                match f.args.as_slice() {
                    [arg] if !has_fill_call(arg) => {
                        if !wanted.contains(&(arg.clone(), fill)) {
                            wanted.push((arg.clone(), fill));
                        }
                    }
                    _ => {
                        return Err(DataFusionError::Plan(format!(
                            "{}() takes one aggregate of the query, like {}(avg(temp))",
                            fill.name(),
                            fill.name()
                        )))
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    let mut filled = Vec::with_capacity(wanted.len());
    let input = set_fills(p.input.as_ref().clone(), &wanted, &mut filled)?;
    let mut exprs = Vec::with_capacity(p.expr.len());
    for e in p.expr {
        let name = e.schema_name().to_string();
        let rewritten = e
            .transform_up(|e| {
                let (Some(fill), Expr::ScalarFunction(f)) = (fill_of(&e), &e) else {
                    return Ok(Transformed::no(e));
                };
                let [arg] = f.args.as_slice() else {
                    return Ok(Transformed::no(e));
                };
                let at = wanted
                    .iter()
                    .position(|w| w.0 == *arg && w.1 == fill)
                    .ok_or_else(no_gapfill)?;
                Ok(Transformed::yes(Expr::Column(filled[at].clone())))
            })?
            .data;
        exprs.push(rewritten.alias_if_changed(name)?);
    }
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(input),
    )?))
}

/// Finds the gap-filling node under `plan` (through the nodes that keep
/// their input's columns: HAVING's filter, sorts, limits), asks it for
/// the `wanted` fills and pushes the columns holding them on `filled`.
fn set_fills(
    plan: LogicalPlan,
    wanted: &[(Expr, Fill)],
    filled: &mut Vec<Column>,
) -> DfResult<LogicalPlan> {
    match plan {
        LogicalPlan::Extension(ext) => {
            let Some(node) = ext.node.as_any().downcast_ref::<GapFill>() else {
                return Err(no_gapfill());
            };
            let mut node = node.clone();
            for (arg, fill) in wanted {
                filled.push(node.fill(arg, *fill)?);
            }
            Ok(LogicalPlan::Extension(Extension {
                node: Arc::new(node),
            }))
        }
        LogicalPlan::Filter(_) | LogicalPlan::Sort(_) | LogicalPlan::Limit(_) => {
            let inputs: Vec<LogicalPlan> = plan.inputs().into_iter().cloned().collect();
            let [input] = <[LogicalPlan; 1]>::try_from(inputs).map_err(|_| no_gapfill())?;
            let input = set_fills(input, wanted, filled)?;
            plan.with_new_exprs(plan.expressions(), vec![input])
        }
        _ => Err(no_gapfill()),
    }
}

fn no_gapfill() -> DataFusionError {
    DataFusionError::Plan(format!(
        "locf() and interpolate() fill the gaps time_bucket_gapfill() makes: {USAGE}"
    ))
}

//! The logical node filling an aggregate's gaps.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::Field;
use datafusion::common::{Column, DFSchema, DFSchemaRef, TableReference};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{Expr, LogicalPlan, Projection, UserDefinedLogicalNodeCore};

/// How a gap row gets an aggregate's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Hash)]
pub enum Fill {
    /// The last earlier value of the series.
    Locf,
    /// A straight line between the nearest values on either side.
    Interpolate,
}

impl Fill {
    pub fn name(self) -> &'static str {
        match self {
            Fill::Locf => super::LOCF,
            Fill::Interpolate => super::INTERPOLATE,
        }
    }
}

/// Fills the gaps of the aggregate below it: every column of the
/// aggregate, gap rows empty in the aggregates, then one column per
/// `locf`/`interpolate` asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GapFill {
    pub input: LogicalPlan,
    /// The aggregate's bucket column.
    pub time: usize,
    /// How many group columns lead the aggregate's columns.
    pub groups: usize,
    pub stride_ms: i64,
    pub start: Expr,
    pub finish: Expr,
    /// Whether `finish`'s own bucket is in the range (`<=`, `BETWEEN`).
    pub finish_inclusive: bool,
    /// Extra columns: the aggregate column filled, and how.
    pub fills: Vec<(usize, Fill)>,
    schema: DFSchemaRef,
}

impl GapFill {
    pub fn try_new(
        input: LogicalPlan,
        time: usize,
        groups: usize,
        stride_ms: i64,
        start: Expr,
        finish: Expr,
        finish_inclusive: bool,
    ) -> DfResult<Self> {
        let mut node = GapFill {
            schema: input.schema().clone(),
            input,
            time,
            groups,
            stride_ms,
            start,
            finish,
            finish_inclusive,
            fills: Vec::new(),
        };
        node.schema = node.make_schema()?;
        Ok(node)
    }

    /// The aggregate's columns, its aggregates nullable (a gap has none),
    /// then the filled ones.
    fn make_schema(&self) -> DfResult<DFSchemaRef> {
        let input = self.input.schema();
        let mut fields: Vec<(Option<TableReference>, Arc<Field>)> = input
            .iter()
            .enumerate()
            .map(|(i, (q, f))| {
                let f = if i >= self.groups {
                    Arc::new(f.as_ref().clone().with_nullable(true))
                } else {
                    f.clone()
                };
                (q.cloned(), f)
            })
            .collect();
        fields.extend(self.fills.iter().map(|&(i, fill)| {
            let f = input.field(i);
            (
                None,
                Arc::new(Field::new(
                    fill_name(fill, f.name()),
                    f.data_type().clone(),
                    true,
                )),
            )
        }));
        Ok(Arc::new(DFSchema::new_with_metadata(
            fields,
            input.metadata().clone(),
        )?))
    }

    /// The column holding `arg` (an aggregate, or an expression of the
    /// aggregate's columns) filled with `fill`, added if new.
    pub fn fill(&mut self, arg: &Expr, fill: Fill) -> DfResult<Column> {
        let i = match arg {
            Expr::Column(c) => self.input.schema().index_of_column(c)?,
            e => self.computed(e)?,
        };
        if i < self.groups {
            return Err(DataFusionError::Plan(format!(
                "{}() fills an aggregate (like {}(avg(temp))), not the group column {}",
                fill.name(),
                fill.name(),
                self.input.schema().field(i).name()
            )));
        }
        if !self.fills.contains(&(i, fill)) {
            self.fills.push((i, fill));
        }
        self.schema = self.make_schema()?;
        let name = fill_name(fill, self.input.schema().field(i).name());
        Ok(Column::from_name(name))
    }

    /// The input column holding `e`, computed over the aggregate by a
    /// projection under this node if no column holds it yet.
    fn computed(&mut self, e: &Expr) -> DfResult<usize> {
        let name = e.schema_name().to_string();
        if let Some(i) = self
            .input
            .schema()
            .fields()
            .iter()
            .position(|f| *f.name() == name)
        {
            return Ok(i);
        }
        let mut exprs: Vec<Expr> = self
            .input
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        exprs.push(e.clone().alias(name));
        let input = std::mem::take(&mut self.input);
        self.input = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?);
        Ok(self.input.schema().fields().len() - 1)
    }
}

fn fill_name(fill: Fill, column: &str) -> String {
    format!("{}({column})", fill.name())
}

// The schema follows from the rest, so comparing leaves it out.
impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let key = |n: &GapFill| {
            (
                n.time,
                n.groups,
                n.stride_ms,
                n.finish_inclusive,
                n.fills.clone(),
            )
        };
        match self.input.partial_cmp(&other.input) {
            Some(Ordering::Equal) => {}
            o => return o,
        }
        match self.start.partial_cmp(&other.start) {
            Some(Ordering::Equal) => {}
            o => return o,
        }
        match self.finish.partial_cmp(&other.finish) {
            Some(Ordering::Equal) => {}
            o => return o,
        }
        key(self).partial_cmp(&key(other))
    }
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![self.start.clone(), self.finish.clone()]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let input = self.input.schema();
        write!(
            f,
            "GapFill: bucket={}, every={}ms, range=[{}, {}{}",
            input.field(self.time).name(),
            self.stride_ms,
            self.start,
            self.finish,
            if self.finish_inclusive { "]" } else { ")" }
        )?;
        for (i, fill) in &self.fills {
            write!(f, ", {}", fill_name(*fill, input.field(*i).name()))?;
        }
        Ok(())
    }

    fn with_exprs_and_inputs(&self, exprs: Vec<Expr>, inputs: Vec<LogicalPlan>) -> DfResult<Self> {
        let (Ok([start, finish]), Ok([input])) = (
            <[Expr; 2]>::try_from(exprs),
            <[LogicalPlan; 1]>::try_from(inputs),
        ) else {
            return Err(DataFusionError::Internal(
                "GapFill takes two expressions and one input".into(),
            ));
        };
        let mut node = GapFill {
            input,
            start,
            finish,
            schema: self.schema.clone(),
            ..self.clone()
        };
        node.schema = node.make_schema()?;
        Ok(node)
    }
}

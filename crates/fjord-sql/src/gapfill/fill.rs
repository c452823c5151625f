//! Which rows a filled series has, and what its gaps hold (pure).
//!
//! A series is the aggregate's rows for one combination of the other
//! group columns, sorted by bucket. Filling merges those rows with a
//! regular grid of buckets: every bucket of the grid without a row
//! becomes a gap row; rows off the grid (outside the range, or a null
//! bucket) are kept as they are.

/// One output row of a filled series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The series' row at this index (relative to the series' first row).
    Row(usize),
    /// A bucket without a row.
    Gap(i64),
}

/// Buckets `first, first + stride, …` up to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub first: i64,
    pub end: i64,
    pub stride: i64,
}

impl Grid {
    /// The grid of buckets of `stride` covering `[start, finish)`, the
    /// first being the bucket holding `start` (buckets align to the
    /// epoch, as `tumble` and `date_bin` do).
    pub fn covering(start: i64, finish: i64, stride: i64) -> Grid {
        Grid {
            first: start - start.rem_euclid(stride),
            end: finish,
            stride,
        }
    }

    /// How many buckets the grid holds.
    pub fn len(&self) -> u64 {
        if self.end <= self.first {
            0
        } else {
            ((self.end as i128 - self.first as i128 + self.stride as i128 - 1)
                / self.stride as i128) as u64
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Merges a series' bucket times (ascending, nulls first) with `grid`.
pub fn merge(times: &[Option<i64>], grid: Grid) -> Vec<Slot> {
    let mut out = Vec::with_capacity(times.len() + grid.len() as usize);
    let mut next = grid.first;
    let mut rows = times.iter().enumerate().peekable();
    loop {
        let bucket = (next < grid.end).then_some(next);
        match (rows.peek(), bucket) {
            (Some(&(i, None)), _) => {
                out.push(Slot::Row(i));
                rows.next();
            }
            (Some(&(i, Some(t))), Some(b)) if *t <= b => {
                out.push(Slot::Row(i));
                rows.next();
                if *t == b {
                    next += grid.stride;
                }
            }
            (_, Some(b)) => {
                out.push(Slot::Gap(b));
                next += grid.stride;
            }
            (Some(&(i, Some(_))), None) => {
                out.push(Slot::Row(i));
                rows.next();
            }
            (None, None) => return out,
        }
    }
}

/// For each slot, the row whose value it shows when gaps carry the last
/// observation forward: the row itself, or for a gap the latest earlier
/// row with a value (`valid`), if any.
pub fn locf(slots: &[Slot], valid: impl Fn(usize) -> bool) -> Vec<Option<usize>> {
    let mut last = None;
    slots
        .iter()
        .map(|s| match *s {
            Slot::Row(i) => {
                if valid(i) {
                    last = Some(i);
                }
                Some(i)
            }
            Slot::Gap(_) => last,
        })
        .collect()
}

/// For each slot, its value when gaps are interpolated linearly in time
/// between the nearest rows with a value on either side; a row keeps its
/// own value, a gap with no such row on one side stays empty.
pub fn interpolate(
    slots: &[Slot],
    time: impl Fn(usize) -> Option<i64>,
    value: impl Fn(usize) -> Option<f64>,
) -> Vec<Option<f64>> {
    let point = |s: &Slot| match *s {
        Slot::Row(i) => time(i).zip(value(i)),
        Slot::Gap(_) => None,
    };
    // The next row with a value, from each position (scanned backwards).
    let mut after: Vec<Option<(i64, f64)>> = vec![None; slots.len()];
    let mut seen = None;
    for (k, s) in slots.iter().enumerate().rev() {
        after[k] = seen;
        if let Some(p) = point(s) {
            seen = Some(p);
        }
    }
    let mut before: Option<(i64, f64)> = None;
    slots
        .iter()
        .zip(after)
        .map(|(s, next)| match *s {
            Slot::Row(i) => {
                if let Some(p) = point(s) {
                    before = Some(p);
                }
                value(i)
            }
            Slot::Gap(t) => match (before, next) {
                (Some((t0, v0)), Some((t1, v1))) if t1 > t0 => {
                    Some(v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64)
                }
                _ => None,
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_fill_the_grid_and_rows_keep_their_place() {
        let grid = Grid::covering(0, 50, 10);
        assert_eq!(grid.len(), 5);
        let times = [None, Some(-10), Some(10), Some(30), Some(70)];
        assert_eq!(
            merge(&times, grid),
            vec![
                Slot::Row(0),
                Slot::Row(1),
                Slot::Gap(0),
                Slot::Row(2),
                Slot::Gap(20),
                Slot::Row(3),
                Slot::Gap(40),
                Slot::Row(4),
            ]
        );
    }

    #[test]
    fn the_grid_starts_at_the_bucket_holding_start() {
        let grid = Grid::covering(25, 41, 10);
        assert_eq!((grid.first, grid.len()), (20, 3));
        assert_eq!(
            merge(&[], grid),
            vec![Slot::Gap(20), Slot::Gap(30), Slot::Gap(40)]
        );
        assert!(Grid::covering(30, 30, 10).is_empty());
        assert_eq!(Grid::covering(-25, -5, 10).first, -30);
    }

    #[test]
    fn locf_carries_the_last_value_and_skips_empty_rows() {
        let slots = [
            Slot::Gap(0),
            Slot::Row(0),
            Slot::Gap(20),
            Slot::Row(1),
            Slot::Gap(40),
        ];
        let valid = |i: usize| i == 0;
        assert_eq!(
            locf(&slots, valid),
            vec![None, Some(0), Some(0), Some(1), Some(0)]
        );
    }

    #[test]
    fn interpolation_is_linear_in_time_between_known_points() {
        let slots = [
            Slot::Gap(0),
            Slot::Row(0),
            Slot::Gap(20),
            Slot::Gap(30),
            Slot::Row(1),
            Slot::Gap(50),
        ];
        let times = [10, 40];
        let values = [1.0, 4.0];
        let got = interpolate(&slots, |i| Some(times[i]), |i| Some(values[i]));
        assert_eq!(
            got,
            vec![None, Some(1.0), Some(2.0), Some(3.0), Some(4.0), None]
        );
        // A row without a value is no anchor.
        let got = interpolate(
            &slots,
            |i| Some(times[i]),
            |i| (i == 0).then_some(values[i]),
        );
        assert_eq!(got, vec![None, Some(1.0), None, None, None, None]);
    }
}

//! Plain text tables with aligned columns, as `kubectl get` prints them.

use std::fmt;

/// A table, optionally titled; every row should have as many cells as there are headers.
///
/// A titled table prints `TITLE (rows)` first. Notes follow the rows; a table whose map could
/// not be read says why instead of `(none)`.
#[derive(Debug, Clone, Default)]
pub struct Table {
    title: Option<String>,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
    unavailable: Option<String>,
}

/// Spaces between columns.
const GAP: usize = 2;

impl Table {
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            ..Self::default()
        }
    }

    pub fn titled(title: &str, headers: &[&str]) -> Self {
        Self {
            title: Some(title.to_owned()),
            ..Self::new(headers)
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// A line printed under the rows, e.g. why a column is empty.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Marks the table's content as unknown: `reason` is printed instead of the rows.
    pub fn unavailable(&mut self, reason: impl Into<String>) {
        self.unavailable = Some(reason.into());
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The header and the rows, columns padded to the widest cell, without the title.
    pub fn aligned_lines(&self) -> Vec<String> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let w = cell.chars().count();
                match widths.get_mut(i) {
                    Some(width) => *width = (*width).max(w),
                    None => widths.push(w),
                }
            }
        }
        std::iter::once(&self.headers)
            .chain(&self.rows)
            .map(|line| {
                let mut text = String::new();
                for (i, cell) in line.iter().enumerate() {
                    if i + 1 < line.len() {
                        text.push_str(&format!("{cell:<width$}", width = widths[i] + GAP));
                    } else {
                        text.push_str(cell);
                    }
                }
                text.trim_end().to_owned()
            })
            .collect()
    }

    /// The table as [`fmt::Display`] prints it, every line indented by `indent` spaces.
    pub fn indented(&self, indent: usize) -> String {
        self.to_string()
            .lines()
            .map(|l| format!("{:indent$}{l}\n", ""))
            .collect()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(title) = &self.title {
            match self.unavailable {
                Some(_) => writeln!(f, "{title}")?,
                None => writeln!(f, "{title} ({})", self.rows.len())?,
            }
        }
        if let Some(reason) = &self.unavailable {
            writeln!(f, "  unavailable: {reason}")?;
        } else if self.rows.is_empty() {
            writeln!(f, "  (none)")?;
        } else {
            for line in self.aligned_lines() {
                writeln!(f, "{line}")?;
            }
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::titled("THINGS", &["ID", "NAME"]);
        t.row(vec!["1".into(), "short".into()]);
        t.row(vec!["100".into(), "x".into()]);
        assert_eq!(t.to_string(), "THINGS (2)\nID   NAME\n1    short\n100  x\n");
    }

    #[test]
    fn an_empty_table_says_so() {
        assert_eq!(
            Table::titled("THINGS", &["ID"]).to_string(),
            "THINGS (0)\n  (none)\n"
        );
    }

    #[test]
    fn an_unavailable_table_says_why_instead_of_none() {
        let mut t = Table::titled("THINGS", &["ID"]);
        t.unavailable("LB_THINGS is not pinned");
        t.note("counts unknown");
        assert_eq!(
            t.to_string(),
            "THINGS\n  unavailable: LB_THINGS is not pinned\n  note: counts unknown\n"
        );
    }

    #[test]
    fn untitled_tables_indent_every_line() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["1".into(), "2".into()]);
        assert_eq!(t.indented(4), "    A  B\n    1  2\n");
    }
}

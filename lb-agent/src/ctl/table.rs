//! Plain text tables with aligned columns, as `kubectl get` prints them.

use std::fmt;

/// A titled table; every row should have as many cells as there are headers.
#[derive(Debug, Clone)]
pub struct Table {
    title: String,
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Spaces between columns.
const GAP: usize = 2;

impl Table {
    pub fn new(title: &str, headers: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.title, self.rows.len())?;
        if self.rows.is_empty() {
            return writeln!(f, "  (none)");
        }
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
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut text = String::new();
            for (i, cell) in line.iter().enumerate() {
                if i + 1 < line.len() {
                    text.push_str(&format!("{cell:<width$}", width = widths[i] + GAP));
                } else {
                    text.push_str(cell);
                }
            }
            writeln!(f, "{}", text.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_to_the_widest_cell() {
        let mut t = Table::new("THINGS", &["ID", "NAME"]);
        t.row(vec!["1".into(), "short".into()]);
        t.row(vec!["100".into(), "x".into()]);
        assert_eq!(t.to_string(), "THINGS (2)\nID   NAME\n1    short\n100  x\n");
    }

    #[test]
    fn an_empty_table_says_so() {
        assert_eq!(
            Table::new("THINGS", &["ID"]).to_string(),
            "THINGS (0)\n  (none)\n"
        );
    }
}

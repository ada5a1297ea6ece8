//! Printing for the verbs: aligned tables, relative times, sizes, JSON, and sandbox output.

use chrono::{DateTime, Utc};
use tartarus_core::{ExitInfo, OutputEvent, SandboxRecord, SandboxState, Stream};
use tokio::io::AsyncWriteExt;

use crate::client::OutputStream;

/// How a listing is printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for programs.
    Json,
}

/// Columns aligned under their headers, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths.get(i).copied().unwrap_or(0).saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long before `now` `then` was, e.g. `5s ago`, `3m ago`, `2h ago`, `4d ago`.
pub fn ago(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - then).num_seconds();
    match secs {
        s if s < 1 => "just now".into(),
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// `s` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// An argv as one line, quoting the arguments a shell would split or misread.
pub fn shell_join(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let plain = !a.is_empty() && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A size in bytes for people: `512 B`, `1.9 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A sandbox's state for a listing: `running`, `exited (0)`, `killed: timeout`, `failed`.
pub fn state_cell(r: &SandboxRecord) -> String {
    match r.state {
        SandboxState::Exited => match r.exit_code {
            Some(c) => format!("exited ({c})"),
            None => "exited".into(),
        },
        SandboxState::Killed => match r.kill_reason.and_then(|k| serde_json::to_value(k).ok()) {
            Some(serde_json::Value::String(reason)) => format!("killed: {reason}"),
            _ => "killed".into(),
        },
        s => s.as_str().into(),
    }
}

/// Prints `v` as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    println!("{text}");
    Ok(())
}

/// Copies an output stream to this process's stdout and stderr as it arrives, and returns how
/// it ended (`None` when the stream stopped without saying).
pub async fn pump(stream: &mut OutputStream) -> anyhow::Result<Option<ExitInfo>> {
    let mut stdout = tokio::io::stdout();
    let mut stderr = tokio::io::stderr();
    while let Some(ev) = stream.next().await {
        match ev? {
            OutputEvent::Output(Stream::Stdout, bytes) => {
                stdout.write_all(&bytes).await?;
                stdout.flush().await?;
            }
            OutputEvent::Output(Stream::Stderr, bytes) => {
                stderr.write_all(&bytes).await?;
                stderr.flush().await?;
            }
            OutputEvent::Exit(exit) => return Ok(Some(exit)),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["sb-1".to_owned(), "busybox".to_owned(), "echo hi".to_owned()],
            vec!["sb-22".to_owned(), "py".to_owned(), "".to_owned()],
        ];
        let t = table(&["ID", "TEMPLATE", "COMMAND"], &rows);
        assert_eq!(t, "ID     TEMPLATE  COMMAND\nsb-1   busybox   echo hi\nsb-22  py\n");
        assert_eq!(table(&["A"], &[]), "A\n");
    }

    #[test]
    fn relative_times() {
        let now = Utc::now();
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now + Duration::seconds(5), now), "just now");
        assert_eq!(ago(now - Duration::seconds(5), now), "5s ago");
        assert_eq!(ago(now - Duration::seconds(125), now), "2m ago");
        assert_eq!(ago(now - Duration::hours(3), now), "3h ago");
        assert_eq!(ago(now - Duration::days(9), now), "9d ago");
    }

    #[test]
    fn truncation_and_quoting() {
        assert_eq!(truncate("hello", 5), "hello");
        assert_eq!(truncate("hello world", 6), "hello…");
        assert_eq!(truncate("ééééé", 3), "éé…");
        let argv: Vec<String> = ["sh", "-c", "echo 'hi' there", ""].map(String::from).to_vec();
        assert_eq!(shell_join(&argv), r"sh -c 'echo '\''hi'\'' there' ''");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(2 * 1024 * 1024 - 100 * 1024), "1.9 MiB");
        assert_eq!(bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}

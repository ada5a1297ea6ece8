//! Showing a template build's progress: bars on a terminal, plain lines otherwise.

use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::output;

/// Renders the `progress` events of a build.
pub struct BuildProgress {
    bars: Option<MultiProgress>,
    current: Option<(String, ProgressBar)>,
}

impl BuildProgress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn new() -> Self {
        Self { bars: std::io::stderr().is_terminal().then(MultiProgress::new), current: None }
    }

    fn line(&self, text: String) {
        match &self.bars {
            Some(m) => {
                let _ = m.println(text);
            }
            None => eprintln!("{text}"),
        }
    }

    /// Shows one event (`{"step": …}` as the realm sends it).
    pub fn show(&mut self, ev: &serde_json::Value) {
        let short = |d: &serde_json::Value| {
            d.as_str().unwrap_or("").trim_start_matches("sha256:").chars().take(12).collect::<String>()
        };
        match ev["step"].as_str().unwrap_or("") {
            "resolving" => self.line(format!("resolving {}", ev["reference"].as_str().unwrap_or(""))),
            "resolved" => self.line(format!(
                "image {}: {} layers, {}",
                short(&ev["manifest_digest"]),
                ev["layers"],
                output::bytes(ev["bytes"].as_u64().unwrap_or(0))
            )),
            "blob" => {
                let (digest, size) = (short(&ev["digest"]), ev["size"].as_u64().unwrap_or(0));
                if ev["cached"].as_bool() == Some(true) {
                    self.line(format!("  {digest}  {} (already stored)", output::bytes(size)));
                } else if let Some(m) = &self.bars {
                    let bar = m.add(ProgressBar::new(size));
                    bar.set_style(
                        ProgressStyle::with_template("  {prefix}  [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                            .expect("template")
                            .progress_chars("=> "),
                    );
                    bar.set_prefix(digest.clone());
                    self.current = Some((digest, bar));
                } else {
                    self.line(format!("  {digest}  fetching {}", output::bytes(size)));
                }
            }
            "blob_progress" => {
                let done = ev["done"].as_u64().unwrap_or(0);
                if let Some((d, bar)) = &self.current {
                    if *d == short(&ev["digest"]) {
                        bar.set_position(done);
                        if Some(done) == ev["size"].as_u64() {
                            bar.finish();
                        }
                    }
                }
            }
            "unpacking" => self.line(format!("unpacking {} layers", ev["layers"])),
            "reused" => self.line("unpacked before: reusing it".into()),
            "ext4" => self.line("making the ext4 image".into()),
            "done" => self.line(format!("root filesystem: {}", output::bytes(ev["size_bytes"].as_u64().unwrap_or(0)))),
            "recipe" => self.line(format!("  {}", ev["line"].as_str().unwrap_or(""))),
            _ => {}
        }
    }

    /// Clears the bars.
    pub fn finish(&mut self) {
        if let Some((_, bar)) = self.current.take() {
            bar.finish_and_clear();
        }
    }
}
